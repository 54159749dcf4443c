"""Step 4b of `make containers`: the smoke flow, through the gateway only (and MQTT).

Sign in, register a device with an alert rule, send readings over MQTT and HTTP, see the windows
through /monitoring/data, see the alert raised, receive a Socket.IO push, load /dashboard in
headless Chromium. Prints one line per step and exits non-zero at the first that fails.

    uv run --no-sync python scripts/containers/smoke.py WORK_DIR
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import socketio


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def step(name: str, detail: str = "") -> None:
    print(f"smoke: {name}: ok {detail}".rstrip(), flush=True)


async def poll(what: str, fn: Any, within: float = 90.0) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise SystemExit(f"smoke: {what}: FAILED (nothing within {within:.0f} s; last {last!r})")


async def main(work: Path) -> None:
    ports = json.loads((work / "ports.json").read_text())
    secrets = env_file(work / ".env")
    gw = f"http://127.0.0.1:{ports['gateway:8080']}"
    mqtt_port = ports["mosquitto:1883"]
    async with httpx.AsyncClient(base_url=gw, timeout=20.0) as http:
        r = await http.post(
            "/users/auth",
            json={
                "email": secrets.get("IOT_ADMIN_EMAIL", "admin@example.com"),
                "password": secrets["IOT_ADMIN_PASSWORD"],
            },
        )
        r.raise_for_status()
        token = r.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        step("sign in")

        config = {
            "metrics": [{"name": "temperature", "unit": "C"}],
            "rules": [
                {
                    "type": "threshold",
                    "id": "too_hot",
                    "metric": "temperature",
                    "op": "above",
                    "value": 29,
                    "severity": "warning",
                }
            ],
        }
        r = await http.post(
            "/devices/",
            json={"name": f"smoke-{uuid.uuid4().hex[:8]}", "type": "thermo", "config": config},
            headers=auth,
        )
        r.raise_for_status()
        device_id = str(r.json()["id"])
        r = await http.post(f"/devices/{device_id}/credentials", headers=auth)
        r.raise_for_status()
        device_token = r.json()["token"]
        step("register a device", device_id)

        pushes: list[tuple[str, dict[str, Any]]] = []
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("window", lambda data: pushes.append(("window", data)))
        sio.on("alert", lambda data: pushes.append(("alert", data)))
        await sio.connect(
            gw, socketio_path="/ws/monitoring", auth={"token": token}, transports=["websocket"]
        )
        ack = await sio.call("join", {"device_id": device_id}, timeout=10)
        if not (isinstance(ack, dict) and ack.get("ok")):
            raise SystemExit(f"smoke: Socket.IO join: FAILED {ack!r}")
        step("Socket.IO connected and joined")

        # 60 s of event time, one reading a second, above the rule's threshold: the first half
        # over MQTT (QoS 1, the device's own account), the second over HTTP.
        t0 = time.time() - 60
        readings = [
            {"ts": t0 + i, "metrics": {"temperature": 30.0 + i % 5}, "seq": i} for i in range(61)
        ]
        # The broker binds each device account to its client id (= the device id).
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        client.username_pw_set(device_id, device_token)
        connected: list[Any] = []
        client.on_connect = lambda c, u, f, rc, p: connected.append(rc)
        client.connect("127.0.0.1", mqtt_port)
        client.loop_start()
        await poll("MQTT connect", lambda: asyncio.sleep(0, connected), 20)
        if connected[0] != 0:
            raise SystemExit(f"smoke: MQTT connect: FAILED ({connected[0]})")
        info = client.publish(f"devices/{device_id}/telemetry", json.dumps(readings[:30]), qos=1)
        info.wait_for_publish(20)
        client.loop_stop()
        client.disconnect()
        step("readings over MQTT", "30 (QoS 1)")
        ingest = {"Authorization": f"Bearer {device_token}"}
        r = await http.post(f"/ingest/{device_id}", json=readings[30:], headers=ingest)
        if r.status_code >= 300:
            raise SystemExit(f"smoke: readings over HTTP: FAILED {r.status_code} {r.text[:300]}")
        step("readings over HTTP", f"31 ({r.status_code})")

        async def windows() -> list[Any]:
            r = await http.get(
                f"/monitoring/data/{device_id}",
                params={"interval": "10s", "start": int(t0) - 20},
                headers=auth,
            )
            if r.status_code != 200:
                return []
            body = r.json()
            points = body.get("points") or body.get("series") or []
            return points if isinstance(points, list) else [body]

        got = await poll("windows through /monitoring/data", windows)
        step("windows through /monitoring/data", f"{len(got)} points")

        async def alerts() -> list[Any]:
            r = await http.get("/monitoring/alerts", params={"device_id": device_id}, headers=auth)
            return r.json().get("items", []) if r.status_code == 200 else []

        raised = await poll("alert raised", alerts)
        step("alert raised", str(raised[0].get("rule_id", "")))
        await poll("Socket.IO push", lambda: asyncio.sleep(0, pushes), 60)
        step("Socket.IO push", f"{len(pushes)} ({', '.join(sorted({k for k, _ in pushes}))})")
        await sio.disconnect()


def _headless_chromium(work: Path, *args: str) -> str:
    """Headless Chromium on the page (8 s of virtual time for its scripts); its stdout."""
    return subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={work / 'chromium'}",
            "--virtual-time-budget=8000",
            *args,
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    ).stdout


def dashboard(work: Path) -> None:
    gw = f"http://127.0.0.1:{json.loads((work / 'ports.json').read_text())['gateway:8080']}"
    shot = work / "dashboard.png"
    dom = _headless_chromium(work, "--dump-dom", f"{gw}/dashboard")
    _headless_chromium(work, "--window-size=1280,900", f"--screenshot={shot}", f"{gw}/dashboard")
    if 'data-testid="chart"' not in dom or "<script" not in dom:
        raise SystemExit(f"smoke: /dashboard in Chromium: FAILED (DOM: {dom[:300]!r})")
    step("/dashboard in headless Chromium", f"screenshot {shot}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
    dashboard(Path(sys.argv[1]))
