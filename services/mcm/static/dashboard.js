// The basalt dashboard: reads the deployments API and the traffic routes every few seconds
// (the browser sends the HttpOnly key cookie with each same-origin GET) and draws tables and
// inline SVG charts. Data goes into the page as text only (textContent), never as markup.
"use strict";

const REFRESH_MS = 3000;
const MAX_DETAILS = 50;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fde", "#e07b00", "#b3261e", "#2e8540"];
let refreshes = 0;

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (r.status === 401) { window.location.assign("/dashboard"); throw new Error("signed out"); }
  if (!r.ok) {
    let msg = `${r.status}`;
    try { msg += ": " + (await r.json()).error.message; } catch (e) { /* not our JSON */ }
    throw new Error(`${path}: ${msg}`);
  }
  return r.json();
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function fill(tableId, rows, empty) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const n = document.querySelectorAll(`#${tableId} thead th`).length;
    body.appendChild(row([el("td", empty, { colspan: String(n) })]));
  }
}

const fmtMs = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(1)} ms`);
const fmtPct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
const fmtRate = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));
const fmtTime = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
const num = (text, field) => el("td", text, { class: "num", "data-field": field });

function healthCell(d) {
  const h = d.health;
  const state = h && h.state ? h.state : "unknown";
  const td = el("td", null, { "data-field": "health" });
  const badge = el("span", state.toUpperCase() + (h && h.reason ? `: ${h.reason}` : ""),
                   { class: `badge h-${state}` });
  td.appendChild(badge);
  if (h && h.failures) td.appendChild(el("div", `${h.failures} failed start(s)` +
    (h.phase ? ` in ${h.phase}` : "") + (h.retry_at ? `, retry ${fmtTime(h.retry_at)}` : "")));
  if (h && h.first_error) td.appendChild(el("div", `first error: ${h.first_error}`, { class: "problem" }));
  return td;
}

function autoscalerText(d) {
  if (!d.autoscaling_settings) return "fixed count";
  const a = d.autoscaler;
  if (!a) return "no decision yet";
  return `desired ${a.desired}` + (a.panic ? " PANIC" : "") + (a.reason ? ` (${a.reason})` : "") +
    (a.ts ? ` at ${fmtTime(a.ts)}` : "");
}

function settingsText(s) {
  if (!s) return "–";
  let t = `min ${s.min_replica} max ${s.max_replica}`;
  if (s.concurrency_target) t += `, concurrency ${s.concurrency_target}`;
  if (s.scaling_mode) t += `, ${s.scaling_mode}`;
  return t;
}

function deploymentRows(models) {
  const rows = [];
  for (const m of models) {
    for (const d of m.deployments) {
      const envs = m.environments.filter((e) => e.deployment_id === d.id).map((e) => e.name);
      rows.push(row([
        el("td", m.name), el("td", d.id, { "data-field": "id" }),
        el("td", envs.join(", ") || "–"), el("td", d.status, { "data-field": "status" }),
        healthCell(d), num(d.desired_replicas, "desired"), num(d.active_replica_count, "ready"),
        num(d.replica_count, "replicas"), el("td", autoscalerText(d), { "data-field": "autoscaler" }),
        el("td", settingsText(d.autoscaling_settings)),
      ], { "data-deployment": d.id }));
    }
  }
  return rows;
}

const PHASES = ["placed", "fetched", "launched", "loaded", "engine", "ready", "first_token"];

function phasesText(start) {
  if (!start) return "–";
  const t0 = start.placed_ts || start.launched_ts;
  const parts = [];
  for (const p of PHASES) {
    const ts = start[`${p}_ts`];
    if (ts) parts.push(`${p} +${(ts - t0).toFixed(1)}s`);
  }
  if (start.tier) parts.push(`weights: ${start.tier}`);
  return parts.join(" · ") || "–";
}

function replicaRows(details, now) {
  const rows = [];
  for (const d of details) {
    for (const r of d.replicas || []) {
      rows.push(row([
        el("td", d.id), el("td", r.id), el("td", r.state, { "data-field": "state" }),
        el("td", r.region || "–"), el("td", r.zone || "–"), el("td", r.cluster || "–"),
        el("td", r.engine), el("td", phasesText(r.start)),
        el("td", r.heartbeat_ts ? `${Math.max(0, now - r.heartbeat_ts).toFixed(0)} s ago` : "–"),
      ], { "data-replica": r.id }));
    }
  }
  return rows;
}

function clusterRows(clusters) {
  return clusters.map((c) => row([
    el("td", c.name), el("td", c.provider), el("td", c.cloud), el("td", c.region),
    el("td", c.zone), el("td", c.accelerator), num(`${c.used} / ${c.capacity}`, "usage"),
    el("td", c.up ? "up" : "DOWN", { class: c.up ? "" : "problem" }),
    el("td", c.blocked ? `${c.blocked.scope} ${c.blocked.key}: ${c.blocked.reason}` : "–",
       { class: c.blocked ? "problem" : "" }),
  ]));
}

function recentRows(requests) {
  return requests.map((q) => row([
    el("td", fmtTime(q.ts)), el("td", q.deployment_id), el("td", q.replica_id || "–"),
    el("td", q.outcome, { class: q.outcome === "ok" ? "o-ok" : "o-err" }),
    num(fmtMs(q.queue_wait_ms), "queue"), num(fmtMs(q.ttft_ms), "ttft"),
    num(fmtMs(q.itl_ms), "itl"), num(fmtMs(q.e2e_ms), "e2e"),
    num(q.prompt_tokens, "prompt"), num(q.cached_tokens, "cached"),
    num(q.completion_tokens, "completion"),
  ], { "data-request": q.request_id }));
}

function showSummary(s) {
  const set = (k, v) => { document.querySelector(`[data-stat="${k}"]`).textContent = v; };
  set("requests", String(s.requests));
  set("rate", fmtRate(s.rate_per_s));
  for (const q of ["p50", "p90", "p99"]) {
    set(`ttft_${q}`, fmtMs(s.ttft_ms[q]));
    set(`itl_${q}`, fmtMs(s.itl_ms[q]));
  }
  set("prefix_hit", fmtPct(s.prefix_hit_ratio));
  set("error_rate", fmtPct(s.error_rate));
}

// -- charts: one SVG line chart per figure, drawn from the series' points ----------------

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function lineChart(name, ts, lines, fixedMax) {
  const node = document.querySelector(`svg[data-chart="${name}"]`);
  const W = 480, H = 170, L = 44, R = 8, T = 18, B = 20;
  const all = lines.flatMap((l) => l.values.filter((v) => v !== null && v !== undefined));
  const max = fixedMax || niceMax(Math.max(0, ...all));
  const x = (i) => L + (ts.length > 1 ? (i / (ts.length - 1)) * (W - L - R) : 0);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const kids = [];
  for (const f of [0, 0.5, 1]) {
    kids.push(svg("line", { x1: L, x2: W - R, y1: y(f * max), y2: y(f * max), stroke: "#e3e5ea" }));
    kids.push(svg("text", { x: L - 4, y: y(f * max) + 3, "text-anchor": "end" },
                  String(+(f * max).toPrecision(3))));
  }
  if (ts.length) {
    kids.push(svg("text", { x: L, y: H - 6 }, fmtTime(ts[0])));
    kids.push(svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, fmtTime(ts[ts.length - 1])));
  }
  lines.forEach((l, k) => {
    const color = COLORS[k % COLORS.length];
    let seg = [];
    const flush = () => {
      if (seg.length === 1) kids.push(svg("circle", { cx: seg[0][0], cy: seg[0][1], r: 2, fill: color }));
      if (seg.length > 1) kids.push(svg("polyline", { points: seg.map((p) => p.join(",")).join(" "),
        fill: "none", stroke: color, "stroke-width": 1.5, "data-line": l.name }));
      seg = [];
    };
    l.values.forEach((v, i) => {
      if (v === null || v === undefined) flush(); else seg.push([x(i).toFixed(1), y(v).toFixed(1)]);
    });
    flush();
    kids.push(svg("rect", { x: L + 4 + k * 80, y: 4, width: 10, height: 8, fill: color }));
    kids.push(svg("text", { x: L + 18 + k * 80, y: 11 }, l.name));
  });
  node.replaceChildren(...kids);
}

function drawCharts(points) {
  const ts = points.map((p) => p.t);
  const pick = (f) => points.map(f);
  lineChart("rate", ts, [{ name: "req/s", values: pick((p) => p.rate_per_s) }]);
  lineChart("ttft", ts, ["p50", "p90", "p99"].map((q) => ({ name: q, values: pick((p) => p.ttft_ms[q]) })));
  lineChart("itl", ts, ["p50", "p90", "p99"].map((q) => ({ name: q, values: pick((p) => p.itl_ms[q]) })));
  lineChart("ratios", ts, [
    { name: "prefix hits", values: pick((p) => p.prefix_hit_ratio) },
    { name: "errors", values: pick((p) => p.error_rate) },
  ], 1);
}

function syncOptions(select, ids) {
  const have = new Set([...select.options].map((o) => o.value));
  for (const id of ids) if (!have.has(id)) select.appendChild(el("option", id, { value: id }));
}

// -- the refresh loop ---------------------------------------------------------------------

async function refresh() {
  const dep = document.getElementById("traffic-deployment");
  const win = document.getElementById("traffic-window").value;
  const q = new URLSearchParams({ deployment: dep.value, window_s: win });
  const [models, clusters, series, recent] = await Promise.all([
    getJSON("/v1/models"), getJSON("/v1/clusters"), getJSON(`/v1/traffic/series?${q}`),
    getJSON(`/v1/traffic/recent?${new URLSearchParams({ deployment: dep.value, limit: "50" })}`),
  ]);
  const deps = models.models.flatMap((m) => m.deployments.map((d) => [m.name, d.id]));
  const details = await Promise.all(deps.slice(0, MAX_DETAILS).map(([m, id]) =>
    getJSON(`/v1/models/${m.split("/").map(encodeURIComponent).join("/")}/deployments/${encodeURIComponent(id)}`)));
  fill("deployments", deploymentRows(models.models), "no deployments");
  fill("replicas", replicaRows(details, series.now), "no replicas");
  fill("clusters", clusterRows(clusters.clusters), "no clusters");
  fill("recent", recentRows(recent.requests), "no requests yet");
  syncOptions(dep, [...new Set([...deps.map((d) => d[1]), ...series.deployments])]);
  showSummary(series.summary);
  drawCharts(series.points);
}

async function loop() {
  try {
    await refresh();
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    document.getElementById("status").textContent = `updated ${fmtTime(Date.now() / 1000)}`;
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = String(e.message || e);
  }
  setTimeout(loop, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["traffic-deployment", "traffic-window"]) {
    document.getElementById(id).addEventListener("change", () => refresh().catch(() => {}));
  }
  loop();
});
