"""The telemetry hot path: record batches → rows → windows → store, topics, alerts, commits.

Independent of Faust: the app hands in record batches per partition (``handle``), calls
``tick`` every ``emit_interval`` seconds, and gives a ``commit`` callable. Everything a tick
emits is durable (store writes awaited, produced records acknowledged) before the offsets it
covers are committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from iot_common.events import Alert, WindowStats
from iot_common.stream_errors import (
    ProcessingErrorCallback,
    RecordRef,
    default_on_processing_error,
)
from iot_common.telemetry import DeadLetter, DeadLetterReason
from iot_common.topics import Topics
from monitoring_store.base import MonitoringStore, SampleBatch
from stream_agents.alerts import AGGREGATES, AlertEngine, ClosedWindow, closed_windows
from stream_agents.backpressure import Backpressure
from stream_agents.decode import (
    BadRecord,
    DecodedBatch,
    DecodedEnvelope,
    SeriesTable,
    decode_records,
)
from stream_agents.publisher import Publisher
from stream_agents.windows import (
    PartitionWindows,
    TickContext,
    TickInput,
    WindowBatch,
    WindowConfig,
    empty_windows,
)

log = logging.getLogger(__name__)

READINGS = Counter("agents_readings_total", "Readings accepted into windows")
RECORDS = Counter("agents_records_total", "telemetry.raw records processed")
LATE = Counter("agents_late_readings_total", "Readings later than the allowed lateness")
DEADLETTERS = Counter("agents_deadletters_total", "Records dead-lettered", ["reason"])
WINDOWS = Counter("agents_windows_emitted_total", "Window statistics emitted", ["final"])
SAMPLES = Counter("agents_raw_samples_written_total", "Raw samples written to the store")
ALERTS = Counter("agents_alert_changes_total", "Alert state changes", ["status"])
COMMITS = Counter("agents_commits_total", "Offset commits")
RETAINED = Gauge("agents_retained_rows", "Rows held for open or correctable windows")
TICK = Histogram("agents_tick_seconds", "Duration of one emit/commit tick")
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Per fetched batch, from its oldest record's produce time (the bridge's) to the moment named.
FETCH_LAG = Histogram(
    "agents_fetch_lag_seconds",
    "Produced → handed to the pipeline (oldest record)",
    buckets=_LAG_BUCKETS,
)
STORED_LAG = Histogram(
    "agents_stored_lag_seconds",
    "Produced → raw samples stored (oldest record)",
    buckets=_LAG_BUCKETS,
)

#: Closed windows per store write, and how many such writes a worker has in flight: two
#: connections use both cores of the 2-core machine (one statement runs on one); more only
#: queue on the server.
WINDOW_WRITE_CHUNK = 10_000
WINDOW_WRITES_IN_FLIGHT = 2

_dl_encode = msgspec.json.Encoder().encode
_enc = msgspec.json.Encoder().encode


Committer = Callable[[Mapping[int, int]], Awaitable[bool]]


@dataclass
class Counts:
    records: int = 0
    readings: int = 0
    late: int = 0
    deadletters: int = 0
    windows_final: int = 0
    windows_open: int = 0
    samples: int = 0
    alerts: int = 0
    commits: int = 0


@dataclass(slots=True)
class PreparedTick:
    """One tick: each partition's taken rows, the raw-sample writes and pending alert changes
    it covers, then what it computed (windows, alert changes, committable offsets)."""

    parts: list[tuple[int, PartitionWindows, TickInput]]
    writes: list[asyncio.Task[None]]
    alerts: list[Alert]
    offsets: dict[int, tuple[PartitionWindows, int]] = field(default_factory=dict)
    windows: WindowBatch = field(default_factory=empty_windows)
    cpu_seconds: float = 0.0


@dataclass
class TelemetryPipeline:
    store: MonitoringStore
    publisher: Publisher
    topics: Topics
    window_config: WindowConfig = field(default_factory=WindowConfig)
    raw_samples: bool = True
    alerts: AlertEngine = field(default_factory=AlertEngine)
    table: SeriesTable = field(default_factory=SeriesTable)
    partitions: dict[int, PartitionWindows] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    #: Retries the store and Kafka through outages (and holds the batch loop meanwhile).
    backpressure: Backpressure = field(default_factory=Backpressure)
    #: Asked what to do with a record whose decoding raised (True: dead-letter it).
    on_processing_error: ProcessingErrorCallback = default_on_processing_error
    #: Outstanding raw-sample writes (awaited before any commit).
    _writes: list[asyncio.Task[None]] = field(default_factory=list)
    #: Alert changes found on the hot path (silent alerts cleared), published at the tick.
    pending_alerts: list[Alert] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Bounds the window writes in flight (a tick's sizes and chunks share it).
    _window_writes: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(WINDOW_WRITES_IN_FLIGHT)
    )

    # -- assignment ------------------------------------------------------------------------
    def assign(self, partitions: set[int]) -> None:
        """The partitions of telemetry.raw this worker owns now; others' state is dropped
        (their new owner replays them from the committed offset)."""
        for p in list(self.partitions):
            if p not in partitions:
                del self.partitions[p]
        for p in partitions:
            self.partitions.setdefault(p, PartitionWindows(self.window_config))

    # -- hot path --------------------------------------------------------------------------
    async def handle(self, partition: int, records: Sequence[Any]) -> None:
        """Process one partition's records (in offset order)."""
        state = self.partitions.get(partition)
        if state is None or not records:
            return
        if state.next_offset is not None and records[0].offset < state.next_offset:
            # The consumer was sought back to the committed offset (a rebalance keeping this
            # partition here): what is in memory already covers these records.
            records = [r for r in records if r.offset >= state.next_offset]
            if not records:
                return
        now = time.time()
        produced = records[0].timestamp / 1000.0
        FETCH_LAG.observe(max(0.0, now - produced))
        batch = self._decode(partition, records)
        self.counts.records += batch.records
        RECORDS.inc(batch.records)
        rows = batch.rows
        dead: list[BadRecord] = list(batch.bad)
        if len(rows):
            ok = state.accept_mask(rows.ts, batch.ingest_ts)
            late_readings = 0
            if not ok.all():
                dead.extend(self._late(batch, ~ok, state))
                late_readings = len(np.unique(batch.reading[~ok]))
                self.counts.late += late_readings
                LATE.inc(late_readings)
                rows = rows.take(ok)
                seq = batch.seq[ok]
            else:
                seq = batch.seq
            if self.raw_samples and len(rows):
                dev, met = self.table.arrays()
                samples = SampleBatch(
                    device_id=dev[rows.series],
                    metric=met[rows.series],
                    ts=rows.ts,
                    value=rows.value,
                    seq=seq,
                )
                await self._write_samples(samples, produced)
            self.counts.readings += len(batch.readings) - late_readings
            READINGS.inc(len(rows))
        if dead:
            await self.dead_letter(dead)
        state.add(rows, max_ingest_ts=batch.max_ingest_ts, last_offset=batch.last_offset, wall=now)
        if self.alerts.has_rules():
            self._seen(batch)

    def _decode(self, partition: int, records: Sequence[Any]) -> DecodedBatch:
        """:func:`decode_records`, or, when that raises (not a bad record it knows how to
        dead-letter: a bug it hit), the same batch decoded without the records that make it
        raise, each handed to :attr:`on_processing_error`."""
        try:
            return decode_records(records, self.table)
        except Exception:
            log.warning("decoding %d records raised; finding the records that do", len(records))
        good: list[Any] = []
        failed: list[BadRecord] = []
        for rec in records:
            try:
                decode_records([rec], self.table)
            except Exception as exc:
                ref = RecordRef(
                    self.topics.telemetry_raw, partition, rec.offset, rec.key, rec.value
                )
                if not self.on_processing_error(exc, ref, log):
                    raise
                detail = f"{type(exc).__name__}: {exc}"[:500]
                reason = DeadLetterReason.PROCESSING_ERROR
                failed.append(
                    BadRecord(rec.offset, rec.value or b"", reason, detail, ref.device_id)
                )
            else:
                good.append(rec)
        batch = decode_records(good, self.table)
        batch.bad.extend(failed)
        batch.records = len(records)
        batch.last_offset = records[-1].offset
        return batch

    def _seen(self, batch: DecodedBatch) -> None:
        # Ingest time only grows within a partition: the last envelope per device wins.
        latest = {env.device_id: env.ingest_ts for env, _ in batch.readings}
        changes = [c for d, t in latest.items() if (c := self.alerts.seen(d, t)) is not None]
        if changes:
            self.pending_alerts.extend(changes)

    def _late(
        self, batch: DecodedBatch, late_rows: np.ndarray[Any, Any], state: PartitionWindows
    ) -> list[BadRecord]:
        out: list[BadRecord] = []
        by_record: dict[int, tuple[DecodedEnvelope, list[Any]]] = {}
        offsets = batch.rows.offset
        for ri in np.unique(batch.reading[late_rows]).tolist():
            env, r = batch.readings[ri]
            o = int(offsets[batch.reading == ri][0])
            by_record.setdefault(o, (env, []))[1].append(r)
        lateness = state.config.allowed_lateness
        for o, (env, readings) in by_record.items():
            payload = _enc(DecodedEnvelope(env.device_id, env.source, env.ingest_ts, readings))
            out.append(
                BadRecord(
                    o,
                    payload,
                    DeadLetterReason.LATE,
                    f"{len(readings)} reading(s) arrived more than {lateness:g}s after "
                    "their window closed",
                    env.device_id,
                )
            )
        return out

    async def _write_samples(self, samples: SampleBatch, produced: float) -> None:
        self._writes = [t for t in self._writes if not t.done() or _raise(t)]
        while len(self._writes) >= 2:
            await self._writes[0]
            self._writes.pop(0)
        n = len(samples)

        async def write() -> None:
            await self.backpressure.store(lambda: self.store.insert_samples(samples))
            STORED_LAG.observe(max(0.0, time.time() - produced))
            self.counts.samples += n
            SAMPLES.inc(n)

        self._writes.append(asyncio.create_task(write()))

    async def dead_letter(self, bad: Sequence[BadRecord]) -> None:
        """Produce ``bad`` to ``telemetry.deadletter``, each with its reason, and count them."""
        now = time.time()
        items = []
        for b in bad:
            DEADLETTERS.labels(b.reason).inc()
            dl = DeadLetter(
                reason=b.reason,
                source="stream-agents",
                payload=b.payload,
                ts=now,
                device_id=b.device_id,
                detail=b.detail,
            )
            key = (b.device_id or "").encode()
            items.append((key, _dl_encode(dl)))
            if b.reason != DeadLetterReason.LATE:
                log.warning(
                    "dead-lettered record at offset %s: %s (%s)", b.offset, b.reason, b.detail
                )
        self.counts.deadletters += len(items)
        await self._produce(self.topics.telemetry_deadletter, items)

    # -- emission / commit -------------------------------------------------------------------
    async def tick(self, commit: Committer | None = None, *, live: bool = True) -> None:
        """Emit windows, write them, evaluate alerts, then commit what is durable.

        The window computation runs in worker threads; only taking the partitions' new rows
        holds ``lock``. numpy sorts and reduces with the GIL released, so the hot path keeps
        fetching, decoding and writing raw samples meanwhile instead of stalling for the
        computation. The smaller window sizes are computed first and published while the
        largest is being computed: a tick that closes a 1-minute window (millions of values to
        sort at 50,000 readings/s) does not hold back the 10-second windows closing with it.
        Callers must not run two ticks at once.
        """
        async with self.lock:
            prepared = self._take_tick()
        sizes = self.window_config.sizes
        t0 = time.perf_counter()
        ctxs, small = await asyncio.to_thread(
            self._tick_small, prepared, time.time(), live, sizes[:-1]
        )
        cpu = time.perf_counter() - t0
        early = asyncio.create_task(
            self._publish(small, [*prepared.alerts, *self._window_alerts(small)])
        )
        try:
            t1 = time.perf_counter()
            await asyncio.to_thread(self._tick_large, prepared, ctxs, sizes[-1])
            prepared.cpu_seconds = cpu + time.perf_counter() - t1
        except BaseException:
            await early
            raise
        prepared.alerts = self._window_alerts(prepared.windows)
        await self.finish_tick(prepared, commit, after=early)

    async def _publish(self, windows: WindowBatch, alerts: Sequence[Alert]) -> None:
        if len(windows):
            await self._emit(windows)
        if alerts:
            await self.publish_alerts(alerts)

    def _take_tick(self) -> PreparedTick:
        writes, self._writes = self._writes, []
        changes = self.pending_alerts[:]
        self.pending_alerts.clear()
        parts = [(p, state, state.take()) for p, state in self.partitions.items()]
        return PreparedTick(parts, writes, changes)

    @staticmethod
    def _tick_small(
        prepared: PreparedTick, wall: float, live: bool, sizes: Sequence[int]
    ) -> tuple[list[TickContext], WindowBatch]:
        """Begin every partition's tick and compute the windows of ``sizes``."""
        ctxs = []
        results: list[WindowBatch] = []
        for _, state, inp in prepared.parts:
            ctx = state.begin_tick(wall=wall, live=live, taken=inp)
            ctxs.append(ctx)
            results += [wb for size in sizes if len(wb := state.tick_size(ctx, size))]
        return ctxs, WindowBatch.concat(results)

    @staticmethod
    def _tick_large(prepared: PreparedTick, ctxs: list[TickContext], size: int) -> None:
        """The windows of the largest size, the drops and the commit points of every
        partition (into ``prepared``)."""
        results: list[WindowBatch] = []
        retained = 0
        for (p, state, inp), ctx in zip(prepared.parts, ctxs, strict=True):
            wb = state.tick_size(ctx, size)
            if len(wb):
                results.append(wb)
            retained += state.end_tick(ctx)[1]
            c = state.commit_offset(inp)
            if c is not None and c != state.committed:
                prepared.offsets[p] = (state, c)
        RETAINED.set(retained)
        prepared.windows = WindowBatch.concat(results)

    def _window_alerts(self, wb: WindowBatch) -> list[Alert]:
        """Alert changes from the closed windows in ``wb``."""
        if not self.alerts.has_rules() or not len(wb):
            return []
        return self.alerts.on_windows(self._closed(wb))

    async def finish_tick(
        self,
        prepared: PreparedTick,
        commit: Committer | None,
        *,
        after: Awaitable[None] | None = None,
    ) -> None:
        """The I/O part of a tick: may run while the hot path goes on with new records.

        ``after``: the publishing of this tick's smaller windows, still under way. The larger
        windows are written meanwhile (other rows; the write slots bound both together), and
        their alert changes are published after the smaller windows' ones (one order per
        alert).
        """
        t0 = time.perf_counter()
        emit = asyncio.create_task(self._emit(prepared.windows)) if len(prepared.windows) else None
        try:
            if after is not None:
                await after
        finally:
            if emit is not None:
                await emit
        if prepared.alerts:
            await self.publish_alerts(prepared.alerts)
        # Raw samples of everything covered must be durable before the commit.
        for t in prepared.writes:
            await t
        if commit is not None and prepared.offsets:
            offsets = {p: c for p, (_, c) in prepared.offsets.items()}
            if await commit(offsets):
                for p, (state, c) in prepared.offsets.items():
                    if self.partitions.get(p) is state:
                        state.committed = c
                self.counts.commits += 1
                COMMITS.inc()
        TICK.observe(prepared.cpu_seconds + time.perf_counter() - t0)

    async def publish_alerts(self, changes: Sequence[Alert]) -> None:
        await self.backpressure.store(lambda: self.store.upsert_alerts(changes))
        await self._produce(self.topics.alerts, [(a.device_id.encode(), _enc(a)) for a in changes])
        self.counts.alerts += len(changes)
        for a in changes:
            ALERTS.labels(a.status).inc()

    def _closed(self, wb: WindowBatch) -> list[ClosedWindow]:
        dev, met = self.table.arrays()
        idx = np.flatnonzero(wb.final)
        if not len(idx):
            return []
        devices = self.alerts.devices
        want = np.fromiter((d in devices for d in dev[wb.series[idx]]), bool, len(idx))
        idx = idx[want]
        series = wb.series[idx]
        return closed_windows(
            dev[series].tolist(),
            met[series].tolist(),
            wb.window_seconds[idx].tolist(),
            wb.window_start[idx].tolist(),
            {a: getattr(wb, a)[idx].tolist() for a in AGGREGATES},
        )

    async def _emit(self, wb: WindowBatch) -> None:
        """Store the closed windows of ``wb``, then produce them to ``stats.windows``.

        Open windows are produced at once (they are not stored). Closed ones are written in
        chunks of whole devices, up to :data:`WINDOW_WRITES_IN_FLIGHT` at once, and each chunk
        is produced as soon as it is durable: a tick closing 100,000 windows (the idle close at
        the end of a backlog) used to write them as one statement on one connection and produce
        them only after that.
        """
        now = time.time()
        dev, met = self.table.arrays()
        cols = [
            dev[wb.series].tolist(),
            met[wb.series].tolist(),
            wb.window_seconds.tolist(),
            wb.window_start.tolist(),
            wb.count.tolist(),
            wb.min.tolist(),
            wb.max.tolist(),
            wb.mean.tolist(),
            wb.stddev.tolist(),
            wb.p50.tolist(),
            wb.p95.tolist(),
            wb.last.tolist(),
            wb.last_ts.tolist(),
            wb.final.tolist(),
        ]
        stats = [
            WindowStats(d, m, ws, st, c, lo, hi, mu, sd, p50, p95, la, lt, fin, now)
            for d, m, ws, st, c, lo, hi, mu, sd, p50, p95, la, lt, fin in zip(*cols, strict=True)
        ]
        final = [w for w in stats if w.final]
        opened = [w for w in stats if not w.final]
        self.counts.windows_open += len(opened)
        WINDOWS.labels("false").inc(len(opened))
        jobs = [self._produce_windows(opened)] if opened else []
        jobs += [self._store_windows(chunk) for chunk in device_chunks(final, WINDOW_WRITE_CHUNK)]
        await _all(jobs)

    async def _store_windows(self, windows: list[WindowStats]) -> None:
        async with self._window_writes:
            await self.backpressure.store(lambda: self.store.upsert_windows(windows))
        self.counts.windows_final += len(windows)
        WINDOWS.labels("true").inc(len(windows))
        await self._produce_windows(windows)

    async def _produce_windows(self, windows: Sequence[WindowStats]) -> None:
        await self._produce(
            self.topics.stats_windows, [(w.device_id.encode(), _enc(w)) for w in windows]
        )

    async def _produce(self, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        await self.backpressure.call(lambda: self.publisher.publish(topic, items))

    async def drain(self) -> None:
        writes, self._writes = self._writes, []
        for t in writes:
            await t


def device_chunks(windows: list[WindowStats], size: int) -> list[list[WindowStats]]:
    """``windows`` in chunks of about ``size``, each device's windows in one chunk (so that
    concurrent writes of one tick never wait for each other's per-device locks)."""
    if len(windows) <= size:
        return [windows] if windows else []
    windows = sorted(windows, key=_device_of)
    chunks = []
    start = 0
    while start < len(windows):
        end = min(start + size, len(windows))
        while end < len(windows) and windows[end].device_id == windows[end - 1].device_id:
            end += 1
        chunks.append(windows[start:end])
        start = end
    return chunks


_device_of = attrgetter("device_id")


async def _all(jobs: Sequence[Awaitable[None]]) -> None:
    """Run ``jobs`` concurrently; the first to fail cancels the others and is raised."""
    if len(jobs) == 1:
        await jobs[0]
        return
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _raise(t: asyncio.Task[None]) -> bool:
    t.result()
    return False
