"""Stream agents vs Quix Streams vs an idiomatic Faust agent, on one preloaded telemetry.raw.

Preloads ``telemetry.raw`` (8 partitions) with 10,000 devices × 100 readings × 5 metrics
(1,000,000 readings, 5,000,000 values; by default one reading per record, the worst case for
per-record overheads; devices at 10 Hz so the data spans 10 s of event time). Then, in one run:

* our agents (``stream-agents`` worker process, PostgreSQL store), raw samples off, then on;
* two ``stream-agents`` workers in one consumer group (raw samples off);
* Quix Streams: tumbling windows 10 s and 60 s per device × metric with count/min/max/mean/
  stddev/p50/p95 (exact, from collected values)/last, on a prefix of the same topic;
* an idiomatic Faust agent (per event, two tumbling windowed tables) on a smaller prefix;
* with ``AGENTS_BENCH_STORE=mongodb``: our agents on both store backends side by side (the
  MongoDB one on the emulator, SecantusDB) over a smaller topic of their own.

Throughput is readings (one timestamp × 5 metrics) per second between the first and the
last record processed, so consumer-group start-up is not counted; peak RSS is sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil

from iot_common.telemetry import Reading, TelemetryEnvelope
from iot_common.topics import Topics
from iotctl.broker import TansuBroker, free_port
from iotctl.testinfra import create_database, database_url, drop_database

DEVICES = 10_000
READINGS_PER_DEVICE = 100
METRICS = ("temp", "hum", "pressure", "co2", "battery")
PARTITIONS = 8
INTERVAL = 0.2


def _new_db(label: str) -> str:
    name = f"bench_agents_{label}_{secrets.token_hex(3)}"
    create_database(name)
    return name


# -- preload ---------------------------------------------------------------------------------
async def _preload(
    bootstrap: str, topics: Topics, *, devices: int, per_device: int, per_record: int
) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.partitioner import murmur2

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics(
        [
            NewTopic(n, PARTITIONS, 1, topic_configs={"retention.ms": "86400000"})
            for n in topics.all()
        ]
    )
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    enc = msgspec.json.Encoder().encode
    t0 = time.perf_counter()
    # 5 Hz devices, 20 s of event time across a minute boundary: two 10 s and two 60 s windows
    # per series, half of them closing while the backlog is processed. All of it minutes in
    # the past, so the windows still open when the backlog ends close on the idle-partition
    # timer (1 s here). With the data around the current minute (as before), the last 60 s
    # windows waited for the wall clock to reach their end: "seconds to durable" measured
    # where in the minute the run happened to start (raw samples off: 8.5 s to process, 22 s
    # to durable), not the agents.
    start = (time.time() // 60) * 60 - 130.0
    ids = [f"dev-{i:05d}" for i in range(devices)]
    keys = [d.encode() for d in ids]
    parts = [(murmur2(k) & 0x7FFFFFFF) % PARTITIONS for k in keys]
    batches = {p: producer.create_batch() for p in range(PARTITIONS)}
    futures = []
    records = 0
    for step in range(0, per_device, per_record):
        for d, dev in enumerate(ids):
            readings = []
            for j in range(step, min(step + per_record, per_device)):
                ts = round(start + j * INTERVAL + d * 1e-6, 6)
                readings.append(
                    Reading(
                        ts,
                        {m: float((d + j * (k + 1)) % 97) + 0.5 * k for k, m in enumerate(METRICS)},
                        j,
                    )
                )
            env = TelemetryEnvelope(dev, "mqtt", readings[-1].ts + 0.05, readings)
            p = parts[d]
            ts_ms = int(readings[0].ts * 1000)
            value = enc(env)
            if batches[p].append(key=keys[d], value=value, timestamp=ts_ms) is None:
                futures.append(
                    await producer.send_batch(batches[p], topics.telemetry_raw, partition=p)
                )
                batches[p] = producer.create_batch()
                batches[p].append(key=keys[d], value=value, timestamp=ts_ms)
            records += 1
        if len(futures) > 64:
            await asyncio.gather(*futures)
            futures = []
    for p, b in batches.items():
        futures.append(await producer.send_batch(b, topics.telemetry_raw, partition=p))
    await asyncio.gather(*futures)
    await producer.stop()
    rel = start + INTERVAL * __import__("numpy").arange(per_device)
    windows_per_series = sum(len({int(t // size) for t in rel.tolist()}) for size in (10, 60))
    return {
        "records": records,
        "expected_windows": windows_per_series * devices * len(METRICS),
        "readings": devices * per_device,
        "values": devices * per_device * len(METRICS),
        "preload_seconds": round(time.perf_counter() - t0, 2),
    }


# -- our agents ------------------------------------------------------------------------------
def _agents_env(
    bootstrap: str, prefix: str, store_url: str, app_id: str, raw: bool
) -> dict[str, str]:
    return {
        # The workers run on the development defaults (local Redis without a password, ...),
        # which the services refuse unless told this is a development run.
        "IOT_ALLOW_DEV_DEFAULTS": "true",
        **os.environ,
        "IOT_KAFKA_BOOTSTRAP": bootstrap,
        "IOT_TOPIC_PREFIX": prefix,
        "MONITORING_STORE_URL": store_url,
        "AGENTS_APP_ID": app_id,
        "AGENTS_RAW_SAMPLES": "true" if raw else "false",
        "AGENTS_TOPIC_PARTITIONS": str(PARTITIONS),
        "AGENTS_WEB_PORT": str(free_port()),
        "IOT_LOG_LEVEL": "WARNING",
        "AGENTS_EMIT_INTERVAL": "1.0",
        "AGENTS_IDLE_CLOSE_SECONDS": "1.0",
    }


def _health(port: int) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0)
        return dict(r.json())
    except (httpx.HTTPError, ValueError):
        return None


def _cpu(procs: list[tuple[subprocess.Popen[bytes], int, psutil.Process]]) -> float:
    total = 0.0
    for _, _, ps in procs:
        with contextlib.suppress(psutil.Error):
            t = ps.cpu_times()
            total += t.user + t.system
    return total


def _run_agents(
    bootstrap: str,
    prefix: str,
    *,
    workers: int,
    raw: bool,
    total_records: int,
    total_readings: int,
    expected_windows: int,
    label: str,
    mongodb_url: str | None = None,
) -> dict[str, Any]:
    """Throughput from the first record processed until every reading's windows (and raw
    samples, when on) are durably in the store; windows still open at the end of the backlog
    are closed by the idle-partition timer (1 s in this benchmark).

    The store is a new PostgreSQL database, or with ``mongodb_url`` (a server) a new database
    on that MongoDB server."""
    db = "" if mongodb_url else _new_db(label)
    store_url = (
        f"{mongodb_url.rstrip('/')}/bench_agents_{label}_{secrets.token_hex(3)}"
        if mongodb_url
        else database_url(db)
    )
    app_id = f"bench-agents-{label}-{secrets.token_hex(3)}"
    procs: list[tuple[subprocess.Popen[bytes], int, psutil.Process]] = []
    try:
        for _ in range(workers):
            env = _agents_env(bootstrap, prefix, store_url, app_id, raw)
            # BENCH_AGENTS_WRAPPER lets a profiler wrap the worker (e.g. "py-spy record -o f --").
            wrapper = os.environ.get("BENCH_AGENTS_WRAPPER", "").split()
            proc = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "stream_agents"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append((proc, int(env["AGENTS_WEB_PORT"]), psutil.Process(proc.pid)))
        peak = [0] * workers
        first: float | None = None
        cpu0 = cpu1 = 0.0
        processed_at: float | None = None
        durable_at: float | None = None
        wf = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and durable_at is None:
            time.sleep(0.05)
            total = wf = samples = 0
            for i, (proc, port, ps) in enumerate(procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"stream-agents exited with {proc.returncode}")
                with contextlib.suppress(psutil.Error):
                    peak[i] = max(peak[i], ps.memory_info().rss)
                h = _health(port)
                if h and h.get("counts"):
                    total += h["counts"]["records"]
                    wf += h["counts"]["windows_final"]
                    samples += h["counts"]["samples"]
            now = time.perf_counter()
            if total and first is None:
                first = now
                cpu0 = _cpu(procs)
            if total >= total_records and processed_at is None:
                processed_at = now
            raw_done = not raw or samples >= total_readings * len(METRICS)
            if processed_at is not None and wf >= expected_windows and raw_done:
                durable_at = now
                cpu1 = _cpu(procs)
        if first is None or processed_at is None or durable_at is None:
            raise RuntimeError(f"agents did not finish ({label})")
        elapsed = max(durable_at - first, 1e-6)
        return {
            "workers": workers,
            "raw_samples": raw,
            "seconds_to_process": round(processed_at - first, 2),
            "seconds_to_durable": round(elapsed, 2),
            "readings_per_s": round(total_readings / elapsed),
            # Load-independent figure: readings per CPU-second of the worker process(es).
            "cpu_seconds": round(cpu1 - cpu0, 2),
            "readings_per_cpu_s": round(total_readings / max(cpu1 - cpu0, 1e-6)),
            "windows_final_emitted": wf,
            "peak_rss_mb": [round(p / 2**20) for p in peak],
            "load_average": os.getloadavg(),
        }
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if db:
            with contextlib.suppress(subprocess.CalledProcessError):
                drop_database(db)


#: Devices of the run on both store backends side by side (``AGENTS_BENCH_STORE=mongodb``):
#: the MongoDB backend runs on the emulator (SecantusDB, a Python server taking on the order of
#: 1,000 documents/s on this machine), so 100 devices: 10,000 readings, 2,000 windows, 50,000
#: raw samples; PostgreSQL gets the same topic in the same run as the baseline.
BACKEND_DEVICES = 100


def _run_backends(bootstrap: str, *, per_record: int) -> dict[str, Any]:
    """One worker on each backend, raw samples off then on, over one smaller preloaded topic."""
    from iotctl.sandbox import PrivateMongoDB

    prefix = f"benchb{secrets.token_hex(3)}."
    data = asyncio.run(
        _preload(
            bootstrap,
            Topics(prefix),
            devices=BACKEND_DEVICES,
            per_device=READINGS_PER_DEVICE,
            per_record=per_record,
        )
    )
    common = {
        "total_records": data["records"],
        "total_readings": data["readings"],
        "expected_windows": data["expected_windows"],
    }
    server = PrivateMongoDB()
    server.start()
    out: dict[str, Any] = {"data": data, "server": "SecantusDB 0.7.0b3 (emulator)"}
    try:
        for raw in (False, True):
            for backend in ("postgres", "mongodb"):
                name = f"{backend}_raw_{'on' if raw else 'off'}"
                print(f"bench_agents: backends {name} ...", file=sys.stderr, flush=True)
                try:
                    out[name] = _run_agents(
                        bootstrap,
                        prefix,
                        workers=1,
                        raw=raw,
                        label=f"{backend[:2]}{int(raw)}",
                        mongodb_url=server.url if backend == "mongodb" else None,
                        **common,
                    )
                except Exception as exc:  # keep the other figures of the run
                    out[name] = {"error": repr(exc), "readings_per_s": 0}
                print(f"bench_agents: backends {name}: {out[name]}", file=sys.stderr, flush=True)
    finally:
        server.cleanup()
    return out


def _backend_lines(res: dict[str, Any]) -> list[str]:
    lines = [
        f"Both store backends, one worker, {res['data']['readings']:,} readings "
        f"({BACKEND_DEVICES} devices): **MongoDB figures are on the emulator** "
        f"({res['server']}), not MongoDB's."
    ]
    for raw in ("off", "on"):
        pg, mg = res.get(f"postgres_raw_{raw}", {}), res.get(f"mongodb_raw_{raw}", {})
        ratio = pg.get("readings_per_s", 0) / max(mg.get("readings_per_s", 0), 1)
        lines.append(
            f"- raw samples {raw}: PostgreSQL {pg.get('readings_per_s', 0):,} readings/s "
            f"({pg.get('seconds_to_process')} s to processed, {pg.get('seconds_to_durable')} s "
            f"to durable), MongoDB backend on the emulator {mg.get('readings_per_s', 0):,} "
            f"readings/s ({mg.get('seconds_to_process')} s, {mg.get('seconds_to_durable')} s): "
            f"PostgreSQL ahead ×{ratio:.1f}"
        )
    return lines


# -- Quix Streams ----------------------------------------------------------------------------
def _quix_worker(bootstrap: str, topic: str, n_records: int, out: Any) -> None:
    import logging

    import numpy as np
    from quixstreams import Application
    from quixstreams.dataframe.windows import Collect

    logging.disable(logging.WARNING)
    state = tempfile.mkdtemp(prefix="quix-bench-")
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{secrets.token_hex(3)}",
        auto_offset_reset="earliest",
        state_dir=state,
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    t = app.topic(topic, value_deserializer="json")
    sdf = app.dataframe(t)
    seen = {"n": 0, "t0": 0.0, "c0": 0.0}

    def count(_: Any) -> None:
        if seen["n"] == 0:
            seen["t0"] = time.perf_counter()
            seen["c0"] = time.process_time()
        seen["n"] += 1
        if seen["n"] >= n_records:
            out.put(
                {
                    "seconds": time.perf_counter() - seen["t0"],
                    "cpu": time.process_time() - seen["c0"],
                    "records": seen["n"],
                }
            )
            app.stop()

    def explode(env: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"m": m, "v": v, "ts": r[0]} for r in env["readings"] for m, v in r[1].items()]

    def stats(w: dict[str, Any]) -> dict[str, Any]:
        by: dict[str, list[float]] = {}
        for rows in w["values"]:  # one list of (metric, value) rows per record
            for row in rows:
                by.setdefault(row["m"], []).append(row["v"])
        res = {}
        for m, vals in by.items():
            a = np.asarray(vals)
            res[m] = {
                "count": len(a),
                "min": a.min(),
                "max": a.max(),
                "mean": a.mean(),
                "stddev": a.std(),
                "p50": np.percentile(a, 50),
                "p95": np.percentile(a, 95),
                "last": vals[-1],
            }
        return {"start": w["start"], "stats": res}

    sdf = sdf.update(count)
    rows = sdf.apply(explode)
    rows.tumbling_window(10_000).agg(values=Collect()).final().apply(stats)
    rows.tumbling_window(60_000).agg(values=Collect()).final().apply(stats)
    app.run()


def _run_quix(bootstrap: str, topic: str, n_records: int, per_record: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_quix_worker, args=(bootstrap, topic, n_records, q))
    p.start()
    ps = psutil.Process(p.pid)
    peak = 0
    res = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            res = q.get(timeout=0.2)
            break
        except Exception:  # queue.Empty
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
            if not p.is_alive():
                break
    p.join(30)
    if p.is_alive():
        p.kill()
    if res is None:
        raise RuntimeError("quix benchmark did not finish")
    readings = res["records"] * per_record
    return {
        "records": res["records"],
        "seconds": round(res["seconds"], 2),
        "readings_per_s": round(readings / res["seconds"]),
        "readings_per_cpu_s": round(readings / max(res["cpu"], 1e-6)),
        "peak_rss_mb": round(peak / 2**20),
    }


# -- idiomatic Faust ---------------------------------------------------------------------------
def _faust_worker(bootstrap: str, topic: str, n_readings: int, out: Any) -> None:
    import logging

    import faust

    logging.disable(logging.WARNING)
    app = faust.App(
        f"bench-faust-{secrets.token_hex(3)}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=PARTITIONS,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="faust-bench-"),
    )
    src = app.topic(topic, value_serializer="json")

    def empty() -> dict[str, Any]:
        return {"count": 0, "sum": 0.0, "min": None, "max": None, "values": [], "last": None}

    w10 = app.Table("w10", default=empty, partitions=PARTITIONS).tumbling(10, expires=600)
    w60 = app.Table("w60", default=empty, partitions=PARTITIONS).tumbling(60, expires=600)
    seen = {"n": 0, "t0": 0.0, "c0": 0.0}

    @app.agent(src)
    async def process(stream: Any) -> None:
        async for env in stream:
            if seen["n"] == 0:
                seen["t0"] = time.perf_counter()
                seen["c0"] = time.process_time()
            for _ts, metrics, _seq in env["readings"]:
                for m, v in metrics.items():
                    key = f"{env['device_id']}:{m}"
                    for table in (w10, w60):
                        cur = dict(table[key].current())
                        cur["count"] += 1
                        cur["sum"] += v
                        cur["min"] = v if cur["min"] is None else min(cur["min"], v)
                        cur["max"] = v if cur["max"] is None else max(cur["max"], v)
                        cur["values"] = [*cur["values"], v]
                        cur["last"] = v
                        table[key] = cur
                seen["n"] += 1
            if seen["n"] >= n_readings:
                out.put(
                    {
                        "seconds": time.perf_counter() - seen["t0"],
                        "cpu": time.process_time() - seen["c0"],
                        "readings": seen["n"],
                    }
                )
                out.close()
                out.join_thread()  # flush the queue before leaving without Faust's shutdown
                os._exit(0)

    sys.argv = ["faust-bench", "worker", "-l", "warn", "--without-web"]
    app.main()


def _run_faust(bootstrap: str, topic: str, n_readings: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_faust_worker, args=(bootstrap, topic, n_readings, q))
    p.start()
    ps = psutil.Process(p.pid)
    peak = 0
    res = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            res = q.get(timeout=0.2)
            break
        except Exception:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
            if not p.is_alive():
                break
    p.join(10)
    if p.is_alive():
        p.kill()
    if res is None:
        raise RuntimeError("faust benchmark did not finish")
    return {
        "readings": res["readings"],
        "seconds": round(res["seconds"], 2),
        "readings_per_s": round(res["readings"] / res["seconds"]),
        "readings_per_cpu_s": round(res["readings"] / max(res["cpu"], 1e-6)),
        "peak_rss_mb": round(peak / 2**20),
    }


# -- run -------------------------------------------------------------------------------------
def run(
    results_dir: Path, *, quick: bool = False, per_record: int = 1, store: str | None = None
) -> dict[str, Any]:
    """The whole comparison; ``store`` (or ``AGENTS_BENCH_STORE``) ``mongodb`` adds a run of our
    agents on both store backends side by side (:data:`BACKEND_DEVICES`)."""
    store = store or os.environ.get("AGENTS_BENCH_STORE", "postgres")
    if store not in ("postgres", "mongodb"):
        raise ValueError(f"unknown store {store!r}; choose postgres or mongodb")
    results_dir.mkdir(parents=True, exist_ok=True)
    devices = 1_000 if quick else DEVICES
    prefix = f"bench{secrets.token_hex(3)}."
    topics = Topics(prefix)
    broker = TansuBroker(port=free_port())
    broker.start()
    try:
        data = asyncio.run(
            _preload(
                broker.bootstrap,
                topics,
                devices=devices,
                per_device=READINGS_PER_DEVICE,
                per_record=per_record,
            )
        )
        total = data["records"]
        scale = data["readings"] / total
        common = {
            "total_records": total,
            "total_readings": data["readings"],
            "expected_windows": data["expected_windows"],
        }

        def section(name: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            print(f"bench_agents: {name} ...", file=sys.stderr, flush=True)
            try:
                res: dict[str, Any] = fn(*args, **kwargs)
            except Exception as exc:  # keep the other figures of the run
                res = {"error": repr(exc), "readings_per_s": 0}
            print(f"bench_agents: {name}: {res}", file=sys.stderr, flush=True)
            return res

        bs = broker.bootstrap
        ours_off = section(
            "agents raw off", _run_agents, bs, prefix, workers=1, raw=False, label="off", **common
        )
        ours_on = section(
            "agents raw on", _run_agents, bs, prefix, workers=1, raw=True, label="on", **common
        )
        two = section(
            "agents two workers",
            _run_agents,
            bs,
            prefix,
            workers=2,
            raw=False,
            label="two",
            **common,
        )
        quix_records = max(1, (20_000 if quick else 60_000) // per_record)
        quix = section("quix", _run_quix, bs, topics.telemetry_raw, quix_records, int(scale))
        faust_res = section(
            "faust idiomatic", _run_faust, bs, topics.telemetry_raw, 2_000 if quick else 4_000
        )
        backends = (
            section("both backends", _run_backends, bs, per_record=per_record)
            if store == "mongodb"
            else None
        )
    finally:
        broker.stop()
    base = ours_off["readings_per_s"]
    results: dict[str, Any] = {
        "data": {**data, "devices": devices, "metrics": len(METRICS), "per_record": per_record},
        "agents_raw_off": ours_off,
        "agents_raw_on": ours_on,
        "agents_two_workers": two,
        "quix": quix,
        "faust_idiomatic": faust_res,
        "ratio_vs_quix": round(base / max(quix["readings_per_s"], 1), 1),
        "ratio_vs_faust": round(base / max(faust_res["readings_per_s"], 1), 1),
        "cpu_ratio_vs_quix": round(
            ours_off.get("readings_per_cpu_s", 0) / max(quix.get("readings_per_cpu_s", 1), 1), 1
        ),
        "cpu_ratio_vs_faust": round(
            ours_off.get("readings_per_cpu_s", 0) / max(faust_res.get("readings_per_cpu_s", 1), 1),
            1,
        ),
        "load_average": os.getloadavg(),
    }
    results["summary"] = [
        f"Preloaded {data['readings']:,} readings ({devices:,} devices × {len(METRICS)} metrics, "
        f"{per_record} reading(s) per record) in {data['preload_seconds']} s.",
        f"- stream-agents, 1 worker, window writes, raw samples off: "
        f"**{ours_off['readings_per_s']:,} readings/s** "
        f"({ours_off.get('readings_per_cpu_s', 0):,} per CPU-second), "
        f"peak RSS {ours_off.get('peak_rss_mb')} MB",
        f"- stream-agents, 1 worker, raw samples on: {ours_on['readings_per_s']:,} readings/s, "
        f"peak RSS {ours_on.get('peak_rss_mb')} MB",
        f"- stream-agents, 2 workers in one group: {two['readings_per_s']:,} readings/s, "
        f"peak RSS {two.get('peak_rss_mb')} MB",
        f"- Quix Streams (10 s + 60 s tumbling, same aggregations, "
        f"{quix.get('records', 0):,} records): "
        f"{quix['readings_per_s']:,} readings/s "
        f"({quix.get('readings_per_cpu_s', 0):,} per CPU-second) → ours "
        f"×{results['ratio_vs_quix']} (×{results['cpu_ratio_vs_quix']} per CPU-second)",
        f"- idiomatic Faust (per event, 2 windowed tables, "
        f"{faust_res.get('readings', 0):,} readings): "
        f"{faust_res['readings_per_s']:,} readings/s "
        f"({faust_res.get('readings_per_cpu_s', 0):,} per CPU-second) → ours "
        f"×{results['ratio_vs_faust']} (×{results['cpu_ratio_vs_faust']} per CPU-second)",
        f"Machine load average during the run: {results['load_average']} (2 cores, shared).",
    ]
    if backends is not None:
        results["backends"] = backends
        if "error" in backends:
            results["summary"].append(f"- both backends: **failed**: {backends['error']}")
        else:
            results["summary"] += _backend_lines(backends)
    (results_dir / "bench_agents.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    per = 1
    chosen: str | None = None
    for a in sys.argv[1:]:
        if a.startswith("--per-record="):
            per = int(a.split("=", 1)[1])
        if a.startswith("--store="):
            chosen = a.split("=", 1)[1]
    res = run(Path("benchmarks/results"), quick=quick, per_record=per, store=chosen)
    print(json.dumps(res, indent=2))
