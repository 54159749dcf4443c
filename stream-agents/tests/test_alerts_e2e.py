"""Alert rules end to end: device.events → rules (stored) → windows → alerts (store + topic).

Readings use event and ingest times a few minutes in the future, so windows close only when
the test's own readings move each partition's ingest clock past them (never by the wall
clock): every step below is deterministic. Both tests run on each store backend.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from typing import Any

import msgspec
from agents_testkit import AgentEnv, both_backends, envelope, read_topic, wait_for

from iot_common.events import Alert, DeviceEvent, alert_decoder
from monitoring_store.base import MonitoringStore


def device_event(device_id: str, rules: list[dict[str, Any]], *, version: int, kind: str) -> bytes:
    return msgspec.json.encode(
        DeviceEvent(
            event_id=str(uuid.uuid4()),
            event_type=kind,
            device_id=device_id,
            timestamp=time.time(),
            owner_id="owner-1",
            device={
                "id": device_id,
                "name": device_id,
                "type": "sensor",
                "config": {"metrics": [], "rules": rules},
                "active": True,
                "owner_id": "owner-1",
                "config_version": version,
            },
        )
    )


class Scenario:
    def __init__(self, ae: AgentEnv, producer: Any, store: MonitoringStore) -> None:
        self.ae = ae
        self.producer = producer
        self.store = store
        self.base = math.ceil(time.time() / 60) * 60 + 600.0

    async def rules(self, device: str, rules: list[dict[str, Any]], version: int = 1) -> None:
        kind = "device.created" if version == 1 else "device.updated"
        await self.producer.send_and_wait(
            self.ae.topics.device_events,
            device_event(device, rules, version=version, kind=kind),
            key=device.encode(),
        )

        async def stored() -> bool:
            got = {r.device_id: r for r in await self.store.load_device_rules()}
            return device in got and got[device].version == version

        assert await wait_for(stored, timeout=20), "agents did not store the device's rules"

    async def window(
        self, device: str, k: int, metrics: dict[str, float], *, at: float = 0.0
    ) -> None:
        """One reading in window k (10 s windows from ``base + at``); it closes window k-1.

        Each device's scenario starts after the previous one's (``at``), so that ingest time
        only moves forward in every partition, as it does when the bridge produces.
        """
        t = self.base + at + 10 * k + 5
        await self.producer.send_and_wait(
            self.ae.topics.telemetry_raw,
            envelope(device, t + 0.1, [(t, metrics)]),
            key=device.encode(),
        )

    async def alerts(self, device: str) -> list[Alert]:
        return sorted(
            await self.store.query_alerts(device_ids=[device], limit=100),
            key=lambda a: a.started_at,
        )

    async def wait_alerts(self, device: str, expect: list[tuple[float, str]]) -> list[Alert]:
        """Wait until the device's alerts are exactly ``expect`` [(started_at, status)]."""
        got: list[Alert] = []

        async def check() -> bool:
            nonlocal got
            got = await self.alerts(device)
            return [(a.started_at, a.status) for a in got] == expect

        assert await wait_for(check, timeout=25), [
            (a.started_at - self.base, a.status) for a in got
        ]
        return got

    async def user(self, alert: Alert, status: str) -> None:
        """What the monitoring API does on ack/clear: store transition + produce the state."""
        new = await self.store.transition_alert(
            alert.alert_id, status=status, by="user-1", at=time.time()
        )
        assert new is not None and new.status == status
        await self.producer.send_and_wait(
            self.ae.topics.alerts, msgspec.json.encode(new), key=alert.device_id.encode()
        )

    async def agent_saw_alert_records(self, n: int) -> None:
        w = self.ae.workers[0]

        async def seen() -> bool:
            for line in w.metrics().splitlines():
                if line.startswith("agents_alert_records_total "):
                    return float(line.split()[1]) >= n
            return False

        assert await wait_for(seen, timeout=20)


