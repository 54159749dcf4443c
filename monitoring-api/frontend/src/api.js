// Thin client of the monitoring API (same origin); every call carries the user's token.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, { params, body } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v === undefined || v === null) continue;
      for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, item);
    }
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  static async signIn(email, password) {
    const data = await new Api(null).request("POST", "/monitoring/session", {
      body: { email, password },
    });
    return data.access_token;
  }

  devices() { return this.request("GET", "/monitoring/devices"); }
  // One page of the fleet table, sorted over every device: { items (with latest), total, … }.
  fleet(params) { return this.request("GET", "/monitoring/fleet", { params }); }
  stats(range = "5m") { return this.request("GET", "/monitoring/stats", { params: { range } }); }
  alerts(params) { return this.request("GET", "/monitoring/alerts", { params }); }
  ack(id) { return this.request("POST", `/monitoring/alerts/${encodeURIComponent(id)}/ack`); }
  clear(id) { return this.request("POST", `/monitoring/alerts/${encodeURIComponent(id)}/clear`); }
  deadletters(deviceId, limit = 20) {
    return this.request("GET", "/monitoring/deadletters", { params: { device_id: deviceId, limit } });
  }
  device(id) { return this.request("GET", `/monitoring/devices/${encodeURIComponent(id)}`); }
  // Relayed to device-management with this user's token (it validates and authorises).
  setConfig(id, config) {
    return this.request("PUT", `/monitoring/devices/${encodeURIComponent(id)}/config`, { body: config });
  }
  rotateCredentials(id) {
    return this.request("POST", `/monitoring/devices/${encodeURIComponent(id)}/credentials`);
  }
  subscriptions() { return this.request("GET", "/monitoring/subscriptions"); }
  subscription(id) { return this.request("GET", `/monitoring/subscriptions/${encodeURIComponent(id)}`); }
  subscribe(body) { return this.request("POST", "/monitoring/subscriptions", { body }); }
  unsubscribe(id) { return this.request("DELETE", `/monitoring/subscriptions/${encodeURIComponent(id)}`); }
  deliveries(id, limit = 20) {
    return this.request("GET", `/monitoring/subscriptions/${encodeURIComponent(id)}/deliveries`, {
      params: { limit },
    });
  }
  deviceData(id, params) {
    return this.request("GET", `/monitoring/data/${encodeURIComponent(id)}`, { params });
  }
}
