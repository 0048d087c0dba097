// stylefarm web interface: live updates without reloading the page.
// The batch page follows the coordinator's events for its batch (server-sent events);
// the batches page refreshes its table body every few seconds.
"use strict";

function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

function progressCell(cell, done, all) {
  if (!cell) return;
  const bar = cell.querySelector("progress");
  const num = cell.querySelector(".num");
  if (bar) { bar.max = all; bar.value = done; }
  setText(num, done + "/" + all);
}

function followBatch(summary) {
  const status = document.getElementById("live-status");
  const source = new EventSource(summary.dataset.events);
  const counts = {};
  source.addEventListener("open", () => setText(status, "Live: following this batch."));
  source.addEventListener("error", () => setText(status, "Live updates paused; reconnecting…"));
  source.addEventListener("end", () => { source.close(); setText(status, "This batch has ended."); });
  source.addEventListener("job", (e) => {
    const ev = JSON.parse(e.data);
    const badge = summary.querySelector("[data-batch-state]");
    if (badge) { setText(badge, ev.batch_state); badge.className = "badge state-" + ev.batch_state; }
    const row = document.querySelector('tr[data-job="' + CSS.escape(ev.job) + '"]');
    if (!row) return; // on another page of the table
    const cell = (f) => row.querySelector('[data-field="' + f + '"]');
    const state = cell("state").querySelector(".badge");
    const before = state.textContent;
    if (before !== ev.state) {
      setText(state, ev.state);
      state.className = "badge state-" + ev.state;
      for (const [s, d] of [[before, -1], [ev.state, 1]]) {
        const c = summary.querySelector('[data-count="' + s + '"]');
        if (c) setText(c, String(Math.max(0, parseInt(c.textContent, 10) + d)));
      }
      if (!["queued", "leased", "running"].includes(ev.state)) {
        const form = row.querySelector("form");
        if (form) form.remove();
      }
    }
    setText(cell("attempt"), String(ev.attempt));
    setText(cell("worker"), ev.worker);
    progressCell(cell("progress"), ev.iteration, ev.iterations);
    setText(cell("losses"), ev.loss ? ev.loss.toExponential(4) : "");
    setText(cell("error"), ev.error);
  });
}

function refreshRows(table) {
  const body = table.querySelector("tbody");
  setInterval(async () => {
    try {
      const res = await fetch(table.dataset.refresh, { credentials: "same-origin" });
      if (res.ok && res.url.indexOf("/login") < 0) body.innerHTML = await res.text();
    } catch (_) { /* the next tick tries again */ }
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  const summary = document.querySelector("section.summary[data-events]");
  if (summary) followBatch(summary);
  const table = document.querySelector("table[data-refresh]");
  if (table) refreshRows(table);
});
