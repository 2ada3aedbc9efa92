"""The network dashboard: one self-contained HTML page served at `GET /` by the gateway.

The page holds no data: its script fetches `api/network` (the JSON the gateway builds from the
signed records in the DHT, the nodes it saw leave, and its own recent requests) and redraws every
REFRESH_S seconds: nodes online and offline, their names, context and free slots, the tokens
each served this gateway, and two charts drawn by hand in inline SVG (decode speed and time to
first token of each recent request, as measured at the gateway). No external assets (no CDN, no
web fonts): it must work on a machine with no internet and must not leak who looks at it.
Everything from the network is inserted as text (`textContent`), never as HTML: records are
written by strangers.

Kept as a Python string rather than a package data file so it ships with the code without any
packaging configuration.
"""

from __future__ import annotations

REFRESH_S = 5

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>gpunet network</title>
<style>
:root { --fg:#1b1f24; --muted:#5b6570; --bg:#f6f7f9; --card:#fff; --line:#dde1e6;
        --accent:#2563eb; --ok:#15803d; --warn:#b45309; --bad:#b91c1c; --alt:#9333ea; }
@media (prefers-color-scheme: dark) {
  :root { --fg:#e6e8eb; --muted:#9aa4ae; --bg:#111418; --card:#1a1f25; --line:#2c333b;
          --accent:#60a5fa; --ok:#4ade80; --warn:#fbbf24; --bad:#f87171; --alt:#c084fc; }
}
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color:var(--fg); background:var(--bg); overflow-wrap:anywhere; }
header { padding:12px 16px; border-bottom:1px solid var(--line); background:var(--card);
         display:flex; flex-wrap:wrap; gap:4px 16px; align-items:baseline; }
header h1 { font-size:18px; margin:0; }
#status { color:var(--muted); font-size:13px; }
#status.bad { color:var(--bad); }
main { padding:12px 16px 32px; max-width:1200px; margin:0 auto; }
h2 { font-size:15px; margin:20px 0 8px; color:var(--muted); text-transform:uppercase;
     letter-spacing:.04em; }
.summary { display:grid; grid-template-columns:repeat(auto-fit, minmax(120px, 1fr)); gap:8px; }
.stat { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 12px; }
.stat b { display:block; font-size:22px; }
.stat span { color:var(--muted); font-size:12px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:10px; }
.charts { display:grid; grid-template-columns:repeat(auto-fit, minmax(340px, 1fr)); gap:10px; }
@media (max-width: 480px) { .grid, .charts { grid-template-columns:1fr; } main { padding:8px; } }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 12px;
        min-width:0; }
.card h3 { font-size:15px; margin:0 0 4px; display:flex; gap:6px; align-items:baseline;
           justify-content:space-between; }
.card h3 .id { font-family:ui-monospace, Menlo, Consolas, monospace; }
.card.offline { opacity:.62; border-style:dashed; }
.row { display:flex; justify-content:space-between; gap:8px; font-size:13px; padding:2px 0; }
.row > span:first-child { color:var(--muted); flex:none; }
.row > span:last-child { text-align:right; min-width:0; }
.mono { font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12px; }
.bar { height:6px; background:var(--line); border-radius:3px; overflow:hidden; margin:2px 0 6px; }
.bar > i { display:block; height:100%; background:var(--accent); }
ul.models { list-style:none; padding:0; margin:6px 0 0; border-top:1px solid var(--line); }
ul.models li { padding:4px 0; font-size:13px; border-bottom:1px solid var(--line); }
.pill { display:inline-block; font-size:11px; padding:0 7px; border-radius:9px; flex:none;
        border:1px solid var(--line); color:var(--muted); margin-left:4px; font-weight:normal; }
.pill.online { color:var(--ok); border-color:var(--ok); }
.pill.offline { color:var(--bad); border-color:var(--bad); }
.fresh { color:var(--ok); } .stale { color:var(--warn); }
.empty { color:var(--muted); font-style:italic; }
.chart svg { width:100%; height:170px; display:block; }
.chart .axis { stroke:var(--line); stroke-width:1; }
.chart text { fill:var(--muted); font-size:11px; }
.chart polyline { fill:none; stroke-width:1.5; opacity:.6; }
.chart svg circle.failed { fill:var(--bad); }
.chart p { margin:2px 0 0; font-size:12px; color:var(--muted); display:flex; flex-wrap:wrap;
           gap:2px 12px; }
