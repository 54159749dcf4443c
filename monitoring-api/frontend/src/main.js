// The monitoring dashboard: sign in, devices with status, a live chart, alerts, fleet figures.
import { io } from "socket.io-client";
import { Api, ApiError } from "./api.js";
import { LiveChart } from "./chart.js";
import "./style.css";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "iot-monitoring-token";
const DEVICE_REFRESH_MS = 30_000;

const state = {
  api: null,
  socket: null,
  devices: new Map(),
  selected: null,
  alerts: new Map(),
  chart: new LiveChart($("#chart")),
};

function fmt(n, digits = 1) {
  return typeof n === "number" ? n.toLocaleString(undefined, { maximumFractionDigits: digits }) : "–";
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

function decodeEmail(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return payload.email || payload.sub;
  } catch {
    return "";
  }
}

// -- sign-in -----------------------------------------------------------------------------------
$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#login-error").textContent = "";
  try {
    const token = await Api.signIn($("#email").value, $("#password").value);
    sessionStorage.setItem(TOKEN_KEY, token);
    await start(token);
  } catch (err) {
    $("#login-error").textContent =
      err instanceof ApiError && err.status === 401 ? "Wrong email or password." : `Sign-in failed: ${err.message}`;
  }
});

$("#sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.socket) state.socket.disconnect();
  window.location.reload();
});

async function start(token) {
  state.api = new Api(token);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#whoami").hidden = false;
  $("#user-email").textContent = decodeEmail(token);
  connect(token);
  await Promise.all([loadDevices(), loadAlerts(), loadStats()]);
  // Online/offline is derived from last-seen times, not announced: refresh it now and then.
  setInterval(() => { if (!$("#app").hidden) loadDevices(); }, DEVICE_REFRESH_MS);
}

function signedOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#login").hidden = false;
  $("#app").hidden = true;
  $("#whoami").hidden = true;
  $("#login-error").textContent = "Your session has ended; please sign in again.";
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signedOut();
    else console.error(err);
    return null;
  }
}

// -- live connection -----------------------------------------------------------------------------
function connect(token) {
  const socket = io({ path: "/ws/monitoring", auth: { token }, transports: ["websocket", "polling"] });
  state.socket = socket;
  const status = $("#live-status");
  socket.on("connect", () => {
    status.textContent = "live";
    status.className = "badge live";
    socket.emit("join", { room: "fleet" });
    socket.emit("join", { alerts_min_severity: $("#alert-severity").value });
    if (state.selected) socket.emit("join", { device_id: state.selected });
  });
  socket.on("disconnect", () => {
    status.textContent = "offline";
    status.className = "badge offline";
  });
  socket.on("connect_error", (err) => {
    status.textContent = "offline";
    status.className = "badge offline";
    if (/token|credential|unauthorized/i.test(err.message)) {
      socket.disconnect();
      signedOut();
    }
  });
  socket.on("window", (w) => {
    if (w.device_id !== state.selected) return;
    state.chart.addWindow(w);
    $("#chart-last").textContent = `${w.metric}: ${fmt(w.mean, 2)} (window ${when(w.window_start)}, ${w.count} readings)`;
  });
  socket.on("alert", (a) => {
    state.alerts.set(a.alert_id, a);
    renderAlerts();
  });
  socket.on("fleet", renderFleet);
  socket.on("device", (e) => {
    if (e.event_type === "device.deleted") state.devices.delete(e.device_id);
    else if (e.device) state.devices.set(e.device_id, { ...state.devices.get(e.device_id), ...e.device });
    renderDevices();
  });
}

$("#alert-severity").addEventListener("change", async (ev) => {
  if (state.socket) state.socket.emit("join", { alerts_min_severity: ev.target.value });
  await loadAlerts();
});

// -- devices and the chart -------------------------------------------------------------------------
async function loadDevices() {
  const devices = await guarded(() => state.api.devices());
  if (!devices) return;
  state.devices = new Map(devices.map((d) => [d.id, d]));
  renderDevices();
}

function renderDevices() {
  const body = $("#devices tbody");
  body.replaceChildren();
  const devices = [...state.devices.values()].sort((a, b) => (a.name || "").localeCompare(b.name || ""));
  for (const d of devices) {
    const tr = document.createElement("tr");
    tr.dataset.deviceId = d.id;
    tr.dataset.testid = "device-row";
    if (d.id === state.selected) tr.classList.add("selected");
    const status = d.status || "never_seen";
    tr.innerHTML = `<td class="name"></td><td class="type"></td><td><span class="badge ${status}">${status.replace("_", " ")}</span></td>`;
    tr.querySelector(".name").textContent = d.name || d.id;
    tr.querySelector(".type").textContent = d.type || "";
    tr.addEventListener("click", () => selectDevice(d.id));
    body.appendChild(tr);
  }
}

async function selectDevice(id) {
  if (state.socket && state.selected) state.socket.emit("leave", { device_id: state.selected });
  state.selected = id;
  state.chart.reset();
  renderDevices();
  const d = state.devices.get(id);
  $("#chart-device").textContent = d ? `— ${d.name}` : "";
  $("#chart-hint").hidden = true;
  $("#chart-last").textContent = "";
  if (state.socket) {
    state.socket.emit("join", { device_id: id }, (ack) => {
      if (!ack || !ack.ok) $("#chart-last").textContent = `Cannot watch this device: ${ack && ack.error}`;
    });
  }
  loadRefused(id);
  await loadHistory(id);
}

