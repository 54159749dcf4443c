"""Devices' alert rules: loaded from the store, kept current from ``device.events``."""

from __future__ import annotations

import logging
import time
from functools import partial

import msgspec
from prometheus_client import Counter

from iot_common.events import Alert, AlertStatus, DeviceEvent, device_event_decoder
from monitoring_store.base import DeviceRules, MonitoringStore
from stream_agents.alerts import AlertEngine
from stream_agents.backpressure import Backpressure

log = logging.getLogger(__name__)

EVENTS = Counter("agents_device_events_total", "device.events records", ["outcome"])

_LIFECYCLE = ("device.created", "device.updated")


def device_rules_from(event: DeviceEvent) -> DeviceRules | None:
    """The rules a device has after ``event``; None for events that do not change them."""
    dev = event.device or {}
    if event.event_type in _LIFECYCLE and dev:
        active = bool(dev.get("active", True))
    elif event.event_type == "device.deleted":
        active = False
    else:
        return None
    return DeviceRules(
        device_id=event.device_id,
        owner_id=dev.get("owner_id", event.owner_id),
        device_type=dev.get("type"),
        config=dev.get("config") or {},
        version=int(dev.get("config_version") or 0),
        active=active,
    )


class DeviceRulesSync:
    """Keeps the alert engine's rule sets (and the store's copy) in step with the devices."""

    def __init__(
        self, *, store: MonitoringStore, engine: AlertEngine, backpressure: Backpressure
    ) -> None:
        self.store = store
        self.engine = engine
        self.backpressure = backpressure

    async def load(self) -> None:
        """Every device's rules, and the open alerts, as the store has them (at start)."""
        await self.reload()
        for status in (AlertStatus.ACTIVE, AlertStatus.ACKNOWLEDGED):
            self.engine.hydrate(await self.backpressure.store(partial(self._open, status)))

    async def _open(self, status: str) -> list[Alert]:
        return await self.store.query_alerts(status=status, limit=1_000_000)

    async def reload(self) -> None:
        """Rules stored by other workers (for devices whose ``device.events`` partitions they
        consume) reach this one this way."""
        now = time.time()
        for dr in await self.backpressure.store(self.store.load_device_rules):
            self.engine.set_device(dr, now=now)

    async def on_event(self, raw: bytes) -> None:
        """One ``device.events`` record: store and apply the rules it sets."""
        try:
            ev = device_event_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            EVENTS.labels("invalid").inc()
            log.warning("undecodable device event ignored: %s", exc)
            return
        dr = device_rules_from(ev)
        if dr is None:
            EVENTS.labels("ignored").inc()
            return
        await self.backpressure.store(lambda: self.store.upsert_device_rules([dr]))
        self.engine.set_device(dr, now=time.time())
        EVENTS.labels("applied").inc()
