// plcbridge dashboard: polls the read-only /api/v1 and renders devices, tags, a score chart per
// model and recent anomaly events. Plain DOM + <canvas>, no dependencies, no build step.
// Every value from the API goes into the page through textContent, never as HTML.
"use strict";

const API = "api/v1"; // relative: works behind a reverse proxy that adds a path prefix
const TOKEN_KEY = "plcbridge.token";
const POLL_MS = 1500;
const MAX_POINTS = 600; // per model; the chart shows the most recent ones

const state = {
  models: null, // [{name, threshold}] once loaded
  series: new Map(), // model name -> {points: [{t, score, anomaly, valid}], threshold, since}
  refreshes: 0,
  needToken: false,
};

class AuthError extends Error {}

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(API + path, { headers, cache: "no-store" });
  if (response.status === 401) throw new AuthError("the API needs a valid token");
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// -- small DOM helpers -------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells, className) {
  const tr = el("tr", null, className);
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = el("td");
      td.append(cell);
      tr.append(td);
    } else if (cell && typeof cell === "object") {
      const td = el("td", cell.text, cell.className);
      if (cell.title) td.title = cell.title;
      tr.append(td);
    } else {
      tr.append(el("td", cell ?? "—"));
    }
  }
  return tr;
}

function replaceRows(tableId, rows) {
  document.querySelector(`#${tableId} tbody`).replaceChildren(...rows);
}

function clock(iso) {
  return iso ? iso.slice(11, 23) : "—"; // HH:MM:SS.mmm of an ISO 8601 UTC time
}

function day(iso) {
  return iso ? iso.slice(0, 10) + " " + iso.slice(11, 19) : "—";
}

function number(value, digits = 3) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value !== "number") return String(value);
  if (Math.abs(value) >= 1000) return value.toFixed(0);
  const text = value.toPrecision(digits + 1);
  // trailing zeros of the fraction only: "0.5000" -> "0.5", "100" stays "100"
  return text.includes(".") && !text.includes("e") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}

function badge(text, kind) {
  return el("span", text, "badge " + kind);
}

// -- sections ----------------------------------------------------------------------------

function renderHealth(health) {
  document.getElementById("version").textContent = "v" + health.version;
  const overall = document.getElementById("overall");
  overall.textContent = health.status;
  overall.className = "badge " + (health.status === "ok" ? "good" : "bad");
  replaceRows("devices", health.devices.map((d) => {
    const status = d.connected ? badge("connected", "good") : badge("disconnected", "bad");
    const tr = row([
      d.name, status, { text: day(d.last_success), title: d.last_success || "" },
      { text: d.poll_latency_ms === null ? "—" : d.poll_latency_ms.toFixed(1) + " ms", className: "num" },
      { text: d.error_count, className: "num", title: JSON.stringify(d.errors) },
      { text: d.last_error || "", className: "wrap", title: d.last_error_time || "" },
    ], d.connected ? "" : "bad");
    tr.dataset.device = d.name;
    tr.dataset.connected = String(d.connected);
    return tr;
  }));
  for (const m of health.models) {
    const card = document.querySelector(`.model[data-model="${CSS.escape(m.name)}"]`);
    if (card) {
      card.querySelector(".counts").textContent =
        `scored ${m.scored} · anomalies ${m.anomalies}` + (m.writeback ? ` · write-back ${m.writeback.mode}` : "");
    }
  }
}

function renderTags(tags) {
  replaceRows("tags", tags.map((t) => {
    const quality = el("span");
    quality.append(badge(t.quality, t.quality));
    if (t.quality !== "good" && t.reason) quality.append(el("span", t.reason, "reason"));
    const tr = row([
      t.name, t.device, { text: number(t.value, 4), className: "num" }, t.unit || "",
      quality, { text: clock(t.received_time), title: t.received_time || "" },
    ], t.quality === "good" ? "" : t.quality);
    tr.dataset.tag = t.name;
    tr.dataset.quality = t.quality;
    return tr;
  }));
}

