"""Helpers of the stream-agents tests (imported by conftest and the test modules)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from iot_common.telemetry import Reading, TelemetryEnvelope
from iot_common.topics import Topics
from iotctl.broker import free_port

PARTITIONS = 4

#: Runs a test once per monitoring store backend (the agents' deployments and the test's own
#: view of the store use it); tests without it run on PostgreSQL only.
both_backends = pytest.mark.parametrize("store_backend", ["postgres", "mongodb"], indirect=True)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Any

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return None

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class AgentEnv:
    """One isolated agents deployment: topics, store database, consumer group."""

    bootstrap: str
    topics: Topics
    store_url: str
    app_id: str
    env: dict[str, str]
    log_dir: str
    workers: list[Worker] = field(default_factory=list)

    def start_worker(
        self, *, argv: Sequence[str] = ("-m", "stream_agents"), **extra: str
    ) -> Worker:
        """A worker process (``python -m stream_agents``, or ``argv`` after the interpreter)
        with this deployment's settings and ``extra`` environment variables."""
        port = free_port()
        env = {**self.env, "AGENTS_WEB_PORT": str(port), **extra}
        log = open(os.path.join(self.log_dir, f"worker-{port}.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=log, stderr=log)
        w = Worker(proc, port, log)
        self.workers.append(w)
        return w

    def wait_ready(self, w: Worker, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert w.proc.poll() is None, f"worker exited: {w.proc.returncode}"
            h = w.health()
            if h and h.get("status") == "ok" and h.get("partitions"):
                return
            time.sleep(0.2)
        raise AssertionError("worker not ready")


async def create_topics(bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in topics.all()])
    finally:
        await admin.close()


def envelope(
    device: str,
    ingest: float,
    readings: list[tuple[float, dict[str, float]]],
    seqs: list[int | None] | None = None,
) -> bytes:
    """One TelemetryEnvelope; each reading's seq is its index unless ``seqs`` is given."""
    seq = seqs if seqs is not None else list(range(len(readings)))
    return msgspec.json.encode(
        TelemetryEnvelope(
            device,
            "http",
            ingest,
            [Reading(t, m, q) for (t, m), q in zip(readings, seq, strict=True)],
        )
    )


async def read_topic(
    bootstrap: str, topic: str, *, until: Callable[[list[bytes]], bool], timeout: float = 20.0
) -> list[bytes]:
    c = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await c.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300)
            for recs in batch.values():
                got.extend(r.value for r in recs if r.value is not None)
            if until(got):
                return got
        return got
    finally:
        await c.stop()


async def wait_for(cond: Callable[[], Any], timeout: float = 30.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await cond()
        if last:
            return last
        await asyncio.sleep(every)
    return last


# -- windows: what the agents must store for a list of readings ------------------------------
LATENESS = 5.0
SIZES = (10, 60)

# device, ingest, ts, metrics, seq (None: the device sent none)
Readings = list[tuple[str, float, float, dict[str, float], int | None]]


def reference(readings: Readings) -> dict[tuple[str, str, int, float], tuple[Any, ...]]:
    """In-time readings, each (device, metric, ts, seq) once: the first produced counts."""
    rows: dict[tuple[str, str, int, float], list[tuple[float, float]]] = {}
    seen: set[tuple[str, str, float, int | None]] = set()
    for dev, ingest, t, metrics, seq in sorted(readings, key=lambda r: r[1]):
        if ingest > (math.floor(t / SIZES[0]) + 1) * SIZES[0] + LATENESS:
            continue
        for m, v in metrics.items():
            if (dev, m, t, seq) in seen:
                continue  # a re-sent reading
            seen.add((dev, m, t, seq))
            for size in SIZES:
                rows.setdefault((dev, m, size, math.floor(t / size) * size), []).append((t, v))
    return {key: window_stats(pts) for key, pts in rows.items()}


def window_stats(pts: list[tuple[float, float]]) -> tuple[Any, ...]:
    """A window's statistics from its (ts, value) points, computed plainly with numpy:
    count, min, max, mean, stddev, p50, p95, last value, last ts (the latest ts, the last
    one given among equal ts)."""
    ts = np.array([p[0] for p in pts])
    vs = np.array([p[1] for p in pts])
    li = max(range(len(pts)), key=lambda i: (ts[i], i))
    return (
        len(vs),
        vs.min(),
        vs.max(),
        vs.mean(),
        vs.std(),
        np.percentile(vs, 50),
        np.percentile(vs, 95),
        vs[li],
        ts[li],
    )


async def stored(store: Any, devices: set[str]) -> dict[tuple[str, str, int, float], tuple]:
    out = {}
    for dev in devices:
        for size in SIZES:
            for w in await store.query_windows(
                dev, metrics=None, window_seconds=size, start=0, end=4e9
            ):
                out[(w.device_id, w.metric, w.window_seconds, w.window_start)] = (
                    w.count,
                    w.min,
                    w.max,
                    w.mean,
                    w.stddev,
                    w.p50,
                    w.p95,
                    w.last,
                    w.last_ts,
                )
    return out


def same(got: dict, want: dict) -> bool:
    if set(got) != set(want):
        return False
    for k, w in want.items():
        g = got[k]
        if g[0] != w[0] or not np.allclose(g[1:], w[1:], rtol=1e-9, atol=1e-9):
            return False
    return True


def diff(got: dict, want: dict) -> str:
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    wrong = [
        (k, got[k], want[k]) for k in set(got) & set(want) if not same({k: got[k]}, {k: want[k]})
    ]
    return f"missing={sorted(missing)[:5]} extra={sorted(extra)[:5]} wrong={wrong[:3]}"


async def produce(producer: Any, topic: str, readings: Readings) -> list[Any]:
    """One record per reading, in ingest order (as the bridge would); their metadata."""
    futs = []
    for dev, ingest, t, metrics, seq in sorted(readings, key=lambda r: r[1]):
        futs.append(
            await producer.send(
                topic, envelope(dev, ingest, [(t, metrics)], [seq]), key=dev.encode()
            )
        )
    return list(await asyncio.gather(*futs))


def synth(devices: list[str], n: int, start: float, rng: np.random.Generator) -> Readings:
    """Readings spread over devices; ingest advances ~0.05 s per reading; some out of order,
    some late, some re-sent (an earlier reading again, up to ~10 s of ingest time later)."""
    out: Readings = []
    ingest = start
    for i in range(n):
        ingest += float(rng.uniform(0, 0.1))
        if out and rng.random() < 0.05:
            dev, _, t, metrics, seq = out[-int(rng.integers(1, min(len(out), 200) + 1))]
            out.append((dev, round(ingest, 3), t, metrics, seq))
            continue
        r = rng.random()
        age = (
            rng.uniform(0, 2)
            if r < 0.8
            else rng.uniform(2, 12)
            if r < 0.95
            else rng.uniform(15, 40)
        )
        dev = devices[i % len(devices)]
        metrics = {
            "temp": round(float(rng.normal(20, 5)), 2),
            "hum": round(float(rng.uniform(0, 100)), 1),
        }
        seq = None if rng.random() < 0.1 else int(start * 1000) + i
        out.append((dev, round(ingest, 3), round(ingest - float(age), 3), metrics, seq))
    return out


async def wait_windows(store: Any, readings: Readings, timeout: float = 40.0) -> None:
    want = reference(readings)
    devices = {r[0] for r in readings}
    got: dict = {}

    async def check() -> bool:
        nonlocal got
        got = await stored(store, devices)
        return same(got, want)

    assert await wait_for(check, timeout=timeout), diff(got, want)
