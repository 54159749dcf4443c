"""The batch loop over this worker's ``telemetry.raw`` partitions, its ticks and its commits.

Offsets of ``telemetry.raw`` are committed here, never by Faust's ack tracking, and only up to
what :class:`~stream_agents.pipeline.TelemetryPipeline` reports durable in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from faust.types import TP

from stream_agents.assignment import Assignment
from stream_agents.batch_consumer import BatchFetcher, RecordBatches
from stream_agents.pipeline import TelemetryPipeline

log = logging.getLogger(__name__)


class TelemetryLoop:
    """Fetches whole record batches, hands them to the pipeline, ticks and commits.

    An error the pipeline raises (one an error callback chose to raise, a write the store
    refused, a bug) is not caught here: it ends :meth:`run`, Faust's supervisor restarts the
    agent, and the new run first puts every partition of the interrupted fetch back to its
    first record not handled (:attr:`unhandled`), so that nothing is skipped; the offsets stay
    uncommitted meanwhile. The same holds when the agent is cancelled mid-fetch.
    """

    def __init__(
        self,
        *,
        fetcher: BatchFetcher,
        pipeline: TelemetryPipeline,
        assignment: Assignment,
        batch_timeout: float,
        batch_max_records: int,
        should_stop: Callable[[], bool],
    ) -> None:
        self.fetcher = fetcher
        self.pipeline = pipeline
        self.assignment = assignment
        self.batch_timeout = batch_timeout
        self.batch_max_records = batch_max_records
        self._should_stop = should_stop
        self.last_tick = 0.0
        self._tick_lock = asyncio.Lock()
        #: Partitions of the fetch being handled → their first offset the pipeline has not
        #: handled yet (the consumer's position is already past them).
        self.unhandled: dict[TP, int] = {}

    async def run(self) -> None:
        pipeline = self.pipeline
        assignment = self.assignment
        self._put_back("the previous run of the batch loop stopped before handling it")
        while not self._should_stop():
            tps = assignment.tps
            if assignment.paused or not tps:
                await asyncio.sleep(0.05)
                continue
            if pipeline.backpressure.engaged:
                # A sink is down: fetch nothing more until what was taken is written.
                await pipeline.backpressure.released()
                continue
            fetched = await self.fetcher.fetch(
                tps, max_wait=self.batch_timeout, max_records=self.batch_max_records
            )
            if fetched is None:
                await asyncio.sleep(0.05)
                continue
            for tp in tps:
                st = pipeline.partitions.get(tp.partition)
                if st is not None:
                    hw = fetched.highwater(tp)
                    st.caught_up = (
                        hw is not None and st.next_offset is not None and st.next_offset >= hw
                    )
            records = fetched.records
            if not records:
                continue
            self.unhandled = {tp: recs[0].offset for tp, recs in records.items()}
            async with pipeline.lock:
                if assignment.paused:
                    # A rebalance started while fetching: put the records back so that a
                    # partition kept by this worker resumes exactly here.
                    self._put_back()
                    continue
                await self._handle(records)

    async def _handle(self, records: RecordBatches) -> None:
        pipeline = self.pipeline
        topic = self.assignment.topic
        for tp, recs in records.items():
            if tp.topic == topic and tp.partition in pipeline.partitions:
                await pipeline.handle(tp.partition, recs)
            del self.unhandled[tp]

    def _put_back(self, why: str | None = None) -> None:
        """Seek the owned partitions of :attr:`unhandled` back (the next fetch reads them
        again; the pipeline skips what it already covers)."""
        owned = self.assignment.owned
        back = {tp: o for tp, o in self.unhandled.items() if tp.partition in owned}
        self.unhandled = {}
        if why is not None:
            for tp, offset in back.items():
                log.warning("resuming %s[%d] at offset %d: %s", tp.topic, tp.partition, offset, why)
        self.fetcher.seek(back)

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        """Commit the owned partitions' offsets (the pipeline's committer)."""
        if self.assignment.paused:
            return False
        owned = self.assignment.owned
        return await self.fetcher.commit(
            self.assignment.topic, {p: o for p, o in offsets.items() if p in owned}
        )

    async def tick(self) -> None:
        if self.assignment.paused:
            return
        async with self._tick_lock:
            await self.pipeline.tick(self.commit)
        self.last_tick = time.time()
