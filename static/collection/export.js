// Export page: while the export runs, poll its progress and reload the page once it has finished.
(function () {
  "use strict";
  var box = document.getElementById("export-status");
  if (!box || box.dataset.finished === "true") return;
  var bar = document.getElementById("export-progress");
  var label = document.getElementById("export-progress-label");
  var state = document.getElementById("export-state");

  function poll() {
    fetch(box.dataset.progressUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) { window.setTimeout(poll, 5000); return; }
        if (data.finished) { window.location.reload(); return; }
        state.textContent = data.status;
        state.className = "status " + data.status;
        if (bar && data.total) { bar.max = data.total; bar.value = data.progress; }
        if (label) label.textContent = data.progress + (data.total ? " of " + data.total : "") + " dialogues processed" +
          (data.total ? "" : " (counting the selection)");
        window.setTimeout(poll, 1000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
})();
