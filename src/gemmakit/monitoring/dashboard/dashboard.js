// gemmakit dashboard: polls /v1/monitoring/summary and draws uPlot charts; the playground streams
// a reply from the OpenAI-compatible API. No build step: plain browser JavaScript.
"use strict";

const POLL_MS = 2000;
const MAX_POINTS = 180; // 6 minutes at one point per 2 s
const $ = (id) => document.getElementById(id);

const state = { points: 0, model: null, last: null, charts: {}, data: {} };
window.gemmakitDashboard = state; // inspectable (and used by the browser test)

function authHeaders() {
  const key = $("api-key").value || localStorage.getItem("gemmakit-api-key") || "";
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`;
}
const fmtNum = (x, d = 1) => (x === null || x === undefined ? "–" : x.toFixed(d));

function makeChart(id, series) {
  const el = $(id);
  const data = [[], ...series.map(() => [])];
  const opts = {
    width: Math.max(300, el.clientWidth || 360), height: 180,
    scales: { x: { time: true } },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: true }))],
    axes: [{}, { size: 60 }],
    legend: { live: false },
  };
  state.charts[id] = new uPlot(opts, data, el);
  state.data[id] = data;
}

function push(id, t, values) {
  const data = state.data[id];
  data[0].push(t);
  values.forEach((v, i) => data[i + 1].push(v === undefined ? null : v));
  if (data[0].length > MAX_POINTS) data.forEach((col) => col.shift());
  state.charts[id].setData(data);
}

function renderAlerts(alerts) {
  const box = $("alerts");
  box.replaceChildren();
  if (!alerts.length) {
    const s = document.createElement("span");
    s.className = "none";
    s.textContent = "No active alerts";
    box.append(s);
    return;
  }
  for (const a of alerts) {
    const s = document.createElement("span");
    s.className = "alert";
    const v = a.value === null ? "no data" : Number(a.value).toPrecision(4);
    s.textContent = `⚠ ${a.name}: ${a.metric} = ${v} (${a.comparison} ${a.threshold})`;
    box.append(s);
  }
}

async function poll() {
  const win = $("window").value;
  try {
    const r = await fetch(`/v1/monitoring/summary?window=${win}`, { headers: authHeaders() });
    if (r.status === 401) throw new Error("HTTP 401: the server needs an API key, enter it above");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    state.last = s;
    state.points += 1;
    $("model").textContent = s.model;
    state.model = s.model;
    $("status").textContent = s.loaded ? `live · updated ${new Date(s.time * 1000).toLocaleTimeString()}` : "model loading…";
    $("status").className = "status";
    $("t-rate").textContent = fmtNum(s.request_rate, 2);
    $("t-success").textContent = s.success_rate === null ? "–" : `${(s.success_rate * 100).toFixed(1)} %`;
    $("t-ttft").textContent = `${fmtSeconds(s.ttft_p50_seconds)} / ${fmtSeconds(s.ttft_p95_seconds)}`;
    $("t-e2e").textContent = `${fmtSeconds(s.e2e_p50_seconds)} / ${fmtSeconds(s.e2e_p95_seconds)}`;
    $("t-tps").textContent = fmtNum(s.tokens_per_second_avg);
    $("t-queue").textContent = `${s.requests_running} / ${s.requests_waiting}`;
    $("t-mem").textContent = `${(s.memory.rss_bytes / 2 ** 20).toFixed(0)} MiB`;
    $("t-requests").textContent = String(s.requests);
    const t = s.time;
    push("chart-rate", t, [s.request_rate]);
    push("chart-latency", t, [s.ttft_p50_seconds, s.ttft_p95_seconds, s.e2e_p50_seconds, s.e2e_p95_seconds]);
    push("chart-tps", t, [s.tokens_per_second_avg, s.generation_tokens_per_second]);
    push("chart-queue", t, [s.requests_running, s.requests_waiting]);
    push("chart-mem", t, [s.memory.rss_bytes / 2 ** 20]);
    renderAlerts(s.alerts);
  } catch (e) {
    $("status").textContent = `cannot reach the server (${e.message})`;
    $("status").className = "status error";
  }
}

async function modelName() {
  if (state.model) return state.model;
  const r = await fetch("/v1/models", { headers: authHeaders() });
  const j = await r.json();
  state.model = j.data[0].id;
  return state.model;
}

// Read an OpenAI-style SSE stream: one JSON object per `data:` line, `[DONE]` at the end.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(ev) {
  ev.preventDefault();
  const out = $("chat-output"), meta = $("chat-meta"), button = $("chat-send");
  const text = $("chat-input").value;
  const chat = $("chat-mode").value === "chat";
  out.textContent = "";
  meta.textContent = "";
  button.disabled = true;
  const t0 = performance.now();
  let firstAt = null;
  try {
    const body = {
      model: await modelName(), stream: true, stream_options: { include_usage: true },
      max_tokens: Number($("chat-max-tokens").value) || 48,
    };
    if (chat) body.messages = [{ role: "user", content: text }];
    else body.prompt = text;
    const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : `HTTP ${r.status}`);
    }
    let usage = null, finish = null;
    for await (const e of sseEvents(r)) {
      if (e.error) throw new Error(e.error.message);
      if (e.usage) usage = e.usage;
      for (const c of e.choices || []) {
        const piece = chat ? (c.delta && c.delta.content) || "" : c.text || "";
        if (piece) {
          if (firstAt === null) firstAt = performance.now();
          out.textContent += piece;
        }
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    const total = (performance.now() - t0) / 1000;
    const ttft = firstAt === null ? null : (firstAt - t0) / 1000;
    meta.textContent = `done · finish ${finish} · first token ${fmtSeconds(ttft)} · total ${fmtSeconds(total)}`
      + (usage ? ` · ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : "");
    meta.dataset.done = "1";
  } catch (e) {
    meta.textContent = `error: ${e.message}`;
  } finally {
    button.disabled = false;
  }
}

function init() {
  makeChart("chart-rate", [["req/s", "#2f6fde"]]);
  makeChart("chart-latency", [["TTFT p50", "#7cb342"], ["TTFT p95", "#2e7d32"],
                              ["latency p50", "#ffa000"], ["latency p95", "#c62828"]]);
  makeChart("chart-tps", [["decode tok/s (mean)", "#6a1b9a"], ["generated tok/s (total)", "#00897b"]]);
  makeChart("chart-queue", [["running", "#2f6fde"], ["waiting", "#c62828"]]);
  makeChart("chart-mem", [["RSS MiB", "#455a64"]]);
  const key = localStorage.getItem("gemmakit-api-key");
  if (key) $("api-key").value = key;
  $("api-key").addEventListener("change", () => localStorage.setItem("gemmakit-api-key", $("api-key").value));
  $("chat-form").addEventListener("submit", send);
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", init);