// Time ranges: span and the bucket size asked of the API (live = the last 10 min of 10 s
// windows; every range ends now, so live windows are appended to all of them).
const RANGES = {
  live: [600, "10s", 10],
  "15m": [900, "10s", 10],
  "1h": [3600, "1m", 60],
  "6h": [6 * 3600, "5m", 300],
  "24h": [86400, "5m", 300],
  "7d": [7 * 86400, "1h", 3600],
};

let historySeq = 0;

async function loadHistory(id) {
  const seq = ++historySeq; // a slower, older answer (another range) is dropped
  const range = $("#range").value;
  const [span, interval, seconds] = RANGES[range] || RANGES.live;
  const now = Date.now() / 1000;
  const history = await guarded(() =>
    state.api.deviceData(id, {
      start: now - span,
      end: now,
      interval,
      aggregate: ["mean", "min", "max"],
    }),
  );
  if (history && state.selected === id && seq === historySeq) {
    state.chart.seed(history.series, seconds, range !== "live");
    $("#chart").dataset.range = range;
  }
}

$("#range").addEventListener("change", () => {
  if (!state.selected) return;
  state.chart.reset();
  loadHistory(state.selected);
});
// Buckets coarser than the stored windows (5 min, 1 h) are not pushed: refetch them.
setInterval(() => {
  const [, , seconds] = RANGES[$("#range").value] || RANGES.live;
  if (state.selected && seconds > 60) loadHistory(state.selected);
}, 60_000);

// -- refused readings of the chosen device (why was my reading refused?) ---------------------------
async function loadRefused(id) {
  const card = $("#refused-card");
  card.hidden = false;
  $("#refused-device").textContent = state.devices.get(id)?.name || "";
  const page = await guarded(() => state.api.deadletters(id));
  if (!page || state.selected !== id) return;
  const list = $("#refused");
  list.replaceChildren();
  if (!page.items.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "Nothing refused in the last 7 days.";
    list.appendChild(li);
  }
  for (const r of page.items) {
    const li = document.createElement("li");
    li.dataset.testid = "refused-reading";
    li.innerHTML = `<span class="badge warning"></span><span class="msg"></span><code></code>`;
    li.querySelector(".badge").textContent = r.reason;
    li.querySelector(".msg").textContent = ` ${r.detail || ""} (${r.source}, ${when(r.ts)}) `;
    li.querySelector("code").textContent = r.payload + (r.payload_truncated ? "…" : "");
    list.appendChild(li);
  }
}

// -- alerts -------------------------------------------------------------------------------------------
const RANK = { info: 0, warning: 1, critical: 2 };

async function loadAlerts() {
  const severity = $("#alert-severity").value;
  const page = await guarded(() => state.api.alerts({ severity, limit: 100 }));
  if (!page) return;
  state.alerts = new Map(page.items.map((a) => [a.alert_id, a]));
  renderAlerts();
}

function renderAlerts() {
  const list = $("#alerts");
  list.replaceChildren();
  const min = RANK[$("#alert-severity").value] ?? 0;
  const alerts = [...state.alerts.values()]
    .filter((a) => (RANK[a.severity] ?? 0) >= min)
    .sort((a, b) => b.updated_at - a.updated_at)
    .slice(0, 200);
  if (!alerts.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "No alerts.";
    list.appendChild(li);
  }
  for (const a of alerts) {
    const li = document.createElement("li");
    li.className = a.status;
    li.dataset.alertId = a.alert_id;
    li.dataset.status = a.status;
    li.dataset.testid = "alert";
    const dev = state.devices.get(a.device_id);
    li.innerHTML = `<span class="badge ${a.severity}"></span><span class="msg"></span><span class="status"></span>`;
    li.querySelector(".badge").textContent = a.severity;
    li.querySelector(".msg").textContent = `${dev ? dev.name : a.device_id}: ${a.message} (${when(a.started_at)})`;
    li.querySelector(".status").textContent = a.status;
    if (a.status === "active") {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.textContent = "Acknowledge";
      btn.className = "ack";
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        const updated = await guarded(() => state.api.ack(a.alert_id));
        if (updated) state.alerts.set(updated.alert_id, updated);
        renderAlerts();
      });
      li.appendChild(btn);
    }
    list.appendChild(li);
  }
}

// -- fleet figures ------------------------------------------------------------------------------------
async function loadStats() {
  const stats = await guarded(() => state.api.stats("5m"));
  if (stats) renderFleet(stats);
}

function renderFleet(s) {
  $("#fleet-devices").textContent = fmt(s.devices_reporting, 0);
  $("#fleet-rate").textContent = fmt(s.readings_per_second, 1);
  $("#fleet-readings").textContent = fmt(s.readings, 0);
  const sev = s.alerts_by_severity || {};
  const parts = ["critical", "warning", "info"].filter((k) => sev[k]).map((k) => `${sev[k]} ${k}`);
  $("#fleet-alerts").textContent = parts.length ? parts.join(", ") : "0";
}

// -- boot -----------------------------------------------------------------------------------------------
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