function renderEvents(events) {
  const newest = events.slice().reverse();
  replaceRows("events", newest.map((e) => {
    const rollout = e.detail && e.detail.rollout;
    const contributions = rollout ? rolloutText(rollout) : Object.entries((e.detail && e.detail.contributions) || {})
      .sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([name, value]) => `${name} ${number(value, 2)}`).join(", ");
    return row([
      { text: day(e.time), title: e.time }, e.model,
      badge(e.kind, e.kind === "anomaly-start" || e.kind === "shadow-rejected" ? "bad" : "good"),
      { text: number(e.score), className: "num" }, { text: number(e.threshold), className: "num" },
      contributions,
    ]);
  }));
  document.getElementById("no-events").hidden = events.length > 0;
}

// A rollout result (shadow staged, promoted, rejected; a rollback): version, reason, figures.
function rolloutText(r) {
  const c = r.comparison;
  const figures = c ? ` (windows ${c.windows}, FAR ${number(c.far, 3)}, agreement ${number(c.agreement, 3)})` : "";
  return `version ${r.version}${r.reason ? ": " + r.reason : ""}${figures}`;
}

async function refreshShadow(model) {
  const view = await api(`/models/${encodeURIComponent(model.name)}/shadow`);
  const card = document.querySelector(`.model[data-model="${CSS.escape(model.name)}"]`);
  const s = view.shadow;
  if (!card) return;
  card.querySelector(".shadow").textContent = !s ? "" : s.state === "running"
    ? `shadow ${s.version}: ${Math.round(s.remaining_s)} s left, ` +
      `windows ${s.comparison.windows}, FAR ${number(s.comparison.far, 3)}, ` +
      (s.passing ? "passing" : `failing: ${s.failing_reason}`)
    : `last shadow ${s.version} ${s.state}: ${s.reason}`;
}

function ensureModelCards(models) {
  const container = document.getElementById("models");
  container.replaceChildren(...models.map((m) => {
    const card = el("div", null, "model");
    card.dataset.model = m.name;
    const title = el("h3");
    title.append(el("span", m.name), el("span", "", "latest"), el("span", "", "counts muted"));
    const canvas = el("canvas");
    canvas.dataset.points = "0";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `score of model ${m.name} against its threshold`);
    card.append(title, el("div", "", "shadow muted"), canvas);
    return card;
  }));
}

async function refreshScores(model) {
  let series = state.series.get(model.name);
  if (!series) {
    series = { points: [], threshold: model.threshold, since: null };
    state.series.set(model.name, series);
  }
  const query = series.since ? `?limit=${MAX_POINTS}&since=${encodeURIComponent(series.since)}`
    : `?limit=${MAX_POINTS}`;
  const scores = await api(`/models/${encodeURIComponent(model.name)}/scores${query}`);
  for (const s of scores) {
    series.points.push({ t: Date.parse(s.time), score: s.score, anomaly: s.anomaly, valid: s.window_valid });
    series.threshold = s.threshold;
    series.since = s.time;
  }
  series.points.splice(0, Math.max(0, series.points.length - MAX_POINTS));
  const card = document.querySelector(`.model[data-model="${CSS.escape(model.name)}"]`);
  const last = scores.length ? scores[scores.length - 1] : null;
  if (last) {
    const latest = card.querySelector(".latest");
    latest.replaceChildren();
    latest.append(`score ${number(last.score)} / threshold ${number(last.threshold)} `,
      last.window_valid ? badge(last.anomaly ? "ANOMALY" : "normal", last.anomaly ? "bad" : "good")
        : badge("not scored: " + last.reason, "uncertain"));
  }
  drawChart(card.querySelector("canvas"), series);
}

// -- chart -------------------------------------------------------------------------------