@both_backends
async def test_alert_rules_lifecycle(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    ae = agent_env_factory()
    w = ae.start_worker()
    ae.wait_ready(w)
    store = await store_factory(ae.store_url)
    sc = Scenario(ae, producer, store)
    run = secrets.token_hex(3)
    hot, jumpy, quiet, tuned = (f"{n}-{run}" for n in ("hot", "jumpy", "quiet", "tuned"))

    await sc.rules(
        hot,
        [
            {
                "type": "threshold",
                "id": "too-hot",
                "metric": "temp",
                "op": "above",
                "value": 50,
                "consecutive_windows": 2,
                "window_seconds": 10,
                "severity": "critical",
            }
        ],
    )
    await sc.rules(
        jumpy,
        [
            {
                "type": "rate_of_change",
                "id": "jump",
                "metric": "hum",
                "max_change_per_second": 1.0,
                "window_seconds": 10,
            }
        ],
    )
    await sc.rules(quiet, [{"type": "silent", "id": "quiet", "seconds": 2, "severity": "info"}])
    below = {
        "type": "threshold",
        "id": "cold",
        "metric": "temp",
        "op": "below",
        "value": 0,
        "window_seconds": 10,
    }
    await sc.rules(tuned, [below])
    b = sc.base

    # -- threshold above for 2 consecutive windows; ack holds; condition end clears ---------
    for k, temp in enumerate([60, 70, 80]):
        await sc.window(hot, k, {"temp": temp})
    first = (await sc.wait_alerts(hot, [(b + 20, "active")]))[0]
    assert first.severity == "critical" and first.rule_type == "threshold"
    assert first.alert_id == str(uuid.uuid5(uuid.NAMESPACE_URL, f"{hot}/too-hot/{b + 20}"))
    await sc.user(first, "acknowledged")
    await sc.agent_saw_alert_records(2)  # its own "active" + the user's ack
    await sc.window(hot, 3, {"temp": 20})  # closes window 2 (80): still above, stays acked
    await sc.window(hot, 4, {"temp": 60})  # closes window 3 (20): condition over → cleared
    await sc.wait_alerts(hot, [(b + 20, "cleared")])

    # -- a user-cleared alert whose condition still holds opens a new alert -------------------
    await sc.window(hot, 5, {"temp": 60})  # closes 4 (60): 1 window above
    await sc.window(hot, 6, {"temp": 60})  # closes 5 (60): 2 windows above → new alert
    second = (await sc.wait_alerts(hot, [(b + 20, "cleared"), (b + 60, "active")]))[1]
    await sc.user(second, "cleared")
    await sc.agent_saw_alert_records(5)
    await sc.window(hot, 7, {"temp": 20})  # closes 6 (60): still above → a new alert
    third = (
        await sc.wait_alerts(hot, [(b + 20, "cleared"), (b + 60, "cleared"), (b + 70, "active")])
    )[2]
    assert third.alert_id != second.alert_id
    await sc.window(hot, 8, {"temp": 20})  # closes 7 (20)
    await sc.wait_alerts(hot, [(b + 20, "cleared"), (b + 60, "cleared"), (b + 70, "cleared")])

    # -- rate of change between consecutive windows -----------------------------------------
    for k, hum in enumerate([10, 100, 100, 100]):
        await sc.window(jumpy, k, {"hum": hum}, at=100)
    # (100 - 10) / 10 s = 9/s > 1/s at window 1; window 2 changes 0/s → cleared.
    [jump] = await sc.wait_alerts(jumpy, [(b + 120, "cleared")])
    assert jump.rule_type == "rate_of_change" and jump.value == 9.0

    # -- device silent for T seconds (wall clock), cleared when it reports again --------------
    now = time.time()
    await producer.send_and_wait(
        ae.topics.telemetry_raw, envelope(quiet, now, [(now, {"x": 1.0})]), key=quiet.encode()
    )

    async def silent_active() -> list[Alert]:
        return [a for a in await sc.alerts(quiet) if a.status == "active"]

    [silent] = await wait_for(silent_active, timeout=20)
    assert silent.rule_type == "silent" and silent.severity == "info"
    now = time.time()
    await producer.send_and_wait(
        ae.topics.telemetry_raw, envelope(quiet, now, [(now, {"x": 1.0})]), key=quiet.encode()
    )

    async def silent_cleared() -> bool:
        return any(
            a.alert_id == silent.alert_id and a.status == "cleared" for a in await sc.alerts(quiet)
        )

    assert await wait_for(silent_cleared, timeout=20)

    # -- rules changed through device.events apply without a restart -------------------------
    await sc.window(tuned, 0, {"temp": -5}, at=200)
    await sc.window(tuned, 1, {"temp": -5}, at=200)  # closes 0: below 0 → alert
    await sc.wait_alerts(tuned, [(b + 210, "active")])
    await sc.rules(tuned, [{**below, "value": -10}], version=2)
    await sc.window(tuned, 2, {"temp": -5}, at=200)  # closes 1 (-5): not below -10 → cleared
    await sc.wait_alerts(tuned, [(b + 210, "cleared")])

    # -- every state change went to the alerts topic; an acknowledged alert never went back --
    def enough(got: list[bytes]) -> bool:
        return sum(1 for g in got if alert_decoder.decode(g).device_id == hot) >= 5

    records = [
        alert_decoder.decode(g)
        for g in await read_topic(ae.bootstrap, ae.topics.alerts, until=enough)
    ]
    states = [a.status for a in records if a.alert_id == first.alert_id]
    assert states[:2] == ["active", "acknowledged"] and states[-1] == "cleared"
    assert "active" not in states[2:]
    assert w.health()["status"] == "ok"


@both_backends
async def test_consecutive_windows_count_across_a_sigkill(
    agent_env_factory: Any, producer: Any, store_factory: Any
) -> None:
    """Hot windows 4 and 5 are closed, stored and committed; the worker is SIGKILLed; after
    the restart the hot window 6 is the third consecutive one and fires (the restarted worker
    rebuilds the rule's history from the stored windows instead of starting from zero)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    ae = agent_env_factory()
    w = ae.start_worker()
    ae.wait_ready(w)
    store = await store_factory(ae.store_url)
    sc = Scenario(ae, producer, store)
    dev = f"streak-{secrets.token_hex(3)}"
    rule = {
        "type": "threshold",
        "id": "streak",
        "metric": "temp",
        "op": "above",
        "value": 50,
        "consecutive_windows": 3,
        "window_seconds": 10,
    }
    await sc.rules(dev, [rule])
    b = sc.base  # a multiple of 60: windows 0-5 form the first 60 s unit
    topic = ae.topics.telemetry_raw

    async def send(t: float, ingest: float, metrics: dict[str, float]) -> Any:
        return await producer.send_and_wait(
            topic, envelope(dev, ingest, [(t, metrics)]), key=dev.encode()
        )

    await send(b + 45, b + 45.1, {"temp": 60})  # window 4
    last_unit1 = await send(b + 55, b + 55.1, {"temp": 70})  # window 5
    # Another metric moves the partition's ingest clock past window 5's unit end + lateness +
    # slack (5 + 5 s): windows 4 and 5 close, the first unit is dropped and committed.
    await send(b + 71, b + 71.1, {"other": 1})

    async def stored_final() -> bool:
        ws = await store.query_windows(
            dev, metrics=["temp"], window_seconds=10, start=b, end=b + 60
        )
        return len([x for x in ws if x.final]) == 2

    assert await wait_for(stored_final, timeout=25)
    c = AIOKafkaConsumer(bootstrap_servers=ae.bootstrap, group_id=ae.app_id)
    await c.start()
    try:
        tp = TopicPartition(topic, last_unit1.partition)

        async def committed_past_unit1() -> bool:
            off = await c.committed(tp)
            return off is not None and off > last_unit1.offset

        assert await wait_for(committed_past_unit1, timeout=25)
    finally:
        await c.stop()
    assert await sc.alerts(dev) == []  # 2 hot windows of 3
    w.kill()
    w2 = ae.start_worker()
    ae.wait_ready(w2)
    # Window 6 (ends b + 70), 1.2 s after its end: inside the allowed lateness (5 s).
    await send(b + 65, b + 71.2, {"temp": 80})
    await send(b + 85, b + 85.1, {"other": 1})  # moves the clock on: window 6 final
    got = await sc.wait_alerts(dev, [(b + 70, "active")])
    assert got[0].rule_id == "streak" and got[0].value == 80