.chart .key i { display:inline-block; width:10px; height:10px; border-radius:2px;
                margin-right:4px; vertical-align:-1px; }
</style>
</head>
<body>
<header><h1>gpunet network</h1><div id="status">loading…</div></header>
<main>
<section class="summary" id="summary"></section>
<h2>Requests through this gateway</h2>
<div class="charts">
<div class="card chart"><h3>Decode speed per request <span class="pill">tok/s</span></h3>
<svg id="chart-tok" class="tok" viewBox="0 0 600 170" preserveAspectRatio="none"
     role="img" aria-label="decode speed per request"></svg>
<p id="legend-tok"></p></div>
<div class="card chart"><h3>Time to first token <span class="pill">ms</span></h3>
<svg id="chart-ttft" class="ttft" viewBox="0 0 600 170" preserveAspectRatio="none"
     role="img" aria-label="time to first token per request"></svg>
<p id="legend-ttft"></p></div>
</div>
<h2>Models</h2>
<div class="grid" id="models"><p class="empty">loading…</p></div>
<h2>Nodes</h2>
<div class="grid" id="nodes"><p class="empty">loading…</p></div>
</main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
let lastData = null;  // the last answer, redrawn when the window is resized
// The inline <svg> elements are in the SVG namespace already (the HTML parser puts them there):
// their namespace is the one the chart's shapes are made in.
const SVG_NS = document.getElementById("chart-tok").namespaceURI;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    const text = typeof c === "string" || typeof c === "number";
    node.append(text ? document.createTextNode(String(c)) : c);
  }
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
function row(label, value, cls) {
  return el("div", {class: "row"}, el("span", {}, label),
            el("span", cls ? {class: cls} : {}, value));
}
function gib(bytes) { return (bytes / 2 ** 30).toFixed(1) + " GiB"; }
function rate(x) { return x > 0 ? x.toFixed(1) + " tok/s" : "not measured"; }
function count(n) { return n >= 1e6 ? (n / 1e6).toFixed(1) + "M" :
                           n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(n); }
