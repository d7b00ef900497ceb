// groundhog timeline, as an MCP App (ui://groundhog/timeline.html): the host renders it beside a
// get_history result. It speaks the MCP Apps JSON-RPC over postMessage with its host only, puts
// every value on the page with textContent (never as markup), and asks the host to call
// diff_states when two revisions are picked. The page's CSP admits this script by its hash only.
"use strict";

(function () {
  let nextId = 1;
  const pending = new Map();
  let current = null; // the last get_history result

  function send(message) {
    window.parent.postMessage(message, "*");
  }
  function request(method, params) {
    const id = nextId++;
    send({ jsonrpc: "2.0", id: id, method: method, params: params });
    return new Promise(function (resolve) {
      pending.set(id, resolve);
    });
  }
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function show(id, node) {
    const holder = document.getElementById(id);
    holder.replaceChildren(node);
  }

  function renderHistory(result) {
    const data = result && result.structuredContent;
    if (!data || !Array.isArray(data.revisions)) {
      show("timeline", el("p", "No history in this result.", "note"));
      return;
    }
    current = data;
    document.getElementById("title").textContent = data.name + " — revision " + data.current_revision;
    const table = el("table");
    const head = el("tr");
    ["from", "to", "revision", "how", "who", "when", "size"].forEach(function (h) {
      head.appendChild(el("th", h));
    });
    table.appendChild(head);
    data.revisions.forEach(function (entry, index) {
      const row = el("tr");
      ["from", "to"].forEach(function (side) {
        const cell = el("td");
        const radio = document.createElement("input");
        radio.type = "radio";
        radio.name = side;
        radio.value = String(entry.revision);
        radio.checked = side === "to" ? index === 0 : index === 1;
        cell.appendChild(radio);
        row.appendChild(cell);
      });
      [entry.revision, entry.op, entry.actor, entry.timestamp, entry.size + " B"].forEach(function (value) {
        row.appendChild(el("td", value));
      });
      table.appendChild(row);
    });
    show("timeline", table);
  }

  function renderDiff(result) {
    const data = result && result.structuredContent;
    if (!data || !Array.isArray(data.patch)) {
      show("diff", el("p", "The diff could not be read.", "note"));
      return;
    }
    const table = el("table");
    const head = el("tr");
    ["op", "path", "value (revision " + data.to_revision + ")"].forEach(function (h) {
      head.appendChild(el("th", h));
    });
    table.appendChild(head);
    data.patch.slice(0, 500).forEach(function (op) {
      const row = el("tr", null, "op-" + op.op);
      row.appendChild(el("td", op.op));
      row.appendChild(el("td", op.path));
      row.appendChild(el("td", "value" in op ? JSON.stringify(op.value) : "(removed)"));
      table.appendChild(row);
    });
    const title = el("h2", "Revision " + data.from_revision + " → " + data.to_revision);
    const box = el("div");
    box.appendChild(title);
    box.appendChild(table.children.length > 1 ? table : el("p", "No difference.", "note"));
    show("diff", box);
  }

  document.getElementById("compare").addEventListener("click", function () {
    const from = document.querySelector("input[name=from]:checked");
    const to = document.querySelector("input[name=to]:checked");
    if (!current || !from || !to) return;
    request("tools/call", {
      name: "diff_states",
      arguments: { name: current.name, from_revision: Number(from.value), to_revision: Number(to.value) },
    }).then(function (answer) {
      renderDiff(answer.result);
    });
  });

  window.addEventListener("message", function (event) {
    if (event.source !== window.parent) return;
    const message = event.data;
    if (!message || message.jsonrpc !== "2.0") return;
    if (message.id !== undefined && pending.has(message.id)) {
      const resolve = pending.get(message.id);
      pending.delete(message.id);
      resolve(message);
    } else if (message.method === "ui/notifications/tool-result") {
      renderHistory(message.params);
    }
  });

  request("ui/initialize", {
    protocolVersion: "2026-01-26",
    appInfo: { name: "groundhog-timeline", version: "1" },
    appCapabilities: {},
  }).then(function () {
    send({ jsonrpc: "2.0", method: "ui/notifications/initialized", params: {} });
  });
})();
