"""What device identity on MQTT costs: bridge throughput with authentication off and on, and the
price of credential changes (provisioning 10,000 devices on Mosquitto's dynamic security).

1. **Ingest, authentication off vs on** (bench_ingest's harness, one run): the same bridge
   process, single-reading QoS 1 messages, live, from ``PUBLISHERS`` paho processes each
   connected as one device publishing its own topic. *Off* (baseline): a Mosquitto that takes
   anonymous clients. *On*: the platform's Mosquitto (dynamic-security plugin, anonymous
   refused, the device role and acl_file patterns of ``iot_common.dynsec``), each publisher
   with its device's credential, the bridge with its own account. The target: *on* within
   10 % of *off*.
2. **Provisioning 10,000 devices**: ``createClient`` commands on the plugin's control topic
   (what device-management's provisioner sends, in batches of 500), on a fresh broker: seconds
   for all of them (each change rewrites the plugin's JSON file), broker RSS before and after,
   and the price of one more change (a password rotation) once 10,000 exist.

Run: ``uv run benchmarks mqtt_auth`` (``--quick``: fewer messages and 2,000 devices).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.bench_ingest import REDIS_URL, _make_devices, _mqtt_phase
from iot_common import dynsec
from iotctl.broker import TansuBroker, free_port
from iotctl.mosquitto import Accounts, Mosquitto
from iotctl.testinfra import drop_redis_namespace


def _ingest(quick: bool) -> dict[str, Any]:
    log = Path(tempfile.mkdtemp(prefix="bench-mqtt-auth-")) / "bridge.log"
    messages = 30_000 if quick else 120_000
    broker = TansuBroker(port=free_port())
    broker.start()
    ns = f"bench{secrets.token_hex(4)}"
    off = Mosquitto.for_benchmarks(accounts=None)
    on = Mosquitto.for_benchmarks(accounts=Accounts(prefixes=("+/",), share_group="+"))
    out: dict[str, Any] = {}
    try:
        devices = _make_devices(ns, 10)
        off.start()
        on.start()
        on.add_devices(devices)
        # Alternate, twice each, so a change in the shared machine's load hits both.
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for label in ("off", "on", "on", "off"):
            mosq = off if label == "off" else on
            r = _mqtt_phase(
                broker.bootstrap,
                mosq,
                ns,
                devices,
                messages=messages,
                batch=1,
                naive=False,
                backlog=False,
                log=log,
                as_devices=True,
            )
            print(f"  auth {label}: {r}", file=sys.stderr)
            assert r["all_delivered"], r
            runs[label].append(r)
        for label, rs in runs.items():
            out[label] = {
                "messages_per_s": [r["messages_per_s"] for r in rs],
                "messages_per_bridge_cpu_s": [r["messages_per_bridge_cpu_s"] for r in rs],
                "publish_rate": [r["publish_rate"] for r in rs],
            }
        best = {k: max(v["messages_per_s"]) for k, v in out.items()}
        out["ratio_on_vs_off"] = round(best["on"] / max(best["off"], 1), 3)
    finally:
        off.cleanup()
        on.cleanup()
        broker.stop()
        drop_redis_namespace(REDIS_URL, ns)
    return out


def _provisioning(quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 10_000
    mosq = Mosquitto(persistence=False)
    mosq.start()
    try:
        time.sleep(0.5)
        rss0 = mosq.rss_mb()
        devices = [(str(uuid.uuid4()), secrets.token_urlsafe(32)) for _ in range(n)]
        t0 = time.monotonic()
        mosq.add_devices(devices)
        seconds = time.monotonic() - t0
        rss1 = mosq.rss_mb()
        file_mb = mosq.dynsec_path.stat().st_size / 2**20
        t1 = time.monotonic()
        mosq.control([dynsec.set_password_command(devices[0][0], secrets.token_urlsafe(32))])
        one_change = time.monotonic() - t1
    finally:
        mosq.cleanup()
    return {
        "devices": n,
        "seconds": round(seconds, 2),
        "per_device_ms": round(seconds / n * 1000, 2),
        "broker_rss_mb_before": round(rss0, 1),
        "broker_rss_mb_after": round(rss1, 1),
        "plugin_file_mb": round(file_mb, 1),
        "one_more_change_ms": round(one_change * 1000, 1),
    }


def run(results_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    results_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    ingest = _ingest(quick)
    prov = _provisioning(quick)
    on, off = ingest["on"], ingest["off"]
    return {
        "ingest": ingest,
        "provisioning": prov,
        "load_average": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        "summary": [
            "- ingest, single-reading QoS 1, live: authentication on "
            f"**{max(on['messages_per_s']):,}"
            f" msgs/s** vs off (baseline, same run) {max(off['messages_per_s']):,} msgs/s: "
            f"**ratio {ingest['ratio_on_vs_off']}** (runs: on {on['messages_per_s']}, "
            f"off {off['messages_per_s']}; target ≥ 0.9)",
            f"- provisioning {prov['devices']:,} devices through the control topic: "
            f"**{prov['seconds']} s** ({prov['per_device_ms']} ms each), broker RSS "
            f"{prov['broker_rss_mb_before']} → {prov['broker_rss_mb_after']} MB, plugin file "
            f"{prov['plugin_file_mb']} MB; one more credential change then "
            f"{prov['one_more_change_ms']} ms",
        ],
    }
