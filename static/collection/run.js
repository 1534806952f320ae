// Run page: while the run is not finished, poll its progress every 2 s and update the numbers; when its status
// changes (paused, finished, ...) reload once, so the buttons and the failed seeds match the new state.
(function () {
  "use strict";
  var box = document.getElementById("run-progress");
  if (!box || box.dataset.finished === "true") return;
  var initialStatus = box.dataset.status;
  var bar = document.getElementById("bar");
  var fields = ["done", "total", "failed", "in_flight", "pending", "tokens", "prompt_tokens", "completion_tokens", "calls", "rate_per_s"];

  function set(id, text) {
    var node = document.getElementById(id);
    if (node) node.textContent = text;
  }

  function render(data) {
    fields.forEach(function (name) { set("p-" + name, String(data[name])); });
    set("p-cost_usd", Number(data.cost_usd).toFixed(4));
    set("p-eta", data.eta_seconds === null ? "—" : Math.round(data.eta_seconds) + " s");
    if (bar) { bar.max = data.total || 1; bar.value = data.done + data.failed; }
    Object.keys(data.filters || {}).forEach(function (rule) { set("f-" + rule, String(data.filters[rule])); });
    var status = document.getElementById("run-status");
    status.textContent = data.status;
    status.className = "status " + data.status;
  }

  function poll() {
    fetch(box.dataset.progressUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) { window.setTimeout(poll, 5000); return; }
        render(data);
        if (data.status !== initialStatus || data.is_finished) { window.location.reload(); return; }
        window.setTimeout(poll, 2000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 2000);
})();
