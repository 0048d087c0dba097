// stylefarm web interface: live updates without reloading the page.
// The batch page follows the coordinator's events for its batch (server-sent events);
// the batches and workers pages refresh their table bodies every few seconds; a job page
// fetches its live part again while the job runs.
"use strict";

function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

function progressCell(cell, done, all) {
  if (!cell) return;
  const bar = cell.querySelector("progress");
  const num = cell.querySelector(".num");
  if (bar) { bar.max = all; bar.value = done; }
  setText(num, done + "/" + all);
}

// An image not written yet (no checkpoint so far) gives way to its "no image yet" note;
// a later load brings it back.
function watchImages(root) {
  for (const img of root.querySelectorAll("img")) {
    const note = img.nextElementSibling;
    const show = (ok) => { img.hidden = !ok; if (note && note.classList.contains("noimage")) note.hidden = ok; };
    img.addEventListener("error", () => show(false));
    img.addEventListener("load", () => show(true));
    if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) show(false);
  }
}

// A job's tile in the batch grid: its result once it succeeded, else its latest preview
// (fetched again when a new checkpoint wrote a new one).
function updateTile(ev) {
  const tile = document.querySelector('li[data-tile="' + CSS.escape(ev.job) + '"]');
  if (!tile) return;
  const badge = tile.querySelector(".badge");
  if (badge) { setText(badge, ev.state); badge.className = "badge state-" + ev.state; }
  const base = "/jobs/" + encodeURIComponent(ev.job) + "/attempts/";
  let src = null;
  if (ev.result_attempt > 0) {
    src = base + ev.result_attempt + "/thumbnail.jpg";
  } else if (ev.attempt > 0 && ev.checkpoint > 0) {
    src = base + ev.attempt + "/preview.jpg?v=" + ev.checkpoint;
  }
  if (!src) return;
  let img = tile.querySelector("img");
  if (!img) {
    const link = tile.querySelector("a");
    const old = link.querySelector(".noimage");
    img = document.createElement("img");
    img.width = 160;
    img.alt = ev.job;
    const note = document.createElement("span");
    note.className = "noimage"; note.hidden = true; note.textContent = "no image yet";
    if (old) old.remove();
    link.prepend(img, note);
    watchImages(tile);
  }
  if (img.getAttribute("src") !== src) img.src = src;
}