function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 48, right: 10, top: 10, bottom: 22 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const points = series.points;
  const scored = points.filter((p) => p.valid && p.score !== null);
  canvas.dataset.points = String(scored.length);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#667085";
  if (points.length < 2) {
    ctx.fillText("waiting for scores…", pad.left, pad.top + 14);
    return;
  }
  const t0 = points[0].t;
  const t1 = points[points.length - 1].t;
  const x = (t) => pad.left + ((t - t0) / Math.max(1, t1 - t0)) * plotW;
  const { y, ticks, log } = yScale(series.threshold, scored.map((p) => p.score), pad.top, plotH);

  // grid and axis labels
  ctx.strokeStyle = "#e4e7ec";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  for (const v of ticks) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(width - pad.right, y(v));
    ctx.stroke();
    ctx.fillText(number(v, 2), pad.left - 4, y(v) + 4);
  }
  if (log) {
    ctx.textAlign = "left";
    ctx.fillText("log scale", pad.left + 4, pad.top + 10);
  }
  ctx.textAlign = "left";
  ctx.fillText(new Date(t0).toISOString().slice(11, 19), pad.left, height - 6);
  ctx.textAlign = "right";
  ctx.fillText(new Date(t1).toISOString().slice(11, 19) + " UTC", width - pad.right, height - 6);

  // windows that were not scored: shaded, so a gap in the line is explained
  ctx.fillStyle = "rgba(178, 106, 0, 0.10)";
  for (let i = 0; i < points.length; i++) {
    if (!points[i].valid) {
      const next = points[i + 1] ? points[i + 1].t : points[i].t;
      ctx.fillRect(x(points[i].t), pad.top, Math.max(1, x(next) - x(points[i].t)), plotH);
    }
  }

  // threshold
  ctx.strokeStyle = "#c62828";
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  ctx.moveTo(pad.left, y(series.threshold));
  ctx.lineTo(width - pad.right, y(series.threshold));
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = "#c62828";
  ctx.textAlign = "left";
  ctx.fillText("threshold " + number(series.threshold), pad.left + 4, y(series.threshold) - 4);

  // score line, broken where a window was not scored
  ctx.strokeStyle = "#1f5fbf";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  for (const p of points) {
    if (!p.valid || p.score === null) {
      drawing = false;
      continue;
    }
    if (drawing) ctx.lineTo(x(p.t), y(p.score));
    else ctx.moveTo(x(p.t), y(p.score));
    drawing = true;
  }
  ctx.stroke();
  ctx.fillStyle = "#c62828";
  for (const p of scored) {
    if (p.anomaly) {
      ctx.beginPath();
      ctx.arc(x(p.t), y(p.score), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

// Linear while scores stay near the threshold; logarithmic once a fault drives them far
// above it, so the normal band and the threshold stay readable next to a score of 1000.
function yScale(threshold, values, top, height) {
  const maxScore = Math.max(threshold, ...values);
  if (!(threshold > 0) || maxScore / threshold <= 20) {
    const yMax = maxScore * 1.15 || 1;
    return {
      y: (v) => top + height - (Math.min(Math.max(v, 0), yMax) / yMax) * height,
      ticks: [0, 1, 2, 3, 4].map((i) => (yMax * i) / 4),
      log: false,
    };
  }
  const positive = values.filter((v) => v > 0);
  const loExp = Math.floor(Math.log10(Math.min(threshold / 10, ...positive)));
  const hiExp = Math.ceil(Math.log10(maxScore * 1.15));
  const f = (v) => Math.log10(Math.max(v, 10 ** loExp));
  const ticks = [];
  for (let e = loExp; e <= hiExp; e++) ticks.push(10 ** e);
  return { y: (v) => top + height - ((f(v) - loExp) / (hiExp - loExp)) * height, ticks, log: true };
}

// -- polling -----------------------------------------------------------------------------

function showTokenForm(show) {
  state.needToken = show;
  document.getElementById("token-form").hidden = !show;
  document.getElementById("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    if (!state.models) {
      state.models = await api("/models");
      ensureModelCards(state.models);
    }
    const [health, tags, events] = await Promise.all([api("/health"), api("/tags"), api("/events?limit=20")]);
    renderHealth(health);
    renderTags(tags);
    renderEvents(events);
    await Promise.all(state.models.map(refreshScores));
    await Promise.all(state.models.map(refreshShadow));
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    status.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    showTokenForm(false);
  } catch (error) {
    if (error instanceof AuthError) {
      showTokenForm(true);
      status.textContent = sessionStorage.getItem(TOKEN_KEY) ? "token refused" : "token needed";
    } else {
      status.textContent = "API unreachable: " + error.message + " (showing the last data)";
    }
  }
}

async function loop() {
  await refresh();
  // setTimeout after each refresh, not setInterval: a slow API never gets requests piled up.
  setTimeout(loop, state.needToken ? 5000 : POLL_MS);
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  refresh();
});

document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.models = null;
  refresh();
});

window.addEventListener("resize", () => {
  for (const [name, series] of state.series) {
    const card = document.querySelector(`.model[data-model="${CSS.escape(name)}"]`);
    if (card) drawChart(card.querySelector("canvas"), series);
  }
});

loop();
