"""The agents as a user runs them: worker processes, Tansu, the monitoring store.

Every stored window is compared with a numpy reference computed from the readings produced,
after out-of-order, late and re-sent (duplicate) readings, a SIGKILL + restart, and a
rebalance between workers; the SIGKILL and rebalance cases on both store backends.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import msgspec
import numpy as np
import pytest
from agents_testkit import (
    AgentEnv,
    Readings,
    both_backends,
    envelope,
    produce,
    read_topic,
    synth,
    wait_for,
    wait_windows,
)
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from iot_common.events import WindowStats, window_decoder
from iot_common.telemetry import deadletter_decoder


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
@both_backends
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


@both_backends
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
