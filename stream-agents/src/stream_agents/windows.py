"""Event-time tumbling windows per device × metric, computed with numpy over batches.

One :class:`PartitionWindows` holds the state of one ``telemetry.raw`` partition. Rows (one per
device × metric × reading) are appended in offset order; every few seconds :meth:`tick` turns
them into window statistics (exact: values are kept, percentiles are computed from all of
them), drops what can no longer change, and says up to which offset the consumer may commit.

Design, so that a crash and a replay from the committed offset give the same windows:

* **Lateness is decided per record, from the record itself.** A reading is accepted when the
  envelope carrying it reached the platform (``ingest_ts``, stamped by the bridge) no later
  than ``allowed_lateness`` after the end of the reading's smallest window. The decision does
  not depend on what else this process has seen, on batch boundaries or on a restart.
  Accepted readings update every window they fall in; the others are dead-lettered as late.
* **Windows close on the partition's ingest clock** (the largest ``ingest_ts`` seen), or on the
  wall clock when the partition is caught up and has been idle for a moment, and are then
  emitted ``final``. A reading that
  arrives later but within the lateness re-emits the corrected window.
* **State is kept per unit** (series × largest window; every window size must divide the
  largest, so a unit contains all smaller windows of its rows). A unit is dropped once the
  ingest clock is past its end + lateness + ``reorder_slack``: no record can then still be
  accepted into it unless the bridge produced records more than ``reorder_slack`` out of
  order (those are dead-lettered as late too).
* **Duplicates** (a device re-sending a reading: same series, ts and seq) are counted once,
  the first arrival winning, when a window's statistics are computed from all its retained
  rows (:func:`duplicate_mask`). Original and copy fall in the same unit, so a replay (which
  rebuilds whole units, below) sees both again in the same offset order and keeps the same one.
* **Commit point.** The committed offset ``C`` must be such that every unit with a row at an
  offset ≥ ``C`` has *all* its rows at offsets ≥ ``C``: replaying from ``C`` then rebuilds
  each such unit completely (and re-upserts identical values), and never touches the others.
  ``C`` starts at the smallest offset still retained and is lowered to the first offset of
  any dropped unit that straddles it, to a fixed point (:meth:`commit_offset`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
SInt = npt.NDArray[np.signedinteger[Any]]

_WIDX_BITS = 32
_WIDX_MASK = (1 << _WIDX_BITS) - 1


@dataclass(slots=True)
class Rows:
    """Columnar rows: series id, event time, value, Kafka offset of the carrying record and
    the reading's ``seq`` (-1 when the device sent none; int32 in retained chunks when it
    fits, see :func:`_compact_seq`)."""

    series: I64
    ts: F64
    value: F64
    offset: I64
    seq: SInt

    @classmethod
    def empty(cls) -> Rows:
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            np.empty(0, np.float64),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
        )

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: npt.NDArray[np.intp] | Bool) -> Rows:
        return Rows(
            self.series[idx], self.ts[idx], self.value[idx], self.offset[idx], self.seq[idx]
        )

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.series for p in parts]),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.offset for p in parts]),
            np.concatenate([p.seq for p in parts]),
        )


@dataclass(slots=True)
class WindowBatch:
    """Statistics of many windows, one entry per series × window (column arrays)."""

    series: I64
    window_seconds: I64
    window_start: F64
    count: I64
    min: F64
    max: F64
    mean: F64
    stddev: F64
    p50: F64
    p95: F64
    last: F64
    last_ts: F64
    final: Bool

    def __len__(self) -> int:
        return len(self.series)

    @classmethod
    def concat(cls, parts: Sequence[WindowBatch]) -> WindowBatch:
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty_windows()
        if len(parts) == 1:
            return parts[0]
        names = cls.__slots__
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})


def empty_windows() -> WindowBatch:
    f = np.empty(0, np.float64)
    i = np.empty(0, np.int64)
    return WindowBatch(i, i, f, i, f, f, f, f, f, f, f, f, np.empty(0, np.bool_))


def window_keys(series: I64, ts: F64, size: int) -> I64:
    """One int64 per row naming its series × window of ``size`` seconds."""
    widx = np.floor(ts / size).astype(np.int64)
    return (series << _WIDX_BITS) | (widx & _WIDX_MASK)


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_S31 = np.uint64(31)


def duplicate_mask(keys: I64, ts: F64, seq: SInt) -> Bool | None:
    """Rows repeating an earlier row's (window key, ts, seq): ``None`` when there are none.

    Rows are in arrival order; the first arrival of a reading is kept, later copies are
    marked. The common case (no duplicate) costs a 64-bit fingerprint and one numpy sort
    (a few ms per million rows); only rows whose fingerprints collide are compared exactly,
    so a fingerprint collision never merges two different readings.
    """
    n = len(keys)
    if n < 2:
        return None
    seq = seq.astype(np.int64, copy=False)
    with np.errstate(over="ignore"):
        h = keys.view(np.uint64) * _M1
        h ^= ts.view(np.uint64) * _M2
        h ^= seq.view(np.uint64) * _M3
        h ^= h >> _S31
    s = np.sort(h)
    eq = s[1:] == s[:-1]
    if not eq.any():
        return None
    cand = np.flatnonzero(np.isin(h, s[1:][eq]))
    ck, ct, cs = keys[cand], ts[cand], seq[cand]
    # lexsort is stable: within equal (key, ts, seq) the earliest arrival comes first.
    order = np.lexsort((cs, ct, ck))
    ck, ct, cs = ck[order], ct[order], cs[order]
    dup_sorted = np.r_[False, (ck[1:] == ck[:-1]) & (ct[1:] == ct[:-1]) & (cs[1:] == cs[:-1])]
    if not dup_sorted.any():
        return None
    out = np.zeros(n, np.bool_)
    out[cand[order[dup_sorted]]] = True
    return out


def _group_value_order(keys: I64, values: F64) -> npt.NDArray[np.intp]:
    """Row order by (key, value): ``np.lexsort((values, keys))``, faster.

    The keys of one tick's rows span few series and few windows, so they map to dense group
    numbers that fit 16 bits, and numpy's stable sort of 16-bit integers is a radix sort: one
    quicksort of the values, then a linear pass by group (3 million rows: 0.35 s against
    0.9 s for lexsort). Rows with equal key and value may come out in another order than
    lexsort's; nothing computed from the order depends on that.
    """
    if not len(keys):
        return np.empty(0, np.intp)
    series = keys >> _WIDX_BITS
    widx = keys & _WIDX_MASK
    s0, w0 = int(series.min()), int(widx.min())
    ns, nw = int(series.max()) - s0 + 1, int(widx.max()) - w0 + 1
    if ns * nw > 1 << 16:
        return np.lexsort((values, keys))
    group = ((series - s0) * nw + (widx - w0)).astype(np.uint16)
    by_value = np.argsort(values)
    return by_value[np.argsort(group[by_value], kind="stable")]


def compute_stats(
    keys: I64,
    ts: F64,
    values: F64,
    *,
    size: int,
    final: bool,
    seq: SInt | None = None,
    dup: Bool | None = None,
) -> WindowBatch:
    """Exact statistics of every window named in ``keys`` (rows in arrival order).

    With ``seq``, a row repeating an earlier row's (key, ts, seq) is a re-sent reading and
    counted once (the first arrival's value is used). Percentiles use linear interpolation
    between closest ranks (numpy's default method); stddev is the population standard
    deviation; ``last`` is the value with the latest event time, the later arrival winning
    ties. ``dup`` instead of ``seq``: those duplicates, already found.
    """
    if seq is not None and dup is None:
        dup = duplicate_mask(keys, ts, seq)
    if dup is not None and dup.any():
        keep = ~dup
        keys, ts, values = keys[keep], ts[keep], values[keep]
    n = len(keys)
    if n == 0:
        return empty_windows()
    by_value = _group_value_order(keys, values)
    sk = keys[by_value]
    sv = values[by_value]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    counts = np.diff(np.r_[starts, n])
    ends = starts + counts - 1
    gkeys = sk[starts]
    mins = sv[starts]
    maxs = sv[ends]
    sums = np.add.reduceat(sv, starts)
    means = sums / counts
    dev = sv - np.repeat(means, counts)
    var = np.add.reduceat(dev * dev, starts) / counts
    std = np.sqrt(np.maximum(var, 0.0))

    def pct(q: float) -> F64:
        pos = q * (counts - 1)
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        hi = np.minimum(lo + 1, counts - 1)
        a = sv[starts + lo]
        b = sv[starts + hi]
        out: F64 = a + (b - a) * frac
        return out

    p50 = pct(0.5)
    p95 = pct(0.95)
    # last: the latest event time in the group, the later arrival (larger row index) winning
    # ties; found with two reductions instead of another sort.
    st = ts[by_value]
    max_ts = np.maximum.reduceat(st, starts)
    cand = np.where(st == np.repeat(max_ts, counts), by_value, -1)
    last_idx = np.maximum.reduceat(cand, starts)
    series = gkeys >> _WIDX_BITS
    widx = gkeys & _WIDX_MASK
    # Undo the mask for negative window indexes (times before 1970 are not expected).
    widx = np.where(widx >= (1 << (_WIDX_BITS - 1)), widx - (1 << _WIDX_BITS), widx)
    return WindowBatch(
        series=series,
        window_seconds=np.full(len(gkeys), size, np.int64),
        window_start=widx.astype(np.float64) * size,
        count=counts.astype(np.int64),
        min=mins,
        max=maxs,
        mean=means,
        stddev=std,
        p50=p50,
        p95=p95,
        last=values[last_idx],
        last_ts=ts[last_idx],
        final=np.full(len(gkeys), final, np.bool_),
    )


@dataclass(slots=True)
class WindowConfig:
    sizes: tuple[int, ...] = (10, 60)
    allowed_lateness: float = 10.0
    reorder_slack: float = 10.0
    #: A partition with no record for this long closes windows on the wall clock.
    idle_close_after: float = 2.0
    #: Open-window updates are only published while the partition is this close to real
    #: time (a backlog being replayed has no live viewers).
    live_lag: float = 30.0
    #: Open windows of the smallest size are re-published every tick; larger ones at most
    #: every ``size × open_update_fraction`` seconds (1-minute windows: every 10 s). Each
    #: update recomputes the window from all its rows; a minute window at 50,000 readings/s
    #: holds millions.
    open_update_fraction: float = 1 / 6

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("at least one window size is needed")
        sizes = tuple(sorted(set(int(s) for s in self.sizes)))
        if sizes[0] <= 0:
            raise ValueError("window sizes must be positive")
        if any(sizes[-1] % s for s in sizes):
            raise ValueError("every window size must divide the largest one")
        self.sizes = sizes


@dataclass(slots=True)
class _Chunk:
    """Retained rows of one tick, with each row's window index per size."""

    rows: Rows
    widx: dict[int, npt.NDArray[np.signedinteger[Any]]]
    min_offset: int


def _widx_dtype(size: int) -> type[np.signedinteger[Any]]:
    # Window indexes of windows >= 2 s fit int32 for centuries; halves the index memory.
    return np.int32 if size >= 2 else np.int64


def _compact_seq(seq: SInt) -> SInt:
    """int32 when every seq fits (the usual case: halves the column of retained rows)."""
    if seq.dtype == np.int64 and len(seq) and seq.min() >= -(2**31) and seq.max() < 2**31:
        return seq.astype(np.int32)
    return seq


def _keys(series: I64, widx: npt.NDArray[np.signedinteger[Any]]) -> I64:
    return (series << _WIDX_BITS) | (widx.astype(np.int64) & _WIDX_MASK)


#: Rows per compute_stats call: bounds the sort temporaries (peak memory) of big closes.
STATS_SLICE_ROWS = 1_000_000


#: Per chunk (by ``id``) of one tick: which rows have had their duplicate flag found, and
#: the flags.
_DupFlags = dict[int, tuple[Bool, Bool]]


def _no_flags(n: int) -> tuple[Bool, Bool]:
    return np.zeros(n, np.bool_), np.zeros(n, np.bool_)


def _stats_of(
    parts: list[tuple[_Chunk, Bool]], size: int, *, final: bool, known: _DupFlags
) -> WindowBatch:
    """Statistics of the windows of the selected rows (chunks in arrival order).

    Large selections are cut into bands of series ids (a window belongs to one series, so
    each band holds whole windows) to keep the sort's temporaries small.

    Duplicate flags are the same for every window size: a selection is made of whole windows,
    and a re-sent reading has its original's series and ts, so it lies in the same window as
    its original at every size. Within one tick (the chunks do not change) the flags found
    for one size's selection are reused by the next (``known``, updated here), and only the
    rows not selected before are checked, among themselves: their windows of the earlier
    size were not selected, so neither were their originals.
    """
    total = sum(int(m.sum()) for _, m in parts)
    bands = max(1, -(-total // STATS_SLICE_ROWS))
    out = []
    for band in range(bands):
        sel = [
            (ch, m & (ch.rows.series % bands == band)) if bands > 1 else (ch, m) for ch, m in parts
        ]
        keys = np.concatenate([_keys(ch.rows.series[m], ch.widx[size][m]) for ch, m in sel])
        if not len(keys):
            continue
        ts = np.concatenate([ch.rows.ts[m] for ch, m in sel])
        values = np.concatenate([ch.rows.value[m] for ch, m in sel])
        seq = np.concatenate([ch.rows.seq[m] for ch, m in sel])
        flags = [known.get(id(ch)) for ch, _ in sel]
        dup: Bool | None
        if all(f is None for f in flags):
            found = dup = duplicate_mask(keys, ts, seq)
        else:
            done = np.concatenate(
                [
                    f[0][m] if f is not None else np.zeros(int(m.sum()), np.bool_)
                    for f, (_, m) in zip(flags, sel, strict=True)
                ]
            )
            dup = np.concatenate(
                [
                    f[1][m] if f is not None else np.zeros(int(m.sum()), np.bool_)
                    for f, (_, m) in zip(flags, sel, strict=True)
                ]
            )
            found = None
            if not done.all():
                todo = np.flatnonzero(~done)
                found = duplicate_mask(keys[todo], ts[todo], seq[todo])
                dup[todo] = False if found is None else found
        if found is not None and dup is not None:
            o = 0
            for ch, m in sel:
                ix = np.flatnonzero(m)
                e = o + len(ix)
                known.setdefault(id(ch), _no_flags(len(ch.rows)))[1][ix[dup[o:e]]] = True
                o = e
        for ch, m in sel:
            k = known.setdefault(id(ch), _no_flags(len(ch.rows)))
            np.logical_or(k[0], m, out=k[0])
        out.append(compute_stats(keys, ts, values, size=size, final=final, dup=dup))
    return WindowBatch.concat(out)


@dataclass(frozen=True, slots=True)
class TickInput:
    """What the hot path handed a partition since the last tick, taken in one step (on the
    event loop) so that the tick's computation can run in another thread while the hot path
    goes on appending to a fresh ``pending`` list and advancing the clocks."""

    rows: list[Rows]
    data_clock: float
    next_offset: int | None
    caught_up: bool
    last_record_wall: float


@dataclass(frozen=True, slots=True)
class TickContext:
    """One tick's clocks and its new chunk, shared by its steps."""

    wall: float
    data_clock: float
    emit_clock: float
    is_live: bool
    new: _Chunk | None
    #: Duplicate flags found by this tick's sizes so far (see :func:`_stats_of`).
    dups: _DupFlags = field(default_factory=dict)


@dataclass(slots=True)
class TickResult:
    windows: WindowBatch
    dropped_rows: int
    retained_rows: int


@dataclass
class PartitionWindows:
    """Window state of one partition (see the module docstring for the design)."""

    config: WindowConfig
    chunks: list[_Chunk] = field(default_factory=list)
    pending: list[Rows] = field(default_factory=list)
    #: Largest ingest_ts seen (drives closing and dropping).
    data_clock: float = -math.inf
    emit_clock: float = -math.inf
    #: Windows of each size ending at or before this have been emitted final.
    closed_through: dict[int, float] = field(default_factory=dict)
    #: Units ending at or before this (+ lateness + slack) have been dropped.
    dropped_clock: float = -math.inf
    #: (first offset, last offset) of dropped units that may still straddle the commit point.
    dropped_first: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    dropped_last: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    next_offset: int | None = None
    committed: int | None = None
    last_record_wall: float = 0.0
    #: Set by the consumer: this partition has nothing more to fetch right now. Only then
    #: may the wall clock close its windows (a lagging partition is not idle).
    caught_up: bool = False
    #: Per window size: keys of open windows touched since their last update, and when
    #: that update was made (wall clock).
    open_touched: dict[int, list[I64]] = field(default_factory=dict)
    open_updated_at: dict[int, float] = field(default_factory=dict)

    def accept_mask(self, ts: F64, ingest_ts: F64) -> Bool:
        """Which readings are in time (see module docstring); the rest are late."""
        cfg = self.config
        s0 = cfg.sizes[0]
        end0 = (np.floor(ts / s0) + 1.0) * s0
        ok: Bool = ingest_ts <= end0 + cfg.allowed_lateness
        if self.dropped_clock > -math.inf:
            big = cfg.sizes[-1]
            uend = (np.floor(ts / big) + 1.0) * big
            ok &= uend + cfg.allowed_lateness + cfg.reorder_slack >= self.dropped_clock
        ok &= np.isfinite(ts)
        return ok

    def add(self, rows: Rows, *, max_ingest_ts: float, last_offset: int, wall: float) -> None:
        """Append accepted rows of one batch and advance the clocks."""
        if len(rows):
            self.pending.append(rows)
        if max_ingest_ts > self.data_clock:
            self.data_clock = max_ingest_ts
        self.next_offset = last_offset + 1
        self.last_record_wall = wall

    def take(self) -> TickInput:
        """Hand over the rows added since the last tick and the clocks as they are now."""
        rows, self.pending = self.pending, []
        if (self.chunks or any(len(r) for r in rows)) and math.isfinite(self.data_clock):
            # The tick about to run drops the units behind this clock: from now on
            # accept_mask refuses rows for them, even while that tick is still computing.
            self.dropped_clock = max(self.dropped_clock, self.data_clock)
        return TickInput(
            rows, self.data_clock, self.next_offset, self.caught_up, self.last_record_wall
        )

    def tick(self, *, wall: float, live: bool = True, taken: TickInput | None = None) -> TickResult:
        """Emit closed, corrected and (when live) open windows; drop what is final.

        Rows are kept in chunks (one per tick) so that a tick never copies everything
        retained: only the rows of the windows it emits are gathered. With ``taken`` (from
        :meth:`take`), the tick works from that alone and may run in a worker thread while
        :meth:`add` goes on (it touches only ``pending`` and the clocks; the tick touches
        neither). Ticks themselves must not overlap.

        The same in steps (so that a caller can publish the small windows before computing
        the large ones): :meth:`begin_tick`, :meth:`tick_size` for every size in order,
        :meth:`end_tick`.
        """
        ctx = self.begin_tick(wall=wall, live=live, taken=taken)
        out = [self.tick_size(ctx, size) for size in self.config.sizes]
        dropped, retained = self.end_tick(ctx)
        return TickResult(WindowBatch.concat(out), dropped, retained)

    def begin_tick(
        self, *, wall: float, live: bool = True, taken: TickInput | None = None
    ) -> TickContext:
        """Append the taken rows as a chunk and advance the emit clock."""
        cfg = self.config
        t = taken if taken is not None else self.take()
        new = Rows.concat(t.rows)
        if len(new):
            new = Rows(new.series, new.ts, new.value, new.offset, _compact_seq(new.seq))
            self.chunks.append(
                _Chunk(
                    new,
                    {size: (new.ts // size).astype(_widx_dtype(size)) for size in cfg.sizes},
                    int(new.offset.min()),
                )
            )
        new_chunk = self.chunks[-1] if len(new) else None
        clock = t.data_clock
        if t.caught_up and wall - t.last_record_wall >= cfg.idle_close_after:
            clock = max(clock, wall)
        self.emit_clock = max(self.emit_clock, clock)
        is_live = live and self.emit_clock >= wall - cfg.live_lag
        return TickContext(wall, t.data_clock, self.emit_clock, is_live, new_chunk)

    def tick_size(self, ctx: TickContext, size: int) -> WindowBatch:
        """The closed, corrected and open windows of one size (sizes in increasing order)."""
        cfg = self.config
        wall, emit_clock, is_live, new_chunk = ctx.wall, ctx.emit_clock, ctx.is_live, ctx.new
        out: list[WindowBatch] = []
        before = self.closed_through.get(size, -math.inf)
        after = math.floor(emit_clock / size) * size if math.isfinite(emit_clock) else before
        after = max(before, after)
        self.closed_through[size] = after
        if not self.chunks or not math.isfinite(after):
            return WindowBatch.concat(out)
        # Window w is [w*size, (w+1)*size): closed once its end <= after.
        lo = math.floor(before / size) if math.isfinite(before) else None
        hi = math.floor(after / size)
        corrected: I64 | None = None
        if new_chunk is not None and lo is not None:
            w_new = new_chunk.widx[size]
            late_new = w_new < lo
            if late_new.any():
                corrected = np.unique(_keys(new_chunk.rows.series[late_new], w_new[late_new]))
        parts = []
        for ch in self.chunks:
            w = ch.widx[size]
            sel = (w < hi) if lo is None else ((w >= lo) & (w < hi))
            if corrected is not None:
                sel |= np.isin(_keys(ch.rows.series, w), corrected)
            if sel.any():
                parts.append((ch, sel))
        if parts:
            out.append(_stats_of(parts, size, final=True, known=ctx.dups))
        if not is_live:
            self.open_touched.pop(size, None)
            return WindowBatch.concat(out)
        if new_chunk is not None:
            w_new = new_chunk.widx[size]
            open_new = w_new >= hi
            if open_new.any():
                self.open_touched.setdefault(size, []).append(
                    np.unique(_keys(new_chunk.rows.series[open_new], w_new[open_new]))
                )
        # The smallest size every tick; the others every size × fraction (10 % early is
        # close enough: ticks come every emit interval, with jitter).
        every = 0.0 if size == cfg.sizes[0] else 0.9 * size * cfg.open_update_fraction
        due = wall - self.open_updated_at.get(size, -math.inf) >= every
        if due and self.open_touched.get(size):
            touched = np.unique(np.concatenate(self.open_touched.pop(size)))
            self.open_updated_at[size] = wall
            oparts = []
            for ch in self.chunks:
                w = ch.widx[size]
                osel = (w >= hi) & np.isin(_keys(ch.rows.series, w), touched)
                if osel.any():
                    oparts.append((ch, osel))
            if oparts:
                out.append(_stats_of(oparts, size, final=False, known=ctx.dups))
        return WindowBatch.concat(out)

    def end_tick(self, ctx: TickContext) -> tuple[int, int]:
        """Drop the units no record can change any more; (rows dropped, rows retained)."""
        cfg = self.config
        data_clock = ctx.data_clock
        dropped = 0
        if self.chunks and math.isfinite(data_clock):
            big = cfg.sizes[-1]
            horizon = data_clock - cfg.allowed_lateness - cfg.reorder_slack
            closed_big = self.closed_through.get(big, -math.inf)
            gone_keys: list[I64] = []
            gone_offs: list[I64] = []
            kept: list[_Chunk] = []
            for ch in self.chunks:
                uend = (ch.widx[big] + 1).astype(np.float64) * big
                # Never drop a unit whose largest window has not been emitted final yet.
                drop = (uend < horizon) & (uend <= closed_big)
                if not drop.any():
                    kept.append(ch)
                    continue
                gone_keys.append(_keys(ch.rows.series[drop], ch.widx[big][drop]))
                gone_offs.append(ch.rows.offset[drop])
                dropped += int(drop.sum())
                keep = ~drop
                if keep.any():
                    rows = ch.rows.take(keep)
                    kept.append(
                        _Chunk(
                            rows,
                            {sz: wi[keep] for sz, wi in ch.widx.items()},
                            int(rows.offset.min()),
                        )
                    )
            if gone_keys:
                ukeys = np.concatenate(gone_keys)
                offs = np.concatenate(gone_offs)
                order = np.argsort(ukeys, kind="stable")
                sk = ukeys[order]
                starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
                offs = offs[order]
                self.dropped_first = np.concatenate(
                    [self.dropped_first, np.minimum.reduceat(offs, starts)]
                )
                self.dropped_last = np.concatenate(
                    [self.dropped_last, np.maximum.reduceat(offs, starts)]
                )
            self.chunks = kept
        retained = sum(len(ch.rows) for ch in self.chunks)
        return dropped, retained

    def commit_offset(self, taken: TickInput | None = None) -> int | None:
        """The offset it is safe to commit once the last tick's output is durable (with
        ``taken``: no further than the records that tick covered)."""
        next_offset = taken.next_offset if taken is not None else self.next_offset
        if next_offset is None:
            return None
        c = next_offset
        for ch in self.chunks:
            c = min(c, ch.min_offset)
        if taken is None:
            for p in self.pending:
                if len(p):
                    c = min(c, int(p.offset.min()))
        f, last = self.dropped_first, self.dropped_last
        while len(f):
            m = (last >= c) & (f < c)
            if not m.any():
                break
            c = int(f[m].min())
        # Units entirely before the commit point can never matter again.
        keep = last >= c
        self.dropped_first, self.dropped_last = f[keep], last[keep]
        return c
