// groundhog dashboard: the only script of its pages (served from the package, no other origin).
// It loads state tree nodes on demand and refreshes the page's live regions when the change
// feed (server-sent events) reports a change. It never evaluates anything it receives: tree
// fragments and refreshed regions are server-rendered, escaped HTML.
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base || "";
  // Tree nodes that were open before a live refresh replaced the tree: opened again as they reappear.
  let reopen = new Set();
  function reopenWithin(element) {
    element.querySelectorAll("details[data-src]").forEach(function (node) {
      if (reopen.has(node.dataset.src)) node.open = true; // its toggle loads its children
    });
  }

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
            reopenWithin(holder);
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
  // One refresh at a time: changes arriving meanwhile cause one more, half a second later.
  let timer = null;
  let running = false;
  let again = false;
  function schedule(delay) {
    if (running) {
      again = true;
    } else if (timer === null) {
      timer = window.setTimeout(refresh, delay);
    }
  }
  // A lease that runs out puts nothing in the change feed: the page refreshes itself at the earliest
  // expiry it shows: data-until and data-now are ms since the epoch by the server's clock (when the
  // lease runs out, when it was rendered), so the browser's own clock may be off.
  let expiryTimer = null;
  function scheduleExpiry() {
    if (expiryTimer !== null) window.clearTimeout(expiryTimer);
    expiryTimer = null;
    let remaining = Infinity;
    document.querySelectorAll("[data-until][data-now]").forEach(function (element) {
      remaining = Math.min(remaining, Number(element.dataset.until) - Number(element.dataset.now));
    });
    if (!isFinite(remaining)) return;
    const delay = Math.min(Math.max(remaining + 50, 250), 2147483647);
    expiryTimer = window.setTimeout(function () {
      expiryTimer = null;
      schedule(0);
    }, delay);
  }
  function refresh() {
    timer = null;
    running = true;
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
            reopen = new Set(
              Array.from(region.querySelectorAll("details[open][data-src]")).map(function (node) {
                return node.dataset.src;
              })
            );
            region.innerHTML = replacement.innerHTML;
            reopenWithin(region);
          }
        });
        scheduleExpiry();
      })
      .finally(function () {
        running = false;
        if (again) {
          again = false;
          schedule(500);
        }
      });
  }
  let url = base + "/live?after=" + encodeURIComponent(body.dataset.sequence || "0");
  if (watch !== "*") url += "&context=" + encodeURIComponent(watch);
  scheduleExpiry();
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
    schedule(150);
  });
  source.addEventListener("signed-out", function () {
    source.close();
    if (status) status.textContent = "live updates: signed out";
  });
  source.onerror = function () {
    if (status) status.textContent = "live updates: reconnecting…";
  };
})();
