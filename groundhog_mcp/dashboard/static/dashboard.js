// groundhog dashboard: the only script of its pages (served from the package, no other origin).
// It loads state tree nodes on demand and refreshes the page's live regions when the change
// feed (server-sent events) reports a change. It never evaluates anything it receives: tree
// fragments and refreshed regions are server-rendered, escaped HTML.
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base || "";

  // -- the state tree: a node's children are fetched when it is first opened -------------------
  document.addEventListener(
    "toggle",
    function (event) {
      const node = event.target;
      if (!(node instanceof HTMLDetailsElement) || !node.open || !node.dataset.src || node.dataset.loaded) {
        return;
      }
      node.dataset.loaded = "1";
      const holder = node.querySelector(":scope > .children");
      fetch(node.dataset.src, { credentials: "same-origin" })
        .then(function (response) {
          return response.text().then(function (text) {
            return { ok: response.ok, text: text };
          });
        })
        .then(function (answer) {
          if (answer.ok) {
            holder.innerHTML = answer.text; // server-rendered, escaped
          } else {
            holder.textContent = answer.text;
            delete node.dataset.loaded;
          }
        });
    },
    true
  );

  // -- live updates ------------------------------------------------------------------------------
  const watch = body.dataset.watch;
  const status = document.getElementById("live");
  if (!watch || !window.EventSource) {
    if (status) status.textContent = "live updates: off on this page";
    return;
  }
  let timer = null;
  function refresh() {
    timer = null;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text === null) return;
        const fresh = new DOMParser().parseFromString(text, "text/html"); // parsing runs no script
        document.querySelectorAll("[data-live]").forEach(function (region) {
          const replacement = fresh.getElementById(region.id);
          if (replacement && region.innerHTML !== replacement.innerHTML) {
            region.innerHTML = replacement.innerHTML;
          }
        });
      });
  }
  let url = base + "/live?after=" + encodeURIComponent(body.dataset.sequence || "0");
  if (watch !== "*") url += "&context=" + encodeURIComponent(watch);
  const source = new EventSource(url);
  source.addEventListener("ready", function () {
    if (status) status.textContent = "live updates: on";
  });
  source.addEventListener("change", function (event) {
    const change = JSON.parse(event.data);
    if (status) {
      status.textContent =
        "live updates: on · last change: " + change.context + " revision " + change.revision + " (" + change.op + " by " + change.actor + ")";
    }
    if (timer === null) timer = window.setTimeout(refresh, 150);
  });
  source.addEventListener("signed-out", function () {
    source.close();
    if (status) status.textContent = "live updates: signed out";
  });
  source.onerror = function () {
    if (status) status.textContent = "live updates: reconnecting…";
  };
})();
