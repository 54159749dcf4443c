"""While a sink (the store, Kafka) is unavailable: retry what it refused, hold the batch loop.

A sink that cannot take writes for now raises :class:`~iot_common.stream_errors.
SinkBackpressureError` (the publisher does; :func:`store_backpressure` turns the store's
outage errors into it). :meth:`Backpressure.call` waits ``retry_after`` and tries again, as
often as it takes, and meanwhile :attr:`Backpressure.engaged` tells the batch loop to fetch
nothing more. Nothing is dropped and nothing is replayed: the rows already taken stay in
memory, the offsets stay uncommitted until everything they cover is written, and the loop
resumes where it stopped once the sink is back. An error that is not an outage (data the
store will never take, a bug) is not retried here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from prometheus_client import Counter, Gauge

from iot_common.stream_errors import SinkBackpressureError
from monitoring_store.errors import store_unavailable_errors

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKPRESSURE = Counter(
    "agents_sink_backpressure_total",
    "Sink writes retried because the sink was unavailable",
    ["sink"],
)
HELD = Gauge("agents_sink_backpressure_held", "Sink writes waiting for their sink")

#: First wait before retrying; doubled on every failure up to ``max_retry_after``.
FIRST_RETRY_AFTER = 0.2


@contextlib.contextmanager
def store_backpressure(retry_after: float = FIRST_RETRY_AFTER) -> Iterator[None]:
    """Re-raise the store's outage errors as :class:`SinkBackpressureError`."""
    try:
        yield
    except store_unavailable_errors() as exc:
        raise SinkBackpressureError(
            f"store unavailable: {type(exc).__name__}: {exc}", sink="store", retry_after=retry_after
        ) from exc


class Backpressure:
    """Retries sink writes through outages and tells the batch loop when to hold."""

    def __init__(
        self,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        max_retry_after: float = 5.0,
    ) -> None:
        self._should_stop = should_stop
        self.max_retry_after = max_retry_after
        self._held = 0
        self._released = asyncio.Event()
        self._released.set()
        #: The sink that pushed back last and since when (wall clock), while engaged.
        self.sink: str | None = None
        self.since: float | None = None

    @property
    def engaged(self) -> bool:
        return self._held > 0

    async def released(self) -> None:
        await self._released.wait()

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()`` until it succeeds, waiting out :class:`SinkBackpressureError`s.

        Gives up (re-raises) only when the worker is stopping: what was not written then is
        not committed either, and the next owner of the partitions replays it.
        """
        delay = FIRST_RETRY_AFTER
        held = False
        try:
            while True:
                try:
                    return await op()
                except SinkBackpressureError as exc:
                    if self._should_stop():
                        raise
                    BACKPRESSURE.labels(exc.sink).inc()
                    if not held:
                        held = True
                        self._hold(exc)
                    wait = min(max(exc.retry_after, delay), self.max_retry_after)
                    delay = min(delay * 2, self.max_retry_after)
                await asyncio.sleep(wait)
        finally:
            if held:
                self._release()

    async def store(self, op: Callable[[], Awaitable[T]]) -> T:
        """:meth:`call` for a store operation (its outage errors become backpressure)."""

        async def attempt() -> T:
            with store_backpressure():
                return await op()

        return await self.call(attempt)

    def _hold(self, exc: SinkBackpressureError) -> None:
        if not self._held:
            log.warning("%s; holding input and retrying until it is back", exc)
            self.since = time.time()
            self._released.clear()
        self._held += 1
        self.sink = exc.sink
        HELD.set(self._held)

    def _release(self) -> None:
        self._held -= 1
        HELD.set(self._held)
        if not self._held:
            log.warning(
                "%s is back after %.1fs; resuming", self.sink, time.time() - (self.since or 0.0)
            )
            self.sink = self.since = None
            self._released.set()
