// A device's configuration editor (settings, metrics, rules), its desired and reported
// versions, and credential rotation. device-management validates: its refusal's details name
// the field (`body.config.rules.0.value`), and each is shown under the part it belongs to.
import { ApiError } from "./api.js";
import { $ } from "./dom.js";

const PARTS = ["settings", "metrics", "rules"];

// `body.config.rules.0.threshold.value` -> ["rules", "rules[0].threshold.value"]
function fieldOf(detailField) {
  const path = String(detailField || "").split(".").filter((p) => p !== "body");
  if (path[0] === "config") path.shift();
  const part = PARTS.includes(path[0]) ? path[0] : null;
  const where = path.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : `${i ? "." : ""}${p}`)).join("");
  return [part, where];
}

export class DeviceConfigEditor {
  // ctx: { api(), canWrite(), guarded(fn), updated(device) }
  constructor(ctx) {
    this.ctx = ctx;
    this.device = null;
    this.shownVersion = null; // the version the text areas were filled from
    this.dirty = false;
    $("#config-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.save();
    });
    $("#config-form").addEventListener("input", () => { this.dirty = true; });
    $("#rotate").addEventListener("click", () => this.askRotate());
    $("#rotate-confirm").addEventListener("click", () => this.rotate());
    $("#rotate-cancel").addEventListener("click", () => { $("#rotate-ask").hidden = true; });
    $("#new-token-done").addEventListener("click", () => this.forgetToken());
  }

  // Show ``device``; the text areas are refilled only for another device, or for a new
  // version when nothing is being edited (a periodic refresh must not undo someone's typing).
  show(device) {
    const other = !this.device || this.device.id !== device.id;
    this.device = device;
    if (other) {
      this.forgetToken();
      $("#rotate-ask").hidden = true;
      this.dirty = false;
    }
    if (other || (!this.dirty && device.config_version !== this.shownVersion)) this.fill(device);
    for (const el of document.querySelectorAll("#config-form textarea")) el.readOnly = !this.ctx.canWrite();
    const cs = device.config_status || {};
    const reported = cs.reported_version ?? "none";
    const sync = cs.in_sync ? "in sync" : "not applied yet";
    $("#device-config-version").textContent = `desired ${cs.desired_version ?? device.config_version ?? "–"} · reported ${reported} (${sync})`;
    $("#device-config-version").dataset.inSync = String(Boolean(cs.in_sync));
  }

  fill(device) {
    const config = device.config || {};
    $("#config-settings").value = JSON.stringify(config.settings || {}, null, 2);
    $("#config-metrics").value = JSON.stringify(config.metrics || [], null, 2);
    $("#config-rules").value = JSON.stringify(config.rules || [], null, 2);
    this.shownVersion = device.config_version;
    this.clearErrors();
  }

  clearErrors() {
    for (const el of document.querySelectorAll("#config-form .field-error")) el.textContent = "";
    for (const el of document.querySelectorAll("#config-form textarea")) el.removeAttribute("aria-invalid");
    $("#config-error").textContent = "";
    $("#config-saved").textContent = "";
  }

  // The message goes under the part's text area, which it describes (aria-describedby).
  fieldError(part, message) {
    const el = document.querySelector(`#config-form .field-error[data-field="${part}"]`);
    el.textContent = el.textContent ? `${el.textContent}; ${message}` : message;
    $(`#config-${part}`).setAttribute("aria-invalid", "true");
  }

  async save() {
    this.clearErrors();
    const config = {};
    let bad = false;
    for (const part of PARTS) {
      try {
        config[part] = JSON.parse($(`#config-${part}`).value || (part === "settings" ? "{}" : "[]"));
      } catch (err) {
        this.fieldError(part, `not valid JSON: ${err.message}`);
        bad = true;
      }
    }
    if (bad) return;
    const id = this.device.id;
    $("#config-save").disabled = true;
    try {
      const device = await this.ctx.api().setConfig(id, config);
      this.dirty = false;
      this.ctx.updated(device);
      this.fill(device);
      $("#config-saved").textContent = `Saved: version ${device.config_version}.`;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return this.ctx.guarded(() => Promise.reject(err));
      const details = err.body?.error?.details || [];
      const general = [];
      for (const d of details) {
        let [part, where] = fieldOf(d.field);
        // Checks of the whole config name the part in their message ("config.settings.a: …").
        const named = /config\.(settings|metrics|rules)\b/.exec(d.message) || /\b(metric|rule)s? (names|ids)\b/.exec(d.message);
        if (!part && named) part = named[1].startsWith("metric") ? "metrics" : named[1].startsWith("rule") ? "rules" : named[1];
        if (part) this.fieldError(part, `${where}: ${d.message}`);
        else general.push(`${where}: ${d.message}`);
      }
      $("#config-error").textContent = details.length && !general.length ? "" : [err.message, ...general].join(" — ");
    } finally {
      $("#config-save").disabled = false;
    }
  }

  askRotate() {
    $("#rotate-ask").hidden = false;
  }

  async rotate() {
    $("#rotate-ask").hidden = true;
    const id = this.device.id;
    const creds = await this.ctx.guarded(() => this.ctx.api().rotateCredentials(id));
    if (!creds || this.device.id !== id) return;
    $("#new-token-value").textContent = creds.token;
    $("#new-token").hidden = false;
    $("#new-token-note").textContent = creds.provisioned
      ? "The previous token no longer works."
      : "The previous token no longer works; a broker is unreachable, so MQTT/AMQP accept the new one once it is back.";
    const device = await this.ctx.guarded(() => this.ctx.api().device(id));
    if (device) this.ctx.updated(device);
  }

  // The token is not kept anywhere: once dismissed (or another device chosen) it is gone.
  forgetToken() {
    $("#new-token-value").textContent = "";
    $("#new-token").hidden = true;
  }
}
