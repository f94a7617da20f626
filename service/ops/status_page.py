"""The daemon's live status page: one self-contained HTML document (inline CSS and JS).

The page holds no data of its own: its script fetches ``status.json`` every
second (``service.ops.status`` serves both) and draws the workers, the queue, a
throughput sparkline and the recent failures. Everything that comes from the
daemon is placed with ``textContent`` or as SVG coordinates, never parsed as
HTML: a task's error message and traceback are whatever the task made them,
so they are untrusted. The Content-Security-Policy the server sends (``CSP``)
allows only this script and this style, by hash, so that even a mistake here
could not run an injected script or load anything from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

__all__ = ["CSP", "PAGE"]

_STYLE: Final = """
:root {
  --bg: #f5f6f8; --card: #fff; --ink: #1d2430; --muted: #677085; --line: #e3e6ec;
  --accent: #2f6fde; --ok: #1f9d55; --bad: #d64545; --warn: #c07a00; --mono: ui-monospace,
  SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; padding: 14px 28px;
  background: #1d2430; color: #fff; }
header h1 { margin: 0; font-size: 18px; font-weight: 650; letter-spacing: .2px; }
header .meta { color: #aab3c5; font-size: 13px; }
header .live { margin-left: auto; font-size: 13px; color: #cfd6e4; }
.dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  margin-right: 6px; background: var(--muted); vertical-align: 1px; }
.live.up .dot { background: #3ccf7a; }
.live.down .dot { background: var(--bad); }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 40px; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .5px; }
.card .value { font-size: 26px; font-weight: 600; margin-top: 2px;
  font-variant-numeric: tabular-nums; }
.card .value.bad, .meta.bad { color: var(--bad); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  margin-top: 16px; padding: 14px 16px; }
section h2 { margin: 0 0 10px; font-size: 14px; font-weight: 650; }
section h2 .sub { color: var(--muted); font-weight: 400; margin-left: 8px; }
.spark-wrap { display: flex; align-items: center; gap: 18px; }
#spark { width: 100%; height: 84px; display: block; }
#spark .area { fill: rgba(47, 111, 222, .12); stroke: none; }
#spark .line { fill: none; stroke: var(--accent); stroke-width: 1.5;
  vector-effect: non-scaling-stroke; }
#spark .base { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; }
.spark-plot { flex: 1; min-width: 0; }
.spark-axis { display: flex; justify-content: space-between; color: var(--muted);
  font-size: 11px; margin-top: 2px; }
.spark-side { min-width: 150px; color: var(--muted); font-size: 12px; }
.spark-side b { display: block; color: var(--ink); font-size: 18px; font-weight: 600; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px;
  border-bottom: 1px solid var(--line); padding: 6px 8px; }
td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: top; }
tr:last-child td { border-bottom: 0; }
td.mono, .mono { font-family: var(--mono); font-size: 12.5px; }
td.idle { color: var(--muted); }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  background: #eef1f6; color: var(--muted); }
.pill.busy { background: #e6efff; color: var(--accent); }
.pill.failed { background: #fdecec; color: var(--bad); }
.pill.timed_out { background: #fff3dc; color: var(--warn); }
.pill.quarantined { background: #f3e8fd; color: #7b3fb8; }
.empty { color: var(--muted); padding: 6px 0; }
ol#failures { list-style: none; margin: 0; padding: 0; }
li.failure { border-top: 1px solid var(--line); padding: 9px 0; }
li.failure:first-child { border-top: 0; }
.f-head { display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
.f-task { font-weight: 600; }
.f-when, .f-id { color: var(--muted); font-size: 12px; }
.f-error { margin-top: 3px; overflow-wrap: anywhere; }
.f-type { font-family: var(--mono); font-size: 12.5px; color: var(--bad); }
details { margin-top: 4px; }
summary { cursor: pointer; color: var(--muted); font-size: 12px; }
pre.f-traceback { margin: 6px 0 0; padding: 10px; background: #f7f8fa;
  border: 1px solid var(--line); border-radius: 6px; max-height: 260px; overflow: auto;
  font: 12px/1.4 var(--mono); white-space: pre-wrap; overflow-wrap: anywhere; }
.states { color: var(--muted); font-size: 12px; margin-top: 12px; }
.states span { margin-right: 14px; }
.states b { color: var(--ink); font-weight: 600; }
@media (max-width: 900px) { .cards { grid-template-columns: repeat(3, 1fr); } }
"""

_SCRIPT: Final = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const nf = new Intl.NumberFormat();
const traceChoice = new Map();  // task id -> open or not, as the reader left it
let failureKey = null;

// Every value from status.json goes in as text: task output is untrusted.
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function num(n) { return typeof n === "number" && isFinite(n) ? nf.format(n) : "\u2013"; }

function dur(s) {
  if (typeof s !== "number" || !isFinite(s) || s < 0) return "\u2013";
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 60) return Math.round(s) + " s";
  const two = (v) => String(Math.floor(v)).padStart(2, "0");
  if (s < 3600) return Math.floor(s / 60) + " min " + two(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + two(s % 3600 / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
}

function clock(t) {
  return typeof t === "number" ? new Date(t * 1000).toLocaleTimeString() : "";
}

function setText(id, value) { $(id).textContent = value; }

function renderWorkers(s) {
  const body = $("workers");
  const rows = [];
  for (const w of s.workers || []) {
    const tr = el("tr", "worker");
    tr.dataset.pid = String(w.pid);
    tr.append(el("td", "w-pid mono", w.pid));
    const where = w.remote ? w.remote.host + ":" + w.remote.pid : "local";
    tr.append(el("td", "w-where", where));
    const state = el("td", "w-state");
    state.append(el("span", w.task_id ? "pill busy" : "pill", w.task_id ? "running" : "idle"));
    tr.append(state);
    const task = w.task_id ? (w.task || "?") : "\u2013";
    tr.append(el("td", w.task_id ? "w-task" : "w-task idle", task));
    tr.append(el("td", "w-id mono", w.task_id || ""));
    tr.append(el("td", "w-for", w.since ? dur(s.generated_at - w.since) : ""));
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "empty", "no workers");
    td.colSpan = 6;
    tr.append(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  const busy = (s.workers || []).filter((w) => w.task_id).length;
  setText("workers-count", busy + " / " + (s.workers || []).length);
}

function renderSpark(t) {
  const svg = $("spark");
  const data = (t && Array.isArray(t.finished)) ? t.finished : [];
  const n = Math.max(data.length, 2);
  const w = 600, h = 80, pad = 4;
  const max = Math.max(1, ...data);
  const x = (i) => (i * w) / (n - 1);
  const y = (v) => h - pad - (v * (h - 2 * pad)) / max;
  let line = "";
  data.forEach((v, i) => { line += (i ? " L " : "M ") + x(i).toFixed(1) + " " + y(v).toFixed(1); });
  const parts = [];
  const base = document.createElementNS(SVG, "line");
  base.setAttribute("class", "base");
  base.setAttribute("x1", "0"); base.setAttribute("x2", String(w));
  base.setAttribute("y1", String(h - pad)); base.setAttribute("y2", String(h - pad));
  parts.push(base);
  if (data.length > 1) {
    const area = document.createElementNS(SVG, "path");
    area.setAttribute("class", "area");
    const floor = " " + (h - pad);
    const right = x(data.length - 1).toFixed(1);
    area.setAttribute("d", line + " L " + right + floor + " L 0" + floor + " Z");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("class", "line");
    path.setAttribute("d", line);
    parts.push(area, path);
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = "tasks finished per " + (t ? t.bucket_seconds : 5) + " s";
  parts.push(title);
  svg.replaceChildren(...parts);
  const last = data.slice(-Math.round(60 / ((t && t.bucket_seconds) || 5)));
  const perMin = last.reduce((a, b) => a + b, 0);
  setText("rate", num(perMin));
  setText("spark-last", num(perMin) + " / min");
  setText("spark-peak", num(Math.max(0, ...data)) + " / " + ((t && t.bucket_seconds) || 5) + " s");
}

function renderFailures(s) {
  const failures = s.failures || [];
  const key = failures.map((f) => f.task_id + ":" + f.state).join(",");
  if (key === failureKey) return;  // unchanged: keep the reader's open tracebacks and scroll
  failureKey = key;
  const list = $("failures");
  const firstTrace = failures.findIndex((f) => f.error && f.error.traceback);
  const items = failures.map((f, index) => {
    const li = el("li", "failure");
    li.dataset.taskId = String(f.task_id);
    const head = el("div", "f-head");
    head.append(el("span", "pill f-state " + String(f.state).replace(/[^a-z_]/g, ""), f.state));
    head.append(el("span", "f-task", f.task));
    const tries = f.attempts > 1 ? " · attempt " + f.attempts : "";
    head.append(el("span", "f-when", clock(f.finished_at) + tries));
    head.append(el("span", "f-id mono", f.task_id));
    li.append(head);
    const err = f.error || {};
    const line = el("div", "f-error");
    line.append(el("span", "f-type", err.type || "Error"), document.createTextNode(": "));
    line.append(el("span", "f-message", err.message || ""));
    li.append(line);
    if (err.traceback) {
      // The newest traceback starts open; whatever the reader opens or closes stays so.
      const details = el("details");
      const id = f.task_id;
      const wanted = traceChoice.has(id) ? traceChoice.get(id) : index === firstTrace;
      details.open = wanted;
      details.addEventListener("toggle", () => {
        if (details.open !== wanted || traceChoice.has(id)) traceChoice.set(id, details.open);
      });
      details.append(el("summary", null, "traceback"), el("pre", "f-traceback", err.traceback));
      li.append(details);
    }
    return li;
  });
  if (!items.length) items.push(el("li", "empty", "no failures in the journal"));
  list.replaceChildren(...items);
}

function render(s) {
  setText("queued", num(s.queued));
  setText("in-flight", num(s.running));
  setText("accepted", num(s.accepted));
  const states = s.states || {};
  const failed = ["failed", "timed_out", "quarantined"].reduce((a, k) => a + (states[k] || 0), 0);
  setText("failed-count", num(failed));
  $("failed-count").classList.toggle("bad", failed > 0);
  setText("meta", "v" + s.version + " · pid " + s.pid + " · up " + dur(s.uptime)
    + (s.journal ? " · journal on" : " · journal off") + (s.draining ? " · draining" : "")
    + (s.journal_error ? " · JOURNAL CANNOT WRITE, submits refused: " + s.journal_error : ""));
  $("meta").classList.toggle("bad", !!s.journal_error);
  renderWorkers(s);
  renderSpark(s.throughput);
  renderFailures(s);
  const spans = Object.entries(states).map(([k, v]) => {
    const span = el("span");
    span.append(document.createTextNode(k + " "), el("b", null, num(v)));
    return span;
  });
  $("states").replaceChildren(el("span", null, "since start:"), ...spans);
}

function setLive(up, text) {
  const live = $("live");
  live.className = "live " + (up ? "up" : "down");
  live.replaceChildren(el("span", "dot"), document.createTextNode(text));
}

async function poll() {
  try {
    const reply = await fetch("status.json", {cache: "no-store"});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    const s = await reply.json();
    render(s);
    setLive(true, "live · " + clock(s.generated_at));
  } catch (e) {
    setLive(false, "no answer from the daemon (" + (e && e.message ? e.message : e) + ")");
  } finally {
    setTimeout(poll, 1000);
  }
}
poll();
"""

_BODY: Final = """
<header>
  <h1>pipework</h1>
  <span class="meta" id="meta">connecting…</span>
  <span class="live" id="live"><span class="dot"></span>connecting…</span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="label">Queued</div>
      <div class="value" id="queued">&ndash;</div></div>
    <div class="card"><div class="label">In flight</div>
      <div class="value" id="in-flight">&ndash;</div></div>
    <div class="card"><div class="label">Workers busy</div>
      <div class="value" id="workers-count">&ndash;</div></div>
    <div class="card"><div class="label">Finished / min</div>
      <div class="value" id="rate">&ndash;</div></div>
    <div class="card"><div class="label">Accepted</div>
      <div class="value" id="accepted">&ndash;</div></div>
    <div class="card"><div class="label">Failures</div>
      <div class="value" id="failed-count">&ndash;</div></div>
  </div>
  <section>
    <h2>Throughput <span class="sub">tasks finished per 5 s, last 5 minutes</span></h2>
    <div class="spark-wrap">
      <div class="spark-plot">
        <svg id="spark" viewBox="0 0 600 80" preserveAspectRatio="none" role="img"
          aria-label="tasks finished per 5 seconds"></svg>
        <div class="spark-axis"><span>5 min ago</span><span>now</span></div>
      </div>
      <div class="spark-side">
        last minute<b id="spark-last">&ndash;</b>peak<b id="spark-peak">&ndash;</b>
      </div>
    </div>
  </section>
  <section>
    <h2>Workers <span class="sub">local processes and remote slots</span></h2>
    <table>
      <thead><tr><th>pid</th><th>where</th><th>state</th><th>task</th><th>task id</th>
        <th>running for</th></tr></thead>
      <tbody id="workers"></tbody>
    </table>
    <div class="states" id="states"></div>
  </section>
  <section>
    <h2>Recent failures <span class="sub">failed, timed out or quarantined; newest first</span></h2>
    <ol id="failures"></ol>
  </section>
</main>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE: Final = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>pipework status</title>\n"
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n</body>\n</html>\n"
).encode()
"""The page, UTF-8."""

CSP: Final = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The Content-Security-Policy sent with the page: this script and style only, data from here."""
