// Webhook subscriptions: create (the signing secret is shown once), delete, and each one's
// deliveries with their status (pending, delivered, failed), attempts and last error.
import { ApiError } from "./api.js";
import { $, emptyNote } from "./dom.js";

const REFRESH_MS = 5_000;

export class Subscriptions {
  // ctx: { api(), canWrite(), deviceName(id), guarded(fn) }
  constructor(ctx) {
    this.ctx = ctx;
    this.open = new Set(); // subscriptions whose deliveries are shown
    this.items = [];
    this.deliveries = new Map(); // subscription id -> its latest deliveries (open ones only)
    $("#sub-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.create();
    });
    setInterval(() => { if (this.open.size && !$("#app").hidden) this.load(); }, REFRESH_MS);
  }

  async load() {
    const seq = (this.seq = (this.seq || 0) + 1); // an older, slower answer is dropped
    const listed = await this.ctx.guarded(() => this.ctx.api().subscriptions());
    if (!listed) return;
    // Each one with its recent deliveries counted by status (a user has a handful).
    const items = await Promise.all(
      listed.map(async (s) => (await this.ctx.guarded(() => this.ctx.api().subscription(s.id))) || s),
    );
    const deliveries = new Map();
    await Promise.all(
      [...this.open].map(async (id) => {
        deliveries.set(id, await this.ctx.guarded(() => this.ctx.api().deliveries(id)));
      }),
    );
    if (seq !== this.seq) return;
    this.items = items;
    this.deliveries = deliveries;
    this.render();
  }

  async create() {
    const error = $("#sub-error");
    error.textContent = "";
    $("#sub-secret").hidden = true;
    const device = $("#sub-device").value;
    const body = { url: $("#sub-url").value.trim(), min_severity: $("#sub-severity").value };
    if (device) body.device_ids = [device];
    try {
      const created = await this.ctx.api().subscribe(body);
      $("#sub-secret-value").textContent = created.secret;
      $("#sub-secret").hidden = false;
      $("#sub-url").value = "";
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return this.ctx.guarded(() => Promise.reject(err));
      const details = (err.body?.error?.details || []).map((d) => `${d.field.replace(/^body\./, "")}: ${d.message}`);
      error.textContent = [err.message, ...details].join(" — ");
      return;
    }
    await this.load();
  }

  async remove(id) {
    const done = await this.ctx.guarded(async () => (await this.ctx.api().unsubscribe(id), true));
    if (!done) return;
    this.open.delete(id);
    await this.load();
  }

  render() {
    const deliveries = this.deliveries;
    const list = $("#subscriptions");
    list.replaceChildren();
    if (!this.items.length) list.appendChild(emptyNote("No webhook subscriptions."));
    for (const s of this.items) {
      const li = document.createElement("li");
      li.dataset.testid = "subscription";
      li.dataset.subscriptionId = s.id;
      li.innerHTML = `<div class="sub-line"><code class="url"></code><span class="scope muted"></span><span class="counts"></span></div>`;
      li.querySelector(".url").textContent = s.url;
      const devices = s.device_ids ? s.device_ids.map((d) => this.ctx.deviceName(d)).join(", ") : "all devices";
      li.querySelector(".scope").textContent = ` ${s.min_severity} and above · ${devices} `;
      const counts = s.deliveries || {};
      li.querySelector(".counts").textContent = ["delivered", "pending", "failed"]
        .filter((k) => counts[k])
        .map((k) => `${counts[k]} ${k}`)
        .join(", ");
      const line = li.querySelector(".sub-line");
      const toggle = document.createElement("button");
      toggle.type = "button";
      toggle.className = "deliveries-toggle";
      toggle.textContent = this.open.has(s.id) ? "Hide deliveries" : "Deliveries";
      toggle.addEventListener("click", () => {
        if (this.open.has(s.id)) this.open.delete(s.id);
        else this.open.add(s.id);
        this.load();
      });
      line.appendChild(toggle);
      if (this.ctx.canWrite()) {
        const del = document.createElement("button");
        del.type = "button";
        del.className = "delete";
        del.textContent = "Delete";
        del.addEventListener("click", () => { del.disabled = true; this.remove(s.id); });
        line.appendChild(del);
      }
      if (this.open.has(s.id)) li.appendChild(this.renderDeliveries(deliveries.get(s.id)));
      list.appendChild(li);
    }
  }

  renderDeliveries(items) {
    const ul = document.createElement("ul");
    ul.className = "deliveries";
    ul.dataset.testid = "deliveries";
    if (!items || !items.length) {
      ul.appendChild(emptyNote(items ? "No deliveries yet." : "Deliveries could not be loaded."));
      return ul;
    }
    for (const d of items) {
      const li = document.createElement("li");
      li.dataset.testid = "delivery";
      li.dataset.status = d.status;
      li.innerHTML = `<span class="badge"></span><span class="what"></span><span class="muted detail"></span>`;
      li.querySelector(".badge").textContent = d.status;
      li.querySelector(".badge").classList.add(`delivery-${d.status}`);
      const alert = d.payload?.alert || {};
      li.querySelector(".what").textContent =
        ` ${d.payload?.type || "alert"} · ${alert.device_id ? this.ctx.deviceName(alert.device_id) : ""}: ${alert.message || ""} `;
      const parts = [`${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`, new Date(d.updated_at * 1000).toLocaleTimeString()];
      if (d.status === "pending") parts.push(`next ${new Date(d.next_attempt_at * 1000).toLocaleTimeString()}`);
      if (d.last_error) parts.push(d.last_error);
      li.querySelector(".detail").textContent = parts.join(" · ");
      ul.appendChild(li);
    }
    return ul;
  }
}
