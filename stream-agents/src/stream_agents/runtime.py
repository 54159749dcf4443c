"""One worker's services, built complete and started and stopped in dependency order.

The shape of faust's own ``mode.Service`` tree: each concern is one service (the assignment,
the telemetry batch loop, alert history, device rules, the alerts feed, backpressure, the
publisher, the store); the runtime starts them in order and stops them in reverse, as a
service starts and stops its children. Faust drives it (:mod:`stream_agents.app`): its
agents, timers and rebalance callbacks call the methods here. The services are plain objects
rather than ``mode.Service`` subclasses: none runs a task of its own (Faust's agents and
timers run them, and Faust's supervisor restarts a crashed agent), so all they need of a
service is a start and a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP

from iot_common.stream_errors import (
    ProcessingErrorCallback,
    RecordRef,
    SinkBackpressureError,
    default_on_processing_error,
)
from iot_common.telemetry import DeadLetterReason
from monitoring_store.base import MonitoringStore
from stream_agents.alert_feed import AlertFeed
from stream_agents.alerts import AlertEngine
from stream_agents.assignment import Assignment
from stream_agents.backpressure import Backpressure
from stream_agents.batch_consumer import BatchFetcher
from stream_agents.config import AgentSettings
from stream_agents.deadletters import DeadLetterKeeper
from stream_agents.decode import BadRecord
from stream_agents.device_rules import EVENTS, DeviceRulesSync
from stream_agents.history import AlertHistory
from stream_agents.pipeline import TelemetryPipeline
from stream_agents.publisher import PublisherService
from stream_agents.telemetry_loop import TelemetryLoop
from stream_agents.windows import WindowConfig

log = logging.getLogger(__name__)


class Runtime:
    """What the agents share: store, publisher, pipeline, alert engine, assignment."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        store: MonitoringStore,
        publisher: PublisherService,
        fetcher: BatchFetcher,
        should_stop: Callable[[], bool],
        on_processing_error: ProcessingErrorCallback = default_on_processing_error,
    ) -> None:
        s = settings
        self.settings = s
        self.store = store
        self.publisher = publisher
        self.fetcher = fetcher
        self.assignment = Assignment(topic=s.topics.telemetry_raw, partitions=s.topic_partitions)
        self.engine = AlertEngine(default_rules=dict(s.default_rules))
        self.backpressure = Backpressure(should_stop=should_stop)
        self.pipeline = TelemetryPipeline(
            store=store,
            publisher=publisher,
            topics=s.topics,
            window_config=WindowConfig(
                sizes=tuple(s.window_sizes),
                allowed_lateness=s.allowed_lateness,
                reorder_slack=s.reorder_slack,
                idle_close_after=s.idle_close_seconds,
                open_update_fraction=s.open_update_fraction,
            ),
            raw_samples=s.raw_samples,
            alerts=self.engine,
            backpressure=self.backpressure,
            on_processing_error=on_processing_error,
        )
        self.telemetry = TelemetryLoop(
            fetcher=fetcher,
            pipeline=self.pipeline,
            assignment=self.assignment,
            batch_timeout=s.batch_timeout,
            batch_max_records=s.batch_max_records,
            should_stop=should_stop,
        )
        self.history = AlertHistory(
            store=store, engine=self.engine, owns_device=self.assignment.owns_device
        )
        self.rules = DeviceRulesSync(
            store=store, engine=self.engine, backpressure=self.backpressure
        )
        self.alert_feed = AlertFeed(engine=self.engine)
        self.deadletters = DeadLetterKeeper(store=store, backpressure=self.backpressure)
        self.on_processing_error = on_processing_error
        #: Set once started: the agents of the input topics wait for it.
        self.ready = asyncio.Event()
        #: Store and publisher connected and rules loaded: from here on assignments go to
        #: the pipeline straight away and the timers do their work.
        self._started = False
        self._stack = contextlib.AsyncExitStack()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        self._stack.push_async_callback(self.store.close)
        await self.publisher.start()
        self._stack.push_async_callback(self.publisher.stop)
        await self.rules.load()
        self._stack.push_async_callback(self._drain)
        self._started = True
        await self._apply_assignment()
        self.ready.set()
        log.info(
            "stream agents ready: %d device rule sets, windows %s",
            len(self.engine.devices),
            self.settings.window_sizes,
        )

    async def stop(self) -> None:
        """Stop what :meth:`start` started, in reverse order."""
        await self._stack.aclose()

    async def _drain(self) -> None:
        try:
            await self.pipeline.drain()
        except Exception:
            log.exception("pending raw-sample writes failed at shutdown")

    # -- assignment (Faust callbacks) --------------------------------------------------------
    async def on_assigned(self, assigned: set[TP]) -> None:
        a = self.assignment
        a.assign(assigned, n_partitions=self.fetcher.topic_partitions(a.topic))
        if self._started:
            await self._apply_assignment()
        a.paused = False
        log.info("telemetry partitions assigned: %s", sorted(a.owned))

    async def on_revoked(self, revoked: set[TP]) -> None:
        self.assignment.paused = True

    async def _apply_assignment(self) -> None:
        async with self.pipeline.lock:
            self.pipeline.assign(self.assignment.owned)
        await self.history.seed()

    # -- agents and timers -------------------------------------------------------------------
    async def run_telemetry(self) -> None:
        await self.ready.wait()
        await self.telemetry.run()

    async def tick(self) -> None:
        if self._started:
            await self.telemetry.tick()

    async def check_silent(self) -> None:
        if not self._started or self.assignment.paused:
            return
        changes = self.engine.check_silent(time.time(), self.assignment.owns_device)
        if changes:
            await self.pipeline.publish_alerts(changes)

    async def on_device_event(self, raw: bytes, where: RecordRef) -> None:
        """One ``device.events`` record; one that raises (not an outage: those are waited
        out) goes to the error callback and, by default, to the dead letters."""
        try:
            await self.rules.on_event(raw)
        except SinkBackpressureError:
            raise  # stopping while the store is down: not the record's fault
        except Exception as exc:
            if not self.on_processing_error(exc, where, log):
                raise
            EVENTS.labels("failed").inc()
            detail = f"{type(exc).__name__}: {exc}"[:500]
            await self.pipeline.dead_letter(
                [
                    BadRecord(
                        where.offset or 0,
                        raw,
                        DeadLetterReason.PROCESSING_ERROR,
                        detail,
                        where.device_id,
                    )
                ]
            )

    async def on_deadletters(self, refs: Sequence[RecordRef]) -> None:
        """A batch of ``telemetry.deadletter`` records, kept for the devices' owners."""
        await self.deadletters.keep(refs)

    async def reload_rules(self) -> None:
        if self._started:
            await self.rules.reload()

    async def enforce_retention(self) -> None:
        s = self.settings
        if self._started and s.raw_samples:
            before = time.time() - s.raw_retention_seconds
            n = await self.backpressure.store(lambda: self.store.delete_samples_before(before))
            log.info("raw-sample retention removed %d samples", n)
        if self._started:
            before = time.time() - s.deadletter_retention_seconds
            n = await self.deadletters.enforce_retention(before)
            log.info("dead-letter retention removed %d refused messages", n)

    def health(self) -> dict[str, Any]:
        last_tick = self.telemetry.last_tick
        bp = self.backpressure
        return {
            "status": "ok" if self.ready.is_set() else "starting",
            "partitions": sorted(self.assignment.owned),
            "counts": vars(self.pipeline.counts) if self._started else {},
            "last_tick_age": round(time.time() - last_tick, 3) if last_tick else None,
            # While a sink is down the worker holds its input (and is alive: not a 503).
            "backpressure": {"sink": bp.sink, "since": bp.since} if bp.engaged else None,
        }
