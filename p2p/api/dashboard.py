"""The network dashboard: one self-contained HTML page served at `GET /` by the gateway.

The page holds no data: its script fetches `api/network` (the JSON the gateway builds from the
signed records in the DHT) and redraws every REFRESH_S seconds. No external assets (no CDN, no
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
        --accent:#2563eb; --ok:#15803d; --warn:#b45309; --bad:#b91c1c; }
@media (prefers-color-scheme: dark) {
  :root { --fg:#e6e8eb; --muted:#9aa4ae; --bg:#111418; --card:#1a1f25; --line:#2c333b;
          --accent:#60a5fa; --ok:#4ade80; --warn:#fbbf24; --bad:#f87171; }
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
.summary { display:grid; grid-template-columns:repeat(auto-fit, minmax(130px, 1fr)); gap:8px; }
.stat { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 12px; }
.stat b { display:block; font-size:22px; }
.stat span { color:var(--muted); font-size:12px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:10px; }
@media (max-width: 480px) { .grid { grid-template-columns:1fr; } main { padding:8px; } }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 12px;
        min-width:0; }
.card h3 { font-size:15px; margin:0 0 4px; font-family:ui-monospace, Menlo, Consolas, monospace; }
.row { display:flex; justify-content:space-between; gap:8px; font-size:13px; padding:2px 0; }
.row > span:first-child { color:var(--muted); flex:none; }
.row > span:last-child { text-align:right; min-width:0; }
.mono { font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12px; }
.bar { height:6px; background:var(--line); border-radius:3px; overflow:hidden; margin:2px 0 6px; }
.bar > i { display:block; height:100%; background:var(--accent); }
ul.models { list-style:none; padding:0; margin:6px 0 0; border-top:1px solid var(--line); }
ul.models li { padding:4px 0; font-size:13px; border-bottom:1px solid var(--line); }
.pill { display:inline-block; font-size:11px; padding:0 6px; border-radius:9px;
        border:1px solid var(--line); color:var(--muted); margin-left:4px; }
.fresh { color:var(--ok); } .stale { color:var(--warn); }
.empty { color:var(--muted); font-style:italic; }
</style>
</head>
<body>
<header><h1>gpunet network</h1><div id="status">loading…</div></header>
<main>
<section class="summary" id="summary"></section>
<h2>Models</h2>
<div class="grid" id="models"><p class="empty">loading…</p></div>
<h2>Nodes</h2>
<div class="grid" id="nodes"><p class="empty">loading…</p></div>
</main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;

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
function row(label, value, cls) {
  return el("div", {class: "row"}, el("span", {}, label),
            el("span", cls ? {class: cls} : {}, value));
}
function gib(bytes) { return (bytes / 2 ** 30).toFixed(1) + " GiB"; }
function rate(x) { return x > 0 ? x.toFixed(1) + " tok/s" : "not measured"; }
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
function stat(value, label) {
  return el("div", {class: "stat"}, el("b", {}, value), el("span", {}, label));
}

function renderSummary(data) {
  const gpus = data.nodes.flatMap(n => n.gpus);
  const vram = gpus.reduce((a, g) => a + g.vram_total, 0);
  const active = data.nodes.reduce((a, n) => a + n.load.active_requests, 0);
  document.getElementById("summary").replaceChildren(
    stat(data.nodes.length, "nodes"), stat(data.models.length, "models"),
    stat(gpus.length, "GPUs"), stat(gib(vram), "VRAM"), stat(active, "active requests"));
}

function renderModels(data) {
  const box = document.getElementById("models");
  if (!data.models.length) {
    box.replaceChildren(el("p", {class: "empty"}, "no model is offered right now"));
    return;
  }
  box.replaceChildren(...data.models.map(m => el("div", {class: "card model", "data-model": m.id},
    el("h3", {}, m.id),
    row("build", [m.architecture, m.quantization, params(m.parameter_count)].join(" · ")),
    row("providers", String(m.providers)),
    row("free slots", String(m.free_slots)),
    row("best decode", rate(m.decode_tok_s_best)),
    row("context", String(m.context_length)),
    row("sha256", m.sha256.slice(0, 16) + "…", "mono"))));
}

function renderNode(n) {
  const gpuRows = n.gpus.length ? n.gpus.map(g => {
    const used = g.vram_total ? 100 * (g.vram_total - g.vram_free) / g.vram_total : 0;
    return el("div", {class: "gpu"},
      row(g.name, gib(g.vram_free) + " free of " + gib(g.vram_total)),
      el("div", {class: "bar", title: used.toFixed(0) + "% VRAM used"},
         el("i", {style: "width:" + used.toFixed(1) + "%"})),
      row("utilisation", g.utilization_pct + " %"));
  }) : [row("hardware", "CPU, " + n.cpu.cores + " cores, " + gib(n.cpu.ram_bytes) + " RAM")];
  const age = n.age_s;
  const models = el("ul", {class: "models"}, ...n.models.map(m => el("li", {},
    el("b", {}, m.name), el("span", {class: "pill"}, m.quantization),
    el("div", {class: "row"}, el("span", {}, "decode / prefill"),
       el("span", {}, rate(m.decode_tok_s) + " / " + rate(m.prefill_tok_s))),
    el("div", {class: "row"}, el("span", {}, "layers on GPU"),
       el("span", {}, m.layers_offloaded + " of " + m.layers_total)))));
  return el("div", {class: "card node", "data-peer": n.peer_id},
    el("h3", {title: n.peer_id}, n.peer_id.slice(0, 16) + "…"),
    row("address", n.addresses.join(", "), "mono"),
    row("version", n.software_version),
    row("build", n.build || "unknown"),
    row("hardware class", n.hardware_class || "unknown"),
    ...gpuRows,
    row("load", n.load.active_requests + " active, " + n.load.free_slots + " free, " +
        n.load.queue_depth + " queued"),
    row("last seen", ago(age), age < 300 ? "fresh" : "stale"),
    models);
}

function renderNodes(data) {
  const box = document.getElementById("nodes");
  if (!data.nodes.length) {
    box.replaceChildren(el("p", {class: "empty"}, "no node found in the DHT"));
    return;
  }
  box.replaceChildren(...data.nodes.map(renderNode));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("api/network", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    renderSummary(data); renderModels(data); renderNodes(data);
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
</script>
</body>
</html>
"""


def render_page() -> str:
    return PAGE.replace("__REFRESH_MS__", str(REFRESH_S * 1000))