function params(n) {
  if (!n) return "?";
  return n >= 1e9 ? (n / 1e9).toFixed(1) + "B" : (n / 1e6).toFixed(0) + "M";
}
function ago(s) {
  s = Math.max(0, Math.round(s));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function stat(value, label, id) {
  return el("div", {class: "stat", "data-stat": id}, el("b", {}, value), el("span", {}, label));
}
function nodeLabel(n) { return n.name || n.peer_id.slice(0, 16) + "…"; }

function renderSummary(data) {
  const online = data.nodes.filter(n => n.state !== "offline");
  const gpus = online.flatMap(n => n.gpus);
  const vram = gpus.reduce((a, g) => a + g.vram_total, 0);
  const active = online.reduce((a, n) => a + n.load.active_requests, 0);
  const free = online.reduce((a, n) => a + n.load.free_slots, 0);
  const minute = data.history.last_minute;
  const ttft = minute.ttft_ms_median === null ? "–" : Math.round(minute.ttft_ms_median) + " ms";
  document.getElementById("summary").replaceChildren(
    stat(online.length, "nodes online", "online"),
    stat(data.nodes.length - online.length, "offline (10 min)", "offline"),
    stat(data.models.length, "models", "models"), stat(gpus.length, "GPUs", "gpus"),
    stat(gib(vram), "VRAM", "vram"), stat(free, "free slots", "free"),
    stat(active, "active requests", "active"),
    stat(minute.tok_s.toFixed(1), "tok/s, last minute", "tok_s"),
    stat(ttft, "median TTFT, last minute", "ttft"));
}

// One chart: a point per request at the time it ended, a line per model in time order. The
// time axis spans the requests seen (at least a minute, at most the gateway's window); the y
// axis runs from 0 to a round number above the largest value.
const COLORS = ["#2563eb", "#9333ea", "#0891b2", "#ea580c", "#16a34a", "#db2777"];
function drawChart(id, points, unit, data, colorOf) {
  // drawn in the box's own pixels, so text keeps its size at any width
  const box = document.getElementById(id), H = 170, L = 44, B = 20, T = 8;
  const W = Math.max(240, Math.round(box.getBoundingClientRect().width) || 600);
  box.setAttribute("viewBox", "0 0 " + W + " " + H);
  const end = data.generated_at;
  const earliest = Math.min(end, ...points.map(p => p.t));
  const span = Math.min(data.history.window_s, Math.max(60, (end - earliest) * 1.1));
  const start = end - span;
  const top = niceMax(Math.max(1, ...points.map(p => p.y)));
  const x = t => L + (W - L - 6) * (t - start) / span;
  const y = v => T + (H - T - B) * (1 - v / top);
  const parts = [];
  for (const v of [0, top / 2, top]) {
    parts.push(svg("line", {class: "axis", x1: L, x2: W - 4, y1: y(v), y2: y(v)}));
    parts.push(svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, fmt(v)));
  }
  for (const [t, anchor] of [[start, "start"], [start + span / 2, "middle"], [end, "end"]]) {
    const label = t === end ? "now" : "-" + duration(end - t);
    parts.push(svg("text", {x: x(t), y: H - 4, "text-anchor": anchor}, label));
  }
  const models = [...new Set(points.map(p => p.model))];
  for (const model of models) {
    const mine = points.filter(p => p.model === model);
    if (mine.length > 1) {
      parts.push(svg("polyline", {stroke: colorOf(model),
        points: mine.map(p => x(p.t).toFixed(1) + "," + y(p.y).toFixed(1)).join(" ")}));
    }
  }
  for (const p of points) {
    const dot = svg("circle", {cx: x(p.t).toFixed(1), cy: y(p.y).toFixed(1), r: 3,
                               fill: p.ok ? colorOf(p.model) : "", "data-point": "1",
                               class: p.ok ? "" : "failed"});
    dot.append(svg("title", {}, fmt(p.y) + " " + unit + " · " + p.model + " on " + p.who));
    parts.push(dot);
  }
  if (!points.length) {
    parts.push(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"},
                   "no request through this gateway yet"));
  }
  box.replaceChildren(...parts);
}
function niceMax(v) {
  const step = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * step) return m * step;
  return 10 * step;
}
function fmt(v) { return v >= 100 ? Math.round(v).toString() : (+v.toFixed(1)).toString(); }
function duration(s) { return s < 120 ? Math.round(s) + " s" : Math.round(s / 60) + " min"; }
function legend(id, models, colorOf, note) {
  document.getElementById(id).replaceChildren(
    ...models.map(m => el("span", {class: "key"},
                          el("i", {style: "background:" + colorOf(m)}), m)),
    el("span", {}, note));
}

function renderCharts(data) {
  const names = new Map(data.nodes.map(n => [n.peer_id, nodeLabel(n)]));
  const who = r => names.get(r.provider) || (r.provider ? r.provider.slice(0, 16) + "…" : "none");
  const reqs = data.history.requests;
  const models = [...new Set(reqs.filter(r => r.model).map(r => r.model))].sort();
  const colorOf = m => COLORS[Math.max(0, models.indexOf(m)) % COLORS.length];
  const point = (r, y) => ({t: r.at, y: y, ok: r.outcome === "ok", who: who(r),
                            model: r.model || "none"});
  const tok = reqs.filter(r => r.tok_s > 0).map(r => point(r, r.tok_s));
  const ttft = reqs.filter(r => r.ttft_ms !== null).map(r => point(r, r.ttft_ms));
  drawChart("chart-tok", tok, "tok/s", data, colorOf);
  drawChart("chart-ttft", ttft, "ms", data, colorOf);
  const failed = reqs.filter(r => r.outcome !== "ok").length;
  legend("legend-tok", models, colorOf, reqs.length + " requests, " + failed + " failed");
  legend("legend-ttft", models, colorOf, "arrival here to first text; failed in red");
}

