// The monitoring dashboard: sign in, the fleet (paged, sortable, last values), a device page with
// a live chart, alerts (filters, acknowledge, clear), fleet figures. Viewers see everything and
// change nothing: every control that writes is left out (or hidden) for them.
import { io } from "socket.io-client";
import { Api, ApiError } from "./api.js";
import { LiveChart } from "./chart.js";
import { DeviceConfigEditor } from "./device_config.js";
import { $, emptyNote } from "./dom.js";
import { Subscriptions } from "./subscriptions.js";
import "./style.css";

const TOKEN_KEY = "iot-monitoring-token";
const DEVICE_REFRESH_MS = 30_000;
const PAGE_SIZE = 50;
const MAX_METRIC_COLUMNS = 8;

const state = {
  api: null,
  socket: null,
  devices: new Map(),
  selected: null,
  alerts: new Map(),
  chart: new LiveChart($("#chart")),
  canWrite: false,
  // the fleet table: sort column and direction (1: the first click), page, name filter
  sort: { key: "name", dir: 1 },
  page: 0,
  filter: "",
  fleet: { items: [], total: 0 }, // the page shown, as GET /monitoring/fleet answered it
  hiddenMetrics: new Set(), // metrics of the chosen device left out of its chart
};

function fmt(n, digits = 1) {
  return typeof n === "number" ? n.toLocaleString(undefined, { maximumFractionDigits: digits }) : "–";
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

// The token's claims, for display and for hiding what the API would refuse (it still decides).
function claims(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  } catch {
    return {};
  }
}

function ago(iso) {
  const t = typeof iso === "number" ? iso * 1000 : Date.parse(iso || "");
  if (!Number.isFinite(t)) return "never";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleString();
}

// A device's name wherever one is shown; its id only when the name is not known.
function deviceName(id) {
  return state.devices.get(id)?.name || id;
}

const ctx = {
  api: () => state.api,
  canWrite: () => state.canWrite,
  deviceName,
  guarded: (fn) => guarded(fn),
  updated: (device) => {
    state.devices.set(device.id, { ...state.devices.get(device.id), ...device });
    renderDevices();
  },
};
const editor = new DeviceConfigEditor(ctx);
const subscriptions = new Subscriptions(ctx);

// -- sign-in -----------------------------------------------------------------------------------
// Performance marks (sign-in, devices-listed, device-chosen, range-chosen, chart:<range>) are
// what the browser tests read for the dashboard's timing figures (benchmarks/RESULTS.md).
$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  performance.mark("sign-in");
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
  const who = claims(token);
  $("#user-email").textContent = who.email || who.sub || "";
  $("#user-role").textContent = who.role || "";
  state.canWrite = who.role === "admin" || who.role === "operator";
  document.body.classList.toggle("read-only", !state.canWrite);
  connect(token);
  await Promise.all([loadDevices(), loadAlerts(), loadStats(), subscriptions.load()]);
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
    if (w.device_id !== state.selected || state.hiddenMetrics.has(w.metric) || !rangeIncludesNow()) return;
    state.chart.addWindow(w);
    $("#chart-last").textContent = `${w.metric}: ${fmt(w.mean, 2)} (window ${when(w.window_start)}, ${w.count} readings)`;
  });
  socket.on("alert", (a) => {
    state.alerts.set(a.alert_id, a);
    renderAlerts();
  });
  socket.on("fleet", renderFleet);
  socket.on("device", (e) => {
    const known = state.devices.has(e.device_id);
    if (e.event_type === "device.deleted") state.devices.delete(e.device_id);
    else if (e.device) state.devices.set(e.device_id, { ...state.devices.get(e.device_id), ...e.device });
    renderDevices();
    // a device came or went: where the others fall in the order changed
    if (known !== state.devices.has(e.device_id)) loadFleet();
  });
}

$("#alert-severity").addEventListener("change", async (ev) => {
  if (state.socket) state.socket.emit("join", { alerts_min_severity: ev.target.value });
  await loadAlerts();
});

// -- the fleet: every device with status and the last value of each metric, sorted, paged ---------
// The API sorts and pages (GET /monitoring/fleet) over every device, so a sort by a metric puts
// the fleet's top first, not the top of the pages already seen. The full list (state.devices)
// is still loaded: names everywhere, the device pickers, live device events.
async function loadDevices() {
  const devices = await guarded(() => state.api.devices());
  if (!devices) return;
  state.devices = new Map(devices.map((d) => [d.id, d]));
  renderDevices();
  await loadFleet();
}

// Ascending = first click; "last seen" shows the most recent first on the first click.
function fleetOrder() {
  const { key, dir } = state.sort;
  const asc = key === "last_seen" ? dir < 0 : dir > 0;
  return asc ? "asc" : "desc";
}

