"""Window-rule history of the devices a worker owns, rebuilt from the stored closed windows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from monitoring_store.base import MonitoringStore
from stream_agents.alerts import AGGREGATES, AlertEngine, ClosedWindow, closed_windows

log = logging.getLogger(__name__)

#: Stored-window queries in flight at once while seeding.
_CONCURRENCY = 8


class AlertHistory:
    """Seeds consecutive hits and previous means (:meth:`AlertEngine.seed`) so that a
    restart or a rebalance does not reset "N consecutive windows"."""

    def __init__(
        self, *, store: MonitoringStore, engine: AlertEngine, owns_device: Callable[[str], bool]
    ) -> None:
        self.store = store
        self.engine = engine
        self.owns_device = owns_device

    async def seed(self) -> None:
        engine = self.engine
        store = self.store
        queries = engine.history_queries(self.owns_device)
        if not queries:
            return
        now = time.time()
        sem = asyncio.Semaphore(_CONCURRENCY)

        async def fetch(dev: str, metric: str, size: int, n: int) -> list[ClosedWindow]:
            async with sem:
                ws = await store.query_windows(
                    dev,
                    metrics=[metric],
                    window_seconds=size,
                    start=now - max(3600.0, size * (n + 1) * 20.0),
                    end=4e9,
                )
            last = [w for w in ws if w.final][-(n + 1) :]
            return closed_windows(
                [w.device_id for w in last],
                [w.metric for w in last],
                [w.window_seconds for w in last],
                [w.window_start for w in last],
                {a: [getattr(w, a) for w in last] for a in AGGREGATES},
            )

        try:
            found = await asyncio.gather(*(fetch(*q) for q in queries))
        except Exception:
            log.exception("could not rebuild alert rule history from the store")
            return
        windows = [w for ws in found for w in ws]
        engine.seed(windows)
        log.info(
            "alert rule history rebuilt from %d stored windows (%d series)",
            len(windows),
            len(queries),
        )