// A duration as the server writes it (html::span): `45 s`, `12 min`, `3 h 5 min`.
function span(ms) {
  const s = Math.floor(Math.max(0, ms) / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

// Elapsed times of attempts that still run count on between events: each such cell holds
// its elapsed time when it was written (`data-running`) and when that was (`data-since`).
function tickElapsed() {
  const now = performance.now();
  for (const cell of document.querySelectorAll("[data-running]")) {
    const since = cell.dataset.since ? parseFloat(cell.dataset.since) : 0;
    setText(cell, span(parseInt(cell.dataset.running, 10) + now - since));
  }
}

function setElapsed(cell, ev) {
  if (!cell) return;
  if (ev.running && ev.elapsed_ms !== null) {
    cell.dataset.running = String(ev.elapsed_ms);
    cell.dataset.since = String(performance.now());
  } else {
    delete cell.dataset.running;
    delete cell.dataset.since;
  }
  setText(cell, ev.elapsed_ms === null ? "" : span(ev.elapsed_ms));
}

// Says on the page that it no longer follows the farm, and why.
function stale(message) {
  let note = document.getElementById("live-status");
  if (!note) {
    note = document.createElement("p");
    note.id = "live-status";
    note.className = "live";
    note.setAttribute("role", "status");
    document.querySelector("main").append(note);
  }
  note.classList.add("stale");
  setText(note, message);
  // Signed out: nothing here is live any more, elapsed times included.
  if (message === SIGNED_OUT) {
    for (const cell of document.querySelectorAll("[data-running]")) delete cell.dataset.running;
  }
}

// The page follows the farm again.
function recovered() {
  const note = document.getElementById("live-status");
  if (note && note.classList.contains("stale")) { note.classList.remove("stale"); setText(note, ""); }
}

const SIGNED_OUT = "Your session has ended, so this page no longer updates: reload it to sign in again.";

// The batch's state and its jobs per state (every job's, not only the listed ones).
function updateSummary(summary, ev) {
  const badge = summary.querySelector("[data-batch-state]");
  if (badge) { setText(badge, ev.batch_state); badge.className = "badge state-" + ev.batch_state; }
  for (const c of summary.querySelectorAll("[data-count]")) {
    setText(c, String(ev.counts[c.dataset.count] || 0));
  }
}

// Whether this browser is still signed in: the page itself, fetched again, is the
// sign-in page once the session has ended.
async function signedIn() {
  try {
    const res = await fetch(location.href, { credentials: "same-origin" });
    return new URL(res.url).pathname !== "/login";
  } catch (_) {
    return true; // unreachable says nothing about the session
  }
}

function followBatch(summary) {
  const status = document.getElementById("live-status");
  let wait = 3000;
  const connect = () => {
    const source = new EventSource(summary.dataset.events);
    source.addEventListener("open", () => {
      wait = 3000;
      status.classList.remove("stale");
      setText(status, "Live: following this batch.");
    });
    source.addEventListener("error", async () => {
      // The browser reconnects by itself after a stream that ended; an answer that was
      // no stream at all (signed out, or the coordinator unreachable) closes it.
      if (source.readyState !== EventSource.CLOSED) {
        stale("Live updates paused; reconnecting…");
        return;
      }
      if (!(await signedIn())) { stale(SIGNED_OUT); return; }
      stale("The farm is not answering; trying again in " + wait / 1000 + " s…");
      setTimeout(connect, wait);
      wait = Math.min(wait * 2, 30000);
    });
    source.addEventListener("lost", () => stale("Lost the coordinator's events; reconnecting…"));
    source.addEventListener("end", () => {
      source.close();
      status.classList.remove("stale");
      setText(status, "This batch has ended.");
    });
    source.addEventListener("counts", (e) => updateSummary(summary, JSON.parse(e.data)));
    source.addEventListener("job", (e) => onJob(summary, JSON.parse(e.data)));
  };
  connect();
}

function onJob(summary, ev) {
  updateSummary(summary, ev);
  updateTile(ev);
  const row = document.querySelector('tr[data-job="' + CSS.escape(ev.job) + '"]');
  if (!row) return; // on another page of the table
  const cell = (f) => row.querySelector('[data-field="' + f + '"]');
  const state = cell("state").querySelector(".badge");
  if (state.textContent !== ev.state) {
    setText(state, ev.state);
    state.className = "badge state-" + ev.state;
    if (!["waiting", "queued", "leased", "running"].includes(ev.state)) {
      const form = row.querySelector("form");
      if (form) form.remove();
    }
  }
  setText(cell("attempt"), String(ev.attempt));
  setText(cell("worker"), ev.worker);
  progressCell(cell("progress"), ev.iteration, ev.iterations);
  setElapsed(cell("elapsed"), ev);
  setText(cell("losses"), ev.loss ? ev.loss.toExponential(4) : "");
  setText(cell("error"), ev.error);
}

// A part of a page fetched again; null once the session has ended (the page says so).
// Other failures throw, so `every3s` backs off.
async function fetchPart(url) {
  const res = await fetch(url, { credentials: "same-origin" });
  if (new URL(res.url).pathname === "/login") { stale(SIGNED_OUT); return null; }
  if (!res.ok) throw new Error("HTTP " + res.status);
  return res.text();
}

// Runs `step` 3 s after the last one finished (never two at once), not while the page
// is hidden, backing off to 30 s while it fails; `step` returns false to stop.
function every3s(step) {
  let wait = 3000;
  const tick = async () => {
    if (!document.hidden) {
      try {
        if ((await step()) === false) return;
        wait = 3000;
        recovered();
      } catch (_) {
        wait = Math.min(wait * 2, 30000);
        stale("Updates failed; trying again in " + wait / 1000 + " s…");
      }
    }
    setTimeout(tick, wait);
  };
  setTimeout(tick, wait);
}

function refreshRows(table) {
  const body = table.querySelector("tbody");
  every3s(async () => {
    const html = await fetchPart(table.dataset.refresh);
    if (html === null) return false;
    body.innerHTML = html;
  });
}

// The job page's live part, fetched again until the job has ended.
function followJob(section) {
  watchImages(section);
  if (section.querySelector("[data-ended]")) return;
  every3s(async () => {
    const html = await fetchPart(section.dataset.live);
    if (html === null) return false;
    section.innerHTML = html;
    watchImages(section);
    return !section.querySelector("[data-ended]");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const tiles = document.querySelector("ul.tiles");
  if (tiles) watchImages(tiles);
  const summary = document.querySelector("section.summary[data-events]");
  if (summary) { followBatch(summary); setInterval(tickElapsed, 1000); }
  const table = document.querySelector("table[data-refresh]");
  if (table) refreshRows(table);
  const job = document.querySelector("section[data-live]");
  if (job) followJob(job);
});