let fleetSeq = 0;
let fleetRenders = 0;
async function loadFleet() {
  const seq = ++fleetSeq; // an older answer (another sort, page or filter) is dropped
  const page = await guarded(() =>
    state.api.fleet({
      sort: state.sort.key,
      order: fleetOrder(),
      q: state.filter.trim() || undefined,
      limit: PAGE_SIZE,
      offset: state.page * PAGE_SIZE,
    }),
  );
  if (!page || seq !== fleetSeq) return;
  if (!page.items.length && page.total && state.page > 0) {
    // the list shrank under this page: show its last page
    state.page = Math.max(0, Math.ceil(page.total / PAGE_SIZE) - 1);
    return loadFleet();
  }
  state.fleet = page;
  renderDevices();
  $("#devices").dataset.fleet = String(++fleetRenders);
  // The first page comes with its last values: the list and its values show at once.
  if (!performance.getEntriesByName("devices-listed").length) {
    performance.mark("devices-listed");
    performance.mark("latest-shown");
  }
}

// Metric columns: the metrics the devices declare (most common first), then those they send.
function metricColumns() {
  const counts = new Map();
  for (const d of state.devices.values()) {
    for (const m of d.config?.metrics || []) counts.set(m.name, (counts.get(m.name) || 0) + 1);
  }
  for (const d of state.fleet.items) {
    for (const m of Object.keys(d.latest || {})) if (!counts.has(m)) counts.set(m, 0);
  }
  // the column sorted by stays, even when no device on this page sends it
  if (state.sort.key.startsWith("m:") && !counts.has(state.sort.key.slice(2))) counts.set(state.sort.key.slice(2), 0);
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, MAX_METRIC_COLUMNS)
    .map(([m]) => m)
    .sort();
}

function renderDevices() {
  const metrics = metricColumns();
  const columns = [
    ["name", "Name"],
    ["type", "Type"],
    ["status", "Status"],
    ["last_seen", "Last seen"],
    ...metrics.map((m) => [`m:${m}`, m]),
  ];
  const head = $("#devices thead tr");
  head.replaceChildren();
  for (const [key, label] of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.dataset.sort = key;
    th.setAttribute("aria-sort", state.sort.key === key ? (fleetOrder() === "asc" ? "ascending" : "descending") : "none");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "sort";
    btn.textContent = label + (state.sort.key === key ? (state.sort.dir > 0 ? " ▲" : " ▼") : "");
    btn.addEventListener("click", () => {
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      state.page = 0;
      renderDevices(); // the header at once, the rows once the API answers
      loadFleet();
    });
    th.appendChild(btn);
    head.appendChild(th);
  }

  const { items, total } = state.fleet;
  const first = state.page * PAGE_SIZE;
  const body = $("#devices tbody");
  body.replaceChildren();
  for (const item of items) {
    // live device events and edits may be newer than the page
    const d = { ...item, ...state.devices.get(item.id) };
    const tr = document.createElement("tr");
    tr.dataset.deviceId = d.id;
    tr.dataset.testid = "device-row";
    if (d.id === state.selected) tr.classList.add("selected");
    const status = d.status || "never_seen";
    const cell = (label, cls) => {
      const td = document.createElement("td");
      td.dataset.label = label;
      if (cls) td.className = cls;
      tr.appendChild(td);
      return td;
    };
    cell("Name", "name").textContent = d.name || d.id;
    cell("Type", "type").textContent = d.type || "";
    const badge = document.createElement("span");
    badge.className = `badge ${status}`;
    badge.textContent = status.replace("_", " ");
    cell("Status", "status").appendChild(badge);
    cell("Last seen", "last-seen").textContent = ago(d.last_seen);
    const latest = item.latest || {};
    for (const m of metrics) {
      const td = cell(m, "metric");
      td.dataset.metric = m;
      const v = latest[m];
      td.textContent = v ? fmt(v.value, 2) : "–";
      if (v) td.title = new Date(v.ts * 1000).toLocaleString();
    }
    tr.addEventListener("click", () => selectDevice(d.id));
    body.appendChild(tr);
  }
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  $("#devices-count").textContent = `(${total.toLocaleString()})`;
  $("#devices-page").textContent = total
    ? `${(first + 1).toLocaleString()}–${(first + items.length).toLocaleString()} of ${total.toLocaleString()}`
    : "no devices";
  $("#devices-prev").disabled = state.page === 0;
  $("#devices-next").disabled = state.page >= pages - 1;
  renderDeviceOptions();
  renderAlerts(); // names may have arrived after the alerts
  subscriptions.render();
  if (state.selected) renderDeviceCard();
}

