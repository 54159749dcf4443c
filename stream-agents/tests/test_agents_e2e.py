"""The agents as a user runs them: worker processes, Tansu, PostgreSQL store.

Every stored window is compared with a numpy reference computed from the readings produced,
after out-of-order, late and re-sent (duplicate) readings, a SIGKILL + restart, and a
rebalance between workers.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import Any

import msgspec
import numpy as np
import pytest
from agents_testkit import AgentEnv, envelope, read_topic, wait_for
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from iot_common.events import WindowStats, window_decoder
from iot_common.telemetry import deadletter_decoder

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
    out = {}
    for key, pts in rows.items():
        ts = np.array([p[0] for p in pts])
        vs = np.array([p[1] for p in pts])
        li = max(range(len(pts)), key=lambda i: (ts[i], i))
        out[key] = (
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
    return out


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


async def produce(producer: Any, topic: str, readings: Readings) -> None:
    """One record per reading, in ingest order (as the bridge would)."""
    futs = []
    for dev, ingest, t, metrics, seq in sorted(readings, key=lambda r: r[1]):
        futs.append(
            await producer.send(
                topic, envelope(dev, ingest, [(t, metrics)], [seq]), key=dev.encode()
            )
        )
    await asyncio.gather(*futs)


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


# -- the property test -----------------------------------------------------------------------
@pytest.fixture
def one_worker(agent_env_factory: Any) -> AgentEnv:
    ae = agent_env_factory()
    w = ae.start_worker()
    ae.wait_ready(w)
    return ae


_last_ingest = [0.0]


@settings(
    max_examples=4,
    deadline=None,
    # Each example costs seconds of real time: report the failing case as found.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 2),  # device
            st.floats(0.0, 0.6),  # ingest step
            st.one_of(st.floats(0, 2), st.floats(2, 12), st.floats(15, 40)),  # age
            st.floats(-100, 100).map(lambda v: round(v, 2)),
            st.booleans(),
            # re-send the reading this many readings back (a duplicate), if there is one
            st.one_of(st.none(), st.none(), st.integers(1, 30)),
            st.sampled_from(["seq", "seq", "no-seq"]),
        ),
        min_size=1,
        max_size=80,
    )
)
@example(  # re-sends with and without seq, a record or two later
    data=[
        (0, 0.1, 0.5, 1.0, True, None, "seq"),
        (1, 0.2, 0.3, 2.0, False, None, "no-seq"),
        (0, 0.3, 1.0, 3.0, True, 2, "seq"),
        (1, 0.3, 1.0, 4.0, False, 2, "seq"),
        (2, 0.1, 0.2, 5.0, False, None, "seq"),
    ]
)
def test_property_every_stored_window_matches_numpy(one_worker: AgentEnv, data: list) -> None:
    """Out-of-order, late and re-sent readings through Kafka → agents → PostgreSQL."""
    ae = one_worker
    run = secrets.token_hex(3)
    # In the past, so that the idle partition's wall clock closes every window; after the
    # previous example's readings, so each partition's ingest clock only moves forward.
    ingest = max(time.time() - 150, _last_ingest[0] + 1)
    readings: Readings = []
    for i, (dev, step, age, value, two, back, seq_kind) in enumerate(data):
        ingest += step
        if back is not None and back <= len(readings):
            d, _, t, metrics, seq = readings[-back]
            readings.append((d, round(ingest, 3), t, metrics, seq))
            continue
        metrics = {"temp": value, "hum": value * 2} if two else {"temp": value}
        seq = i if seq_kind == "seq" else None
        readings.append((f"p-{run}-{dev}", round(ingest, 3), round(ingest - age, 3), metrics, seq))
    _last_ingest[0] = ingest

    async def go() -> None:
        from aiokafka import AIOKafkaProducer

        from monitoring_store import open_store

        p = AIOKafkaProducer(bootstrap_servers=ae.bootstrap)
        await p.start()
        store = open_store(ae.store_url)
        await store.start()
        try:
            await produce(p, ae.topics.telemetry_raw, readings)
            await wait_windows(store, readings)
        finally:
            await p.stop()
            await store.close()

    asyncio.run(go())


# -- faults ----------------------------------------------------------------------------------
async def test_sigkill_and_restart_gives_exact_windows(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    ae = agent_env_factory()
    store = await store_factory(ae.store_url)
    rng = np.random.default_rng(7)
    devices = [f"k-{i}" for i in range(12)]
    start = time.time() - 300
    first = synth(devices, 3000, start, rng)
    second = synth(devices, 1500, first[-1][1], rng)
    w1 = ae.start_worker()
    ae.wait_ready(w1)
    await produce(producer, ae.topics.telemetry_raw, first)

    async def committed_and_written() -> bool:
        text = await asyncio.to_thread(w1.metrics)
        commits = [ln for ln in text.splitlines() if ln.startswith("agents_commits_total ")]
        return bool(commits) and float(commits[0].split()[1]) >= 1

    assert await wait_for(committed_and_written, timeout=30)
    await produce(producer, ae.topics.telemetry_raw, second[:500])
    w1.kill()  # SIGKILL while records are flowing; open windows are lost from memory
    await produce(producer, ae.topics.telemetry_raw, second[500:])
    w2 = ae.start_worker()
    ae.wait_ready(w2)
    await wait_windows(store, first + second, timeout=60)


async def test_two_workers_share_partitions_and_survive_a_rebalance(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    ae = agent_env_factory()
    store = await store_factory(ae.store_url)
    rng = np.random.default_rng(11)
    devices = [f"r-{i}" for i in range(16)]
    start = time.time() - 300
    a = synth(devices, 1500, start, rng)
    b = synth(devices, 1500, a[-1][1], rng)
    c = synth(devices, 1000, b[-1][1], rng)
    w1 = ae.start_worker()
    ae.wait_ready(w1)
    await produce(producer, ae.topics.telemetry_raw, a)
    w2 = ae.start_worker()  # joins the group: partitions are split
    ae.wait_ready(w2)

    async def split() -> bool:
        h1, h2 = w1.health(), w2.health()
        return bool(h1 and h2 and h1["partitions"] and h2["partitions"])

    assert await wait_for(split, timeout=40)
    await produce(producer, ae.topics.telemetry_raw, b)
    await wait_windows(store, a + b, timeout=40)
    w1.stop()  # leaves: w2 takes every partition over from the committed offsets
    await produce(producer, ae.topics.telemetry_raw, c)
    await wait_windows(store, a + b + c, timeout=60)
    h2 = w2.health()
    assert h2 is not None and len(h2["partitions"]) == 4


async def test_bad_records_are_dead_lettered_and_late_ones_counted(
    one_worker: AgentEnv, producer: Any
) -> None:
    ae = one_worker
    now = time.time()
    topic = ae.topics.telemetry_raw
    await producer.send_and_wait(topic, b"{not json", key=b"bad-1")
    await producer.send_and_wait(topic, b'{"device_id": 5}', key=b"bad-2")
    await producer.send_and_wait(
        topic, envelope("late-1", now, [(now - 100, {"temp": 1.0})]), key=b"late-1"
    )
    await producer.send_and_wait(topic, envelope("ok-1", now, [(now, {"temp": 1.0})]), key=b"ok-1")

    def enough(got: list[bytes]) -> bool:
        return len(got) >= 3

    got = await read_topic(ae.bootstrap, ae.topics.telemetry_deadletter, until=enough)
    reasons = sorted(deadletter_decoder.decode(g).reason for g in got)
    assert reasons == ["invalid_schema", "late", "undecodable"]
    late = next(deadletter_decoder.decode(g) for g in got if b'"late"' in g)
    assert late.device_id == "late-1" and late.source == "stream-agents"
    w = ae.workers[0]
    text = w.metrics()
    assert 'agents_deadletters_total{reason="late"} 1.0' in text
    assert "agents_late_readings_total 1.0" in text
    assert w.health()["status"] == "ok"

    def has_window(got: list[bytes]) -> bool:
        return any(window_decoder.decode(g).device_id == "ok-1" for g in got)

    windows = await read_topic(ae.bootstrap, ae.topics.stats_windows, until=has_window)
    ok = [window_decoder.decode(g) for g in windows if window_decoder.decode(g).device_id == "ok-1"]
    assert ok and isinstance(ok[0], WindowStats) and ok[0].count == 1
    assert msgspec.json.decode(windows[0])["metric"]
