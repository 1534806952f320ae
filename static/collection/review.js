// Review pages: keyboard shortcuts (the legend on each page lists them), inline turn editing, lease renewal.
// Everything also works without JavaScript: the forms post and the links navigate; this only adds keys.
(function () {
  "use strict";

  function isTyping(el) {
    if (!el) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && !["checkbox", "radio", "button", "submit"].includes(el.type);
  }

  function submit(form) {
    if (!form) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }

  function follow(id) {
    const link = document.getElementById(id);
    if (link && link.getAttribute("aria-disabled") !== "true" && link.getAttribute("href") !== "#") {
      window.location.href = link.href;
    }
  }

  // Forms that drop data ask first (truncate).
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  // --- Queue page: j/k move through the rows, Enter opens, n reviews the next undecided. ---
  const rows = Array.from(document.querySelectorAll("#queue-table tr[data-href]"));
  let row = -1;
  function selectRow(index) {
    if (!rows.length) return;
    row = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach(function (r, i) { r.classList.toggle("selected", i === row); });
    rows[row].scrollIntoView({ block: "nearest" });
  }
  rows.forEach(function (r) {
    r.addEventListener("click", function (event) {
      if (event.target.closest("a")) return;
      window.location.href = r.dataset.href;
    });
  });

  // --- Dialogue page. ---
  const turns = Array.from(document.querySelectorAll("#chat .turn"));
  const rejectPanel = document.getElementById("reject-panel");
  let selectedTurn = null;

  function selectTurn(turn) {
    turns.forEach(function (t) { t.classList.toggle("selected", t === turn); });
    selectedTurn = turn;
  }
  turns.forEach(function (turn) {
    turn.addEventListener("click", function (event) {
      if (event.target.closest("form, details, a, button")) return;
      selectTurn(turn);
    });
  });

  function openEditor(turn) {
    if (!turn) return;
    selectTurn(turn);
    const details = turn.querySelector("details.edit");
    details.open = true;
    const area = details.querySelector("textarea");
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  function closeEditors() {
    document.querySelectorAll("details.edit[open]").forEach(function (d) {
      const area = d.querySelector("textarea");
      area.value = area.defaultValue;  // Cancel means the unsaved text goes away.
      d.open = false;
    });
  }
  document.querySelectorAll("details.edit [data-cancel]").forEach(function (button) {
    button.addEventListener("click", closeEditors);
  });

  function openReject() {
    if (!rejectPanel) return;
    rejectPanel.open = true;
    const first = rejectPanel.querySelector("input[type=checkbox]");
    if (first) first.focus();
  }

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form && target.tagName === "TEXTAREA") {
      event.preventDefault();
      submit(target.form);
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      closeEditors();
      if (rejectPanel) rejectPanel.open = false;
      if (document.activeElement) document.activeElement.blur();
      return;
    }
    if (isTyping(target)) return;

    // Inside the open reject panel: digits pick reasons, Enter rejects.
    if (rejectPanel && rejectPanel.open) {
      if (/^[1-9]$/.test(event.key)) {
        const box = rejectPanel.querySelector('input[data-key="' + event.key + '"]');
        if (box) { box.checked = !box.checked; box.focus(); event.preventDefault(); }
        return;
      }
      if (event.key === "Enter") {
        event.preventDefault();
        submit(document.getElementById("reject-form"));
        return;
      }
    }

    let handled = true;
    switch (event.key) {
      case "j":
        if (rows.length) selectRow(row + 1); else follow("nav-next");
        break;
      case "k":
        if (rows.length) selectRow(row - 1); else follow("nav-prev");
        break;
      case "Enter":
        if (rows.length && row >= 0) window.location.href = rows[row].dataset.href; else handled = false;
        break;
      case "n":
        follow(document.getElementById("review-next") ? "review-next" : "next-undecided");
        break;
      case "a":
        submit(document.getElementById("approve-form"));
        break;
      case "r":
        openReject();
        break;
      case "e":
        openEditor(selectedTurn || turns[0]);
        break;
      case "u":
        submit(document.getElementById("undo-form"));
        break;
      case "?": {
        const legend = document.getElementById("shortcut-legend");
        if (legend) legend.scrollIntoView({ block: "center" });
        break;
      }
      default:
        handled = false;
    }
    if (handled) event.preventDefault();
  });

  // --- Lease: keep the dialogue leased to this reviewer while the page is open. ---
  const lease = document.getElementById("lease-info");
  if (lease) {
    const token = lease.querySelector("input[name=csrfmiddlewaretoken]").value;
    const every = Math.max(30, Number(lease.dataset.seconds) / 3) * 1000;
    window.setInterval(function () {
      if (document.hidden) return;
      fetch(lease.dataset.url, {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRFToken": token, "Content-Type": "application/x-www-form-urlencoded" }, body: "",
      }).catch(function () { /* the next ping tries again; the lease outlives a missed one */ });
    }, every);
  }
})();
