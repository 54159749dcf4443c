"""What device identity on MQTT costs: bridge throughput with authentication off and on, and the
price of credential changes (provisioning 10,000 devices on Mosquitto's dynamic security).

1. **Ingest, authentication off vs on** (bench_ingest's harness, one run): single-reading QoS 1
   messages from ``PUBLISHERS`` paho processes each connected as one device publishing its own
   topic, live (publishers alongside the bridge) and as a backlog drain (queued while the
   bridge was away: the bridge's ceiling). Arms, run in turn A,B,C,A,B,C: *before* (only with
   ``IOT_BENCH_BEFORE_TREE`` = a checkout of the code from before device identity, with its
   own ``.venv``: that tree's bridge, anonymous broker), *off* (this bridge, a Mosquitto that
   takes anonymous clients) and *on* (the platform's Mosquitto: dynamic-security plugin,
   anonymous refused, the device role and acl_file patterns of ``iot_common.dynsec``, each
   publisher with its device's credential, the bridge with its own account). The target:
   *on* within 10 % of *before* (the issue's "today's").
2. **Provisioning 10,000 devices**: ``createClient`` commands on the plugin's control topic
   (what device-management's provisioner sends, in batches of 500), on a fresh broker: seconds
   for all of them (each change rewrites the plugin's JSON file), broker RSS before and after,
   and the price of one more change (a password rotation) once 10,000 exist.

Run: ``uv run benchmarks mqtt_auth`` (``--quick``: fewer messages and 2,000 devices), or one
part: ``python -m benchmarks.bench_mqtt_auth [--quick] [--rounds=N] ingest|provisioning``.
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

#: A checkout of the code from before device identity (its own ``.venv``, ``uv sync`` done):
#: its bridge is the *before* arm, on an anonymous broker, in the same run.
BEFORE_TREE_ENV = "IOT_BENCH_BEFORE_TREE"


def _before_python() -> str | None:
    tree = os.environ.get(BEFORE_TREE_ENV)
    if not tree:
        return None
    python = Path(tree) / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{BEFORE_TREE_ENV}={tree}: no {python} (run uv sync there)")
    return str(python)


def _median(values: list[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def _ingest(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """Each mode runs the arms in turn, A,B,(C),A,B,(C): a change in the shared machine's load
    during the run hits every arm alike."""
    log = Path(tempfile.mkdtemp(prefix="bench-mqtt-auth-")) / "bridge.log"
    messages = 30_000 if quick else 120_000
    rounds = rounds or (1 if quick else 2)
    before_python = _before_python()
    broker = TansuBroker(port=free_port())
    broker.start()
    ns = f"bench{secrets.token_hex(4)}"
    off = Mosquitto.for_benchmarks(accounts=None)
    on = Mosquitto.for_benchmarks(accounts=Accounts(prefixes=("+/",), share_group="+"))
    # arm -> (broker, python of the bridge)
    arms: dict[str, tuple[Mosquitto, str | None]] = {}
    if before_python:
        arms["before"] = (off, before_python)
    arms["off"] = (off, None)
    arms["on"] = (on, None)
    out: dict[str, Any] = {"arms": list(arms), "rounds": rounds, "messages": messages}
    try:
        devices = _make_devices(ns, 10)
        off.start()
        on.start()
        on.add_devices(devices)
        for mode, backlog in (("live", False), ("backlog", True)):
            runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
            for _ in range(rounds):
                for label, (mosq, python) in arms.items():
                    r = _mqtt_phase(
                        broker.bootstrap,
                        mosq,
                        ns,
                        devices,
                        messages=messages,
                        batch=1,
                        naive=False,
                        backlog=backlog,
                        log=log,
                        as_devices=True,
                        bridge_python=python,
                    )
                    r["load_average"] = round(os.getloadavg()[0], 1)
                    print(f"  {mode} {label}: {r}", file=sys.stderr)
                    assert r["all_delivered"], r
                    runs[label].append(r)
            res: dict[str, Any] = {}
            for label, rs in runs.items():
                res[label] = {
                    "messages_per_s": [r["messages_per_s"] for r in rs],
                    "messages_per_bridge_cpu_s": [r["messages_per_bridge_cpu_s"] for r in rs],
                    "publish_rate": [r["publish_rate"] for r in rs],
                    "load_average": [r["load_average"] for r in rs],
                    "median_messages_per_s": _median([r["messages_per_s"] for r in rs]),
                }
            med = {k: v["median_messages_per_s"] for k, v in res.items()}
            res["ratio_on_vs_off"] = round(med["on"] / max(med["off"], 1), 3)
            if "before" in med:
                res["ratio_on_vs_before"] = round(med["on"] / max(med["before"], 1), 3)
            out[mode] = res
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


def _ingest_lines(ingest: dict[str, Any]) -> list[str]:
    lines = []
    for mode, what in (("live", "publishers alongside"), ("backlog", "backlog drain")):
        res = ingest[mode]
        runs = "; ".join(
            f"{a} {res[a]['messages_per_s']} (per bridge CPU-s "
            f"{res[a]['messages_per_bridge_cpu_s']})"
            for a in ingest["arms"]
        )
        vs_before = (
            f"on/before **{res['ratio_on_vs_before']}**, " if "ratio_on_vs_before" in res else ""
        )
        lines.append(
            f"- ingest, single-reading QoS 1, {what}: median msgs/s "
            + ", ".join(f"{a} {res[a]['median_messages_per_s']:,}" for a in ingest["arms"])
            + f": {vs_before}on/off **{res['ratio_on_vs_off']}** (target ≥ 0.9; runs: {runs})"
        )
    return lines


def _provisioning_line(prov: dict[str, Any]) -> str:
    return (
        f"- provisioning {prov['devices']:,} devices through the control topic: "
        f"**{prov['seconds']} s** ({prov['per_device_ms']} ms each), broker RSS "
        f"{prov['broker_rss_mb_before']} → {prov['broker_rss_mb_after']} MB, plugin file "
        f"{prov['plugin_file_mb']} MB; one more credential change then "
        f"{prov['one_more_change_ms']} ms"
    )


def run(
    results_dir: Path,
    *,
    quick: bool = False,
    parts: tuple[str, ...] = ("ingest", "provisioning"),
    rounds: int | None = None,
) -> dict[str, Any]:
    results_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    out: dict[str, Any] = {}
    summary: list[str] = []
    if "ingest" in parts:
        out["ingest"] = _ingest(quick, rounds)
        summary += _ingest_lines(out["ingest"])
    if "provisioning" in parts:
        out["provisioning"] = _provisioning(quick)
        summary.append(_provisioning_line(out["provisioning"]))
    out["load_average"] = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    out["summary"] = summary
    return out


def main() -> None:
    """``python -m benchmarks.bench_mqtt_auth [--quick] [--rounds=N] [ingest|provisioning]``."""
    import json

    args = sys.argv[1:]
    parts = tuple(a for a in args if a in ("ingest", "provisioning")) or ("ingest", "provisioning")
    rounds = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--rounds=")), None)
    out = run(Path("benchmarks/results"), quick="--quick" in args, parts=parts, rounds=rounds)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