function renderModels(data) {
  const box = document.getElementById("models");
  if (!data.models.length) {
    box.replaceChildren(el("p", {class: "empty"}, "no model is offered right now"));
    return;
  }
  box.replaceChildren(...data.models.map(m => el("div", {class: "card model", "data-model": m.id},
    el("h3", {}, el("span", {class: "id"}, m.id)),
    row("build", [m.architecture, m.quantization, params(m.parameter_count)].join(" · ")),
    row("providers", String(m.providers)),
    row("free slots", String(m.free_slots)),
    row("best decode", rate(m.decode_tok_s_best)),
    row("context", m.context_length + " tokens"),
    row("sha256", m.sha256.slice(0, 16) + "…", "mono"))));
}

function renderNode(n) {
  const offline = n.state === "offline";
  const gpuRows = n.gpus.length ? n.gpus.map(g => {
    const used = g.vram_total ? 100 * (g.vram_total - g.vram_free) / g.vram_total : 0;
    return el("div", {class: "gpu"},
      row(g.name, gib(g.vram_free) + " free of " + gib(g.vram_total)),
      el("div", {class: "bar", title: used.toFixed(0) + "% VRAM used"},
         el("i", {style: "width:" + used.toFixed(1) + "%"})),
      row("utilisation", g.utilization_pct + " %"));
  }) : [row("hardware", "CPU, " + n.cpu.cores + " cores, " + gib(n.cpu.ram_bytes) + " RAM")];
  const models = el("ul", {class: "models"}, ...n.models.map(m => el("li", {},
    el("b", {}, m.name), el("span", {class: "pill"}, m.quantization),
    el("div", {class: "row"}, el("span", {}, "context"),
       el("span", {}, m.context_length + " tokens")),
    el("div", {class: "row"}, el("span", {}, "decode / prefill"),
       el("span", {}, rate(m.decode_tok_s) + " / " + rate(m.prefill_tok_s))),
    el("div", {class: "row"}, el("span", {}, "layers on GPU"),
       el("span", {}, m.layers_offloaded + " of " + m.layers_total)))));
  const state = offline ? "offline" : "online";
  const seen = offline ? row("last seen", ago(n.last_seen_s), "stale")
                       : row("record age", ago(n.age_s), n.age_s < 300 ? "fresh" : "stale");
  return el("div", {class: "card node " + state, "data-peer": n.peer_id, "data-state": state},
    el("h3", {title: n.peer_id},
       el("span", {class: n.name ? "name" : "id"}, nodeLabel(n)),
       el("span", {class: "pill " + state}, state)),
    n.name ? row("peer id", n.peer_id.slice(0, 16) + "…", "mono") : null,
    row("address", n.addresses.join(", "), "mono"),
    row("software", n.software_version + " · " + (n.build || "build unknown")),
    row("hardware class", n.hardware_class || "unknown"),
    ...gpuRows,
    offline ? null : row("load", n.load.active_requests + " active, " + n.load.free_slots +
                         " free slots, " + n.load.queue_depth + " queued"),
    row("served here", count(n.tokens_served) + " tokens in " + n.requests_served +
        (n.requests_served === 1 ? " request" : " requests")),
    seen,
    models);
}

function renderNodes(data) {
  const box = document.getElementById("nodes");
  if (!data.nodes.length) {
    box.replaceChildren(el("p", {class: "empty"}, "no node found in the DHT"));
    return;
  }
  const offline = n => n.state === "offline" ? 1 : 0;  // online first, then by name
  const nodes = [...data.nodes].sort((a, b) => offline(a) - offline(b) ||
                                     nodeLabel(a).localeCompare(nodeLabel(b)));
  box.replaceChildren(...nodes.map(renderNode));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("api/network", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    renderSummary(data); renderCharts(data); renderModels(data); renderNodes(data);
    lastData = data;
    status.className = "";
    status.textContent = "updated " + new Date().toLocaleTimeString() + " · refreshes every " +
      (REFRESH_MS / 1000) + " s";
    document.body.dataset.loaded = "1";
  } catch (err) {
    status.className = "bad";
    status.textContent = "cannot reach the gateway (" + err.message + "); retrying";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
window.addEventListener("resize", () => { if (lastData) renderCharts(lastData); });
</script>
</body>
</html>
"""


def render_page() -> str:
    return PAGE.replace("__REFRESH_MS__", str(REFRESH_S * 1000))