$("#devices-prev").addEventListener("click", () => { state.page -= 1; loadFleet(); });
$("#devices-next").addEventListener("click", () => { state.page += 1; loadFleet(); });
$("#devices-filter").addEventListener("input", (ev) => {
  state.filter = ev.target.value;
  state.page = 0;
  loadFleet();
});

// Device pickers (alert filter, subscription scope) list names, in name order.
// Rebuilt only when the devices or their names change (a thousand options each time is slow).
let optionsKey = "";
function renderDeviceOptions() {
  const devices = [...state.devices.values()].sort((a, b) => (a.name || "").localeCompare(b.name || ""));
  const key = devices.map((d) => `${d.id}:${d.name}`).join("|");
  if (key === optionsKey) return;
  optionsKey = key;
  for (const [sel, all] of [["#alert-device", "all devices"], ["#sub-device", "all my devices"]]) {
    const select = $(sel);
    const current = select.value;
    select.replaceChildren(new Option(all, ""));
    for (const d of devices) select.appendChild(new Option(d.name || d.id, d.id));
    select.value = state.devices.has(current) ? current : "";
  }
}

function renderDeviceCard() {
  const d = state.devices.get(state.selected);
  if (!d) return;
  $("#device-card").hidden = false;
  $("#device-name").textContent = d.name || d.id;
  const status = d.status || "never_seen";
  $("#device-status").textContent = status.replace("_", " ");
  $("#device-last-seen").textContent = ago(d.last_seen);
  editor.show(d);
}

async function selectDevice(id) {
  if (state.socket && state.selected) state.socket.emit("leave", { device_id: state.selected });
  performance.mark("device-chosen");
  if (state.selected !== id) state.hiddenMetrics = new Set();
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
  // The list may be half a minute old: the device page shows its current config versions.
  guarded(() => state.api.device(id)).then((fresh) => {
    if (fresh && state.selected === id) ctx.updated(fresh);
  });
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

// A custom range: the finest bucket giving at most ~720 points (the API caps each size's span).
const CUSTOM_BUCKETS = [[10, "10s"], [60, "1m"], [300, "5m"], [3600, "1h"], [86400, "1d"]];

function customRange() {
  const from = Date.parse($("#range-from").value) / 1000;
  const to = Date.parse($("#range-to").value) / 1000;
  if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) return null;
  const span = to - from;
  const [seconds, interval] = CUSTOM_BUCKETS.find(([b]) => span / b <= 720) || CUSTOM_BUCKETS.at(-1);
  return { start: from, end: to, interval, seconds };
}

// Live windows are appended when the range ends now (every preset; a custom one only if so).
function rangeIncludesNow() {
  if ($("#range").value !== "custom") return true;
  const r = customRange();
  return Boolean(r) && r.end >= Date.now() / 1000 - 10;
}

// -- metric picker: which of the device's metrics the chart shows (all by default) ------------------
function deviceMetrics(id) {
  const declared = (state.devices.get(id)?.config?.metrics || []).map((m) => m.name);
  const seen = [...state.chart.series.keys()];
  return [...new Set([...declared, ...seen, ...state.hiddenMetrics])].sort();
}

function renderMetricPicker() {
  const box = $("#metric-picker");
  box.replaceChildren();
  if (!state.selected) return;
  const metrics = deviceMetrics(state.selected);
  if (metrics.length < 2) return;
  for (const m of metrics) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = m;
    input.checked = !state.hiddenMetrics.has(m);
    input.addEventListener("change", () => {
      if (input.checked) state.hiddenMetrics.delete(m);
      else state.hiddenMetrics.add(m);
      state.chart.reset();
      loadHistory(state.selected);
    });
    label.append(input, ` ${m}`);
    box.appendChild(label);
  }
}

function shownMetrics(id) {
  if (!state.hiddenMetrics.size) return undefined; // all
  // A device that declares its metrics may be asked for those only.
  const declared = new Set((state.devices.get(id)?.config?.metrics || []).map((m) => m.name));
  return deviceMetrics(id).filter((m) => !state.hiddenMetrics.has(m) && (!declared.size || declared.has(m)));
}

let historySeq = 0;

