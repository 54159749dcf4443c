"""End to end: simulator → MQTT → ingest-bridge → Kafka → stream-agents → store and Socket.IO.

Every component runs on this machine as its own process (``benchmarks.e2e_stack``): Tansu,
a private Mosquitto, signing, device-management, the bridge, the agents, the monitoring API,
plus the shared PostgreSQL, Redis and RabbitMQ. The simulator registers its devices through
device-management (with alert rules), then publishes the ``load`` fleet (10 metrics per reading,
so one reading = 10 data points) over MQTT QoS 1, ``BATCH`` readings per message, with a small
rate of every fault kind. Meanwhile probes measure:

* throughput: the agents' counters (readings processed, raw samples written) sampled each
  second; *sustained* = over the publishing period, after a short warm-up;
* latency to queryable: a client polls ``GET /monitoring/data/{id}?interval=raw`` for a few
  probe devices, each again 0.1 s after its answer; per new sample, ``seen − device ts``.
  Reported both from the device timestamp (includes waiting in the device's batch) and from
  publishing (the last reading of each batch, whose timestamp is when its message was sent);
* latency of live pushes: a Socket.IO client joined to the probe devices; for open-window
  updates ``received − newest reading ts`` in the window, for closed windows
  ``received − window end``;
* CPU per component (psutil, summed over each component's processes);
* the loss check (``benchmarks.e2e_check``) against the simulator's ledger once the pipeline
  has drained: every valid reading stored exactly once with its values, every fault accounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml

from benchmarks.e2e_check import CheckResult, run_check
from benchmarks.e2e_stack import ADMIN_EMAIL, ADMIN_PASSWORD, E2EStack
from iotctl.testinfra import percentiles
from simulator.fleet import Fleet
from simulator.publisher import Device
from simulator.registry import register_devices, save_devices

FLEET_DIR = Path(__file__).resolve().parents[3] / "simulator" / "fleets"
PROBE_DEVICES = 5
BATCH = 10


@dataclass
class Scenario:
    rate: float  # readings/s
    duration: float
    batch: int = BATCH
    devices: int = 200
    faults: dict[str, float] = field(
        default_factory=lambda: {
            "out_of_order": 0.0005,
            "duplicate": 0.0005,
            "late": 0.0002,
            "late_seconds": 3600,
            "malformed": 0.0002,
            "unknown_device": 0.0002,
        }
    )
    probes: bool = True


def load_fleet_dict(devices: int, faults: dict[str, float]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((FLEET_DIR / "load.yaml").read_text())
    data["device_types"][0]["count"] = devices
    data["faults"] = faults
    return data


# --------------------------------------------------------------------------- probes


@dataclass
class Probes:
    """Latency probes and samplers, run in a thread of their own with their own event loop."""

    stack: E2EStack
    probe_ids: list[str]
    metric: str
    batch: int
    sim_pid: int | None = None
    query_lat: list[tuple[float, float, bool]] = field(default_factory=list)  # (seen, lat, last)
    query_time: list[float] = field(default_factory=list)  # API answer times
    push_open: list[tuple[int, float]] = field(default_factory=list)  # (window size, latency)
    push_final: list[tuple[int, float]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    async def _main(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            r = await client.post(
                f"{self.stack.url('signing')}/users/auth",
                json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            )
            r.raise_for_status()
            token = r.json()["access_token"]
            tasks = [asyncio.create_task(self._sampler(client))]
            if self.probe_ids:
                tasks.append(asyncio.create_task(self._poll(client, token)))
                tasks.append(asyncio.create_task(self._socketio(token)))
            while not self._stop.is_set():  # noqa: ASYNC110 - stopped from another thread
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _poll(self, client: httpx.AsyncClient, token: str) -> None:
        """One polling loop per probe device, each querying again 0.1 s after its answer."""
        headers = {"Authorization": f"Bearer {token}"}
        await asyncio.gather(*(self._poll_one(client, headers, d) for d in self.probe_ids))

    async def _poll_one(
        self, client: httpx.AsyncClient, headers: dict[str, str], device: str
    ) -> None:
        api = self.stack.url("monitoring-api")
        cursor = time.time() - 5
        seen: set[int] = set()
        while True:
            try:
                sent = time.time()
                r = await client.get(
                    f"{api}/monitoring/data/{device}",
                    params={
                        "interval": "raw",
                        "metric": self.metric,
                        "start": f"{cursor:.6f}",
                        "end": f"{time.time() + 60:.6f}",
                        "limit": 5000,
                    },
                    headers=headers,
                )
                # A sample in the answer was queryable by the time the answer came back.
                now = time.time()
                self.query_time.append(now - sent)
                if r.status_code != 200:
                    self.errors.append(f"query {r.status_code}: {r.text[:200]}")
                else:
                    for smp in r.json()["samples"]:
                        seq = smp.get("seq")
                        if seq is None or seq in seen:
                            continue
                        seen.add(seq)
                        last = seq % self.batch == self.batch - 1
                        self.query_lat.append((now, now - smp["ts"], last))
                        # Keep the range a little open for out-of-order readings.
                        cursor = max(cursor, smp["ts"] - 2.0)
            except httpx.HTTPError as exc:
                self.errors.append(f"query: {exc}")
            await asyncio.sleep(0.1)

    async def _socketio(self, token: str) -> None:
        import socketio

        sio = socketio.AsyncClient(reconnection=True)

        @sio.on("window")  # type: ignore[untyped-decorator]
        async def on_window(data: dict[str, Any]) -> None:
            now = time.time()
            if data.get("final"):
                end = data["window_start"] + data["window_seconds"]
                self.push_final.append((data["window_seconds"], now - end))
            else:
                self.push_open.append((data["window_seconds"], now - data["last_ts"]))

        try:
            await sio.connect(
                self.stack.url("monitoring-api"),
                socketio_path="/ws/monitoring",
                auth={"token": token},
                transports=["websocket"],
            )
            for device in self.probe_ids:
                ack = await sio.call("join", {"device_id": device}, timeout=10)
                if not (isinstance(ack, dict) and ack.get("ok")):
                    self.errors.append(f"join {device}: {ack}")
            await sio.wait()  # until cancelled at the end of the run
        finally:
            with contextlib.suppress(Exception):
                await sio.disconnect()

    async def _sampler(self, client: httpx.AsyncClient) -> None:
        procs = self.stack.processes()
        prev: dict[int, float] = {}

        def cpu_of(ps: list[psutil.Process]) -> float:
            total = 0.0
            for p in ps:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
                except psutil.Error:
                    total += prev.get(p.pid, 0.0)
            return total

        while True:
            now = time.time()
            row: dict[str, Any] = {"t": now}
            try:
                h = (await client.get(f"{self.stack.url('stream-agents')}/health")).json()
                row["agents"] = h.get("counts", {})
            except (httpx.HTTPError, ValueError):
                row["agents"] = {}
            cpu = {name: cpu_of(ps) for name, ps in procs.items()}
            if self.sim_pid is not None:
                try:
                    sp = psutil.Process(self.sim_pid)
                    cpu["simulator"] = cpu_of([sp, *sp.children(recursive=True)])
                except psutil.Error:
                    pass
            cpu["postgresql (shared)"] = cpu_of(
                [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
            )
            row["cpu"] = cpu
            row["machine_cpu"] = psutil.cpu_times()._asdict()
            self.series.append(row)
            await asyncio.sleep(1.0)


# --------------------------------------------------------------------------- one run


def _by_size(pushes: list[tuple[int, float]]) -> dict[str, Any]:
    """Percentiles over all pushes, and per window size (``"10s"``, ``"60s"``)."""
    out: dict[str, Any] = percentiles([lat for _, lat in pushes], digits=3)
    for size in sorted({s for s, _ in pushes}):
        out[f"{size}s"] = percentiles([lat for s, lat in pushes if s == size], digits=3)
    return out


def _rates(series: list[dict[str, Any]], key: str, t0: float, t1: float) -> float:
    pts = [(r["t"], r["agents"].get(key)) for r in series if r["agents"].get(key) is not None]
    pts = [(t, v) for t, v in pts if t0 <= t <= t1]
    if len(pts) < 2:
        return 0.0
    return float((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]))


def _cpu(series: list[dict[str, Any]], t0: float, t1: float) -> dict[str, float]:
    rows = [r for r in series if t0 <= r["t"] <= t1]
    if len(rows) < 2:
        return {}
    a, b = rows[0], rows[-1]
    dt = b["t"] - a["t"]
    out = {
        name: round(100 * (b["cpu"][name] - a["cpu"].get(name, 0.0)) / dt, 1)
        for name in b["cpu"]
        if name in a["cpu"]
    }
    busy = [
        sum(v for k, v in r["machine_cpu"].items() if k not in ("idle", "iowait")) for r in (a, b)
    ]
    out["machine (all processes)"] = round(100 * (busy[1] - busy[0]) / dt, 1)
    return out


def run_pipeline(
    stack: E2EStack,
    scenario: Scenario,
    workdir: Path,
    *,
    drain_s: float = 120.0,
    log: Any = print,
) -> dict[str, Any]:
    """Register, publish, probe and check one scenario against a running stack."""
    fleet_dict = load_fleet_dict(scenario.devices, scenario.faults)
    fleet = Fleet.model_validate(fleet_dict)
    fleet_path = workdir / "fleet.yaml"
    fleet_path.write_text(yaml.safe_dump(fleet_dict))
    t_reg = time.monotonic()
    devices: list[Device] = asyncio.run(
        register_devices(
            fleet,
            signing_url=stack.url("signing"),
            device_management_url=stack.url("device-management"),
            email=ADMIN_EMAIL,
            password=ADMIN_PASSWORD,
            tag=stack.run_id,
        )
    )
    log(f"registered {len(devices)} devices in {time.monotonic() - t_reg:.1f} s")
    devices_file = workdir / "devices.json"
    save_devices(devices_file, fleet, devices)
    ledger_dir = workdir / "ledger"
    summary_path = workdir / "simulator.json"
    probes = Probes(
        stack,
        [d.id for d in devices[:PROBE_DEVICES]] if scenario.probes else [],
        metric=fleet.device_types[0].metrics[0].name,
        batch=scenario.batch,
    )
    probes.start()
    time.sleep(2)  # a baseline sample before publishing
    cmd = [
        sys.executable,
        "-m",
        "simulator",
        "run",
        "--config",
        str(fleet_path),
        "--rate",
        f"{scenario.rate:g}",
        "--duration",
        f"{scenario.duration:g}",
        "--batch",
        str(scenario.batch),
        "--transport",
        "mqtt",
        "--reuse-devices",
        "--devices-file",
        str(devices_file),
        "--ledger",
        str(ledger_dir),
        "--summary-json",
        str(summary_path),
        "--run-id",
        stack.run_id,
        "--no-live",
    ]
    env = {**stack.env, "IOT_LOG_LEVEL": "WARNING"}
    t_pub0 = time.time()
    sim = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    probes.sim_pid = sim.pid
    out, _ = sim.communicate(timeout=scenario.duration + 300)
    t_pub1 = time.time()
    if sim.returncode not in (0, 1) or not summary_path.exists():
        probes.stop()
        raise RuntimeError(
            f"simulator failed ({sim.returncode}):\n{out.decode(errors='replace')[-3000:]}"
        )
    sim_summary = json.loads(summary_path.read_text())
    log(
        f"published {sim_summary['readings']:,} readings "
        f"({sim_summary['achieved_rate']:,.0f}/s), failed {sim_summary['failed']}"
    )
    stack.check_alive()
    # Drain: the loss check waits until the store has everything (or stops moving).
    t_drain = time.monotonic()
    result: CheckResult = asyncio.run(
        run_check(
            ledger_dir,
            store_url=stack.monitoring_store_url,
            bootstrap=str(stack.kafka_bootstrap),
            topic_prefix=stack.topic_prefix,
            wait_s=drain_s,
        )
    )
    check_s = time.monotonic() - t_drain
    time.sleep(1.5)
    probes.stop()
    log(f"loss check: {'passed' if result.ok else 'FAILED'} ({check_s:.1f} s, {result.timings})")

    # The publishers' common start (after their processes started and connected).
    manifest = json.loads((ledger_dir / "manifest.json").read_text())
    t_start = float(manifest.get("start", t_pub0))
    warm = min(10.0, scenario.duration * 0.2)
    t0, t1 = t_start + warm, t_start + max(scenario.duration, sim_summary["publish_seconds"])
    lat_all = [lat for seen, lat, _ in probes.query_lat if t0 <= seen <= t1 + 5]
    lat_pub = [lat for seen, lat, last in probes.query_lat if last and t0 <= seen <= t1 + 5]
    readings_rate = _rates(probes.series, "readings", t0, t1)
    # Drained: when the agents' raw-sample counter last moved, after publishing ended.
    moves = [
        r["t"]
        for prev, r in zip(probes.series, probes.series[1:], strict=False)
        if r["agents"].get("samples", 0) > prev["agents"].get("samples", 0)
    ]
    drained_s = max(0.0, (moves[-1] if moves else t_pub1) - t_pub1)
    points_rate = _rates(probes.series, "samples", t0, t1)
    return {
        "scenario": asdict(scenario),
        "simulator": sim_summary,
        "publish_window": [t_start, t_pub1],
        "sustained_readings_per_s": round(readings_rate),
        "sustained_points_per_s": round(points_rate),
        "latency_query_from_device_ts_s": percentiles(lat_all, digits=3),
        "latency_query_from_publish_s": percentiles(lat_pub, digits=3),
        "api_query_seconds": percentiles(probes.query_time, digits=3),
        "latency_push_open_window_s": _by_size(probes.push_open),
        "latency_push_closed_window_s": _by_size(probes.push_final),
        "cpu_percent_of_one_core": _cpu(probes.series, t0, t1),
        "loss_check": asdict(result),
        "loss_check_ok": result.ok,
        "drain_seconds": round(drained_s, 1),
        "check_seconds": round(check_s, 1),
        "probe_errors": probes.errors[:10],
        "_series": probes.series,
        "_query_lat": probes.query_lat,
    }


# --------------------------------------------------------------------------- report


def _plot(results_dir: Path, res: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    series = res["_series"]
    t_start = res["publish_window"][0]
    ts = [r["t"] - t_start for r in series]
    fig, ax = plt.subplots(figsize=(8, 4))
    t_arr = np.asarray(ts)
    for key, label in (("samples", "data points stored/s"), ("readings", "readings/s")):
        vals = np.asarray([r["agents"].get(key, math.nan) for r in series], dtype=float)
        # Rate over the preceding 10 s (the counters are sampled about once a second).
        back = np.searchsorted(t_arr, t_arr - 10.0)
        span = np.maximum(t_arr - t_arr[back], 1e-9)
        rate = np.where(t_arr - t_arr[back] > 0, (vals - vals[back]) / span, 0.0)
        ax.plot(t_arr, rate, label=f"{label} (10 s average)")
    target = res["scenario"]["rate"]
    ax.axhline(target * 10, color="grey", ls="--", lw=0.8, label="target data points/s")
    ax.set_xlabel("seconds since publishing started")
    ax.set_ylabel("per second")
    ax.set_title("End to end throughput (agents' counters)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results_dir / "e2e_throughput.png", dpi=110)
    plt.close(fig)
    files.append("e2e_throughput.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for label, lats in (
        ("queryable, from device ts", [lat for _, lat, _ in res["_query_lat"]]),
        ("queryable, from publish", [lat for _, lat, last in res["_query_lat"] if last]),
    ):
        if lats:
            a = np.sort(np.asarray(lats))
            ax.plot(a, np.arange(1, len(a) + 1) / len(a), label=label)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of samples")
    ax.set_title("Latency to queryable through the API (CDF)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(results_dir / "e2e_latency.png", dpi=110)
    plt.close(fig)
    files.append("e2e_latency.png")

    cpu = res["cpu_percent_of_one_core"]
    if cpu:
        names = sorted(cpu, key=lambda k: cpu[k])
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh(names, [cpu[n] for n in names])
        ax.set_xlabel("% of one core (2 cores = 200 %)")
        ax.set_title("CPU per component while publishing")
        fig.tight_layout()
        fig.savefig(results_dir / "e2e_cpu.png", dpi=110)
        plt.close(fig)
        files.append("e2e_cpu.png")
    return files


def _summary(res: dict[str, Any], quick: bool) -> list[str]:
    sc = res["scenario"]
    sim = res["simulator"]
    q = res["latency_query_from_device_ts_s"]
    qp = res["latency_query_from_publish_s"]
    po = res["latency_push_open_window_s"]
    pf = res["latency_push_closed_window_s"]
    cpu = res["cpu_percent_of_one_core"]
    lc = res["loss_check"]
    pts = res["sustained_points_per_s"]
    lines = [
        "- monitoring store: "
        + (
            "**MongoDB emulator** (SecantusDB 0.7.0b3; emulator figures, not MongoDB's)"
            if res.get("store") == "mongodb"
            else "PostgreSQL"
        ),
        f"- setup: {sc['devices']} devices × 10 metrics, target {sc['rate']:,.0f} readings/s "
        f"({sc['rate'] * 10:,.0f} data points/s) for {sc['duration']:g} s, MQTT QoS 1, "
        f"{sc['batch']} readings per message ({sc['rate'] / sc['batch']:,.0f} messages/s), "
        f"{sim['processes']} simulator process(es){' — quick run' if quick else ''}",
        f"- published {sim['readings']:,} readings ({sim['achieved_rate']:,.0f}/s achieved), "
        f"{sim['failed']} failed, {sim['forfeited_readings']:,} readings' slots forfeited "
        "(the simulator fell behind)",
        f"- sustained through the pipeline: **{res['sustained_readings_per_s']:,} readings/s = "
        f"{pts:,} data points/s**"
        + (
            " (target 50,000; ThingsBoard: 15,000 on 2 vCPU)"
            if res.get("store", "postgres") == "postgres"
            else f" (the emulator's rate; target {sc['rate'] * 10:,.0f})"
        ),
    ]
    if qp:
        lines.append(
            f"- latency to queryable via the API: from publish p50 {qp['p50']} s / "
            f"p99 **{qp['p99']} s**; from device ts (incl. batching) p50 {q.get('p50')} s / "
            f"p99 {q.get('p99')} s (n={q.get('n')})"
        )
    qt = res.get("api_query_seconds") or {}
    if qt:
        lines.append(
            f"- (each probe query itself took p50 {qt.get('p50')} s / p99 {qt.get('p99')} s; "
            "a sample counts as queryable when the answer holding it arrived)"
        )
    if po or pf:

        def sizes(d: dict[str, Any]) -> str:
            return ", ".join(
                f"{k} windows p50 {v.get('p50')} s / p99 {v.get('p99')} s"
                for k, v in d.items()
                if isinstance(v, dict)
            )

        lines.append(
            f"- Socket.IO window pushes: open-window update behind the newest reading "
            f"({sizes(po)}); closed window after the window end ({sizes(pf)})"
        )
    if cpu:
        parts = ", ".join(f"{k} {v:g}%" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        lines.append(f"- CPU (% of one core): {parts}")
    lines += [
        f"- loss check {'**passed**' if lc['ok'] else '**FAILED**'}: "
        f"{lc['stored_readings']:,}/{lc['expected_readings']:,} readings stored exactly once, "
        f"missing {lc['missing']}, twice {lc['stored_twice']}, wrong values "
        f"{lc['wrong_values']}; faults accounted: "
        + ", ".join(f"{k} {v['accounted']}/{v['injected']}" for k, v in lc["faults"].items())
        + " (ledger records: readings, or messages for malformed/unknown)",
        f"- the agents had written every raw sample {res['drain_seconds']} s after the "
        f"simulator finished (the loss check itself took {res['check_seconds']} s)",
    ]
    return lines


#: Default target rates (readings/s) by store: on PostgreSQL 10 % over the issue's 50,000 data
#: points/s, so that "sustained" clears it with the measurement's edges and the simulator's
#: pacing slack; on the MongoDB emulator (SecantusDB, a Python server taking about 5,000
#: sample documents/s on this machine) what it sustains.
RATES = {"postgres": (2000.0, 5500.0), "mongodb": (200.0, 300.0)}


def run(results_dir: Path, *, quick: bool = False, store: str | None = None) -> dict[str, Any]:
    """One end-to-end run; ``store`` (or ``E2E_STORE``): ``postgres`` (default) or ``mongodb``
    (a private MongoDB-compatible emulator). The summary of a run on MongoDB is kept as
    ``e2e_mongodb.json`` beside PostgreSQL's ``e2e.json`` (``result_name``), its plots and series
    in ``results_dir/mongodb``, so that a run on each store keeps both."""
    store = store or os.environ.get("E2E_STORE", "postgres")
    if store not in RATES:
        raise ValueError(f"unknown store {store!r}; choose postgres or mongodb")
    top = results_dir
    if store != "postgres":
        results_dir = results_dir / store
    results_dir.mkdir(parents=True, exist_ok=True)
    quick_rate, full_rate = RATES[store]
    scenario = (
        Scenario(rate=float(os.environ.get("E2E_RATE", quick_rate)), duration=30)
        if quick
        else Scenario(
            rate=float(os.environ.get("E2E_RATE", full_rate)),
            duration=float(os.environ.get("E2E_DURATION", 300)),
        )
    )
    log_lines: list[str] = []

    def log(msg: str) -> None:
        log_lines.append(msg)
        print(f"[e2e] {msg}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as cleanup:
        store_url = ""
        if store == "mongodb":
            from iotctl.sandbox import PrivateMongoDB

            server = PrivateMongoDB(cache_size="512M")
            server.start()
            cleanup.callback(server.cleanup)
            store_url = f"{server.url}/iot_e2e"
            log(f"monitoring store: SecantusDB (MongoDB-compatible emulator) on {server.url}")
        stack = E2EStack(keep_logs=bool(os.environ.get("E2E_KEEP_LOGS")), store_url=store_url)
        t = time.monotonic()
        stack.start()
        log(f"stack up in {time.monotonic() - t:.1f} s ({stack.workdir})")
        try:
            work = stack.workdir / "run"
            work.mkdir(parents=True, exist_ok=True)
            res = run_pipeline(stack, scenario, work, log=log)
        finally:
            stack.stop()
    res["store"] = store
    res["result_name"] = "e2e" if store == "postgres" else f"e2e_{store}"
    # Plots are named relative to the top results directory, where the report is.
    plots = [(results_dir / p).relative_to(top).as_posix() for p in _plot(results_dir, res)]
    series = res.pop("_series")
    (results_dir / "e2e_series.json").write_text(json.dumps(series))
    (results_dir / "e2e_query_latency.json").write_text(json.dumps(res.pop("_query_lat")))
    res["plots"] = plots
    res["log"] = log_lines
    res["summary"] = _summary(res, quick)
    return res


def main() -> None:
    args = sys.argv[1:]
    store = args[args.index("--store") + 1] if "--store" in args else None
    res = run(Path("benchmarks/results"), quick="--quick" in args, store=store)
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