async function loadHistory(id) {
  const seq = ++historySeq; // a slower, older answer (another range) is dropped
  const range = $("#range").value;
  let query;
  let seconds;
  if (range === "custom") {
    const r = customRange();
    $("#range-error").textContent = r ? "" : "Choose a start before the end.";
    if (!r) return;
    query = { start: r.start, end: r.end, interval: r.interval };
    seconds = r.seconds;
  } else {
    const [span, interval, size] = RANGES[range] || RANGES.live;
    const now = Date.now() / 1000;
    query = { start: now - span, end: now, interval };
    seconds = size;
  }
  const metric = shownMetrics(id);
  if (metric && !metric.length) {
    // every metric unticked: nothing to ask for
    state.chart.reset();
    $("#chart").dataset.range = range;
    return;
  }
  let history = null;
  try {
    history = await state.api.deviceData(id, { ...query, metric, aggregate: ["mean", "min", "max"] });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signedOut();
    if (range === "custom" && seq === historySeq) $("#range-error").textContent = err.message;
    else console.error(err);
    return;
  }
  if (history && state.selected === id && seq === historySeq) {
    state.chart.seed(history.series, seconds, range !== "live");
    $("#chart").dataset.range = range;
    renderMetricPicker();
    requestAnimationFrame(() => performance.mark(`chart:${range}`)); // once it is on screen
  }
}

// datetime-local wants local time without a zone: "YYYY-MM-DDTHH:MM"
function localInput(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

$("#range").addEventListener("change", () => {
  performance.mark("range-chosen");
  const custom = $("#range").value === "custom";
  $("#custom-range").hidden = !custom;
  if (custom && !$("#range-from").value) {
    const now = Date.now() / 1000;
    $("#range-from").value = localInput(now - 3600);
    $("#range-to").value = localInput(now);
  }
  if (!state.selected) return;
  state.chart.reset();
  loadHistory(state.selected);
});
$("#custom-range").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!state.selected) return;
  state.chart.reset();
  loadHistory(state.selected);
});
// Buckets coarser than the stored windows (5 min, 1 h) are not pushed: refetch them.
setInterval(() => {
  const range = $("#range").value;
  if (!state.selected || range === "custom") return;
  const [, , seconds] = RANGES[range] || RANGES.live;
  if (seconds > 60) loadHistory(state.selected);
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
  if (!page.items.length) list.appendChild(emptyNote("Nothing refused in the last 7 days."));
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

function alertFilters() {
  return {
    status: $("#alert-status").value || undefined,
    severity: $("#alert-severity").value,
    device_id: $("#alert-device").value || undefined,
  };
}

let alertsSeq = 0;
async function loadAlerts() {
  const seq = ++alertsSeq;
  const page = await guarded(() => state.api.alerts({ ...alertFilters(), limit: 100 }));
  if (!page || seq !== alertsSeq) return;
  state.alerts = new Map(page.items.map((a) => [a.alert_id, a]));
  renderAlerts();
}

for (const id of ["#alert-status", "#alert-device"]) $(id).addEventListener("change", loadAlerts);

// Live alerts arrive whatever the filters: the same filters apply to what is shown.
function alertShown(a, f) {
  return (
    (RANK[a.severity] ?? 0) >= (RANK[f.severity] ?? 0) &&
    (!f.status || a.status === f.status) &&
    (!f.device_id || a.device_id === f.device_id)
  );
}

function alertButton(a, label, cls, call) {
  const btn = document.createElement("button");
  btn.type = "button";
  btn.textContent = label;
  btn.className = cls;
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    const updated = await guarded(() => call(a.alert_id));
    if (updated) state.alerts.set(updated.alert_id, updated);
    renderAlerts();
  });
  return btn;
}

function renderAlerts() {
  const list = $("#alerts");
  list.replaceChildren();
  const f = alertFilters();
  const alerts = [...state.alerts.values()]
    .filter((a) => alertShown(a, f))
    .sort((a, b) => b.updated_at - a.updated_at)
    .slice(0, 200);
  if (!alerts.length) list.appendChild(emptyNote("No alerts."));
  for (const a of alerts) {
    const li = document.createElement("li");
    li.className = a.status;
    li.dataset.alertId = a.alert_id;
    li.dataset.status = a.status;
    li.dataset.deviceId = a.device_id;
    li.dataset.testid = "alert";
    li.innerHTML = `<span class="badge ${a.severity}"></span><span class="msg"><strong class="device"></strong>: <span class="text"></span></span><span class="status"></span>`;
    li.querySelector(".badge").textContent = a.severity;
    li.querySelector(".device").textContent = deviceName(a.device_id);
    li.querySelector(".text").textContent = `${a.message} (${when(a.started_at)})`;
    li.querySelector(".status").textContent = a.status;
    if (state.canWrite) {
      if (a.status === "active") li.appendChild(alertButton(a, "Acknowledge", "ack", (id) => state.api.ack(id)));
      if (a.status !== "cleared") li.appendChild(alertButton(a, "Clear", "clear", (id) => state.api.clear(id)));
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
