"""One publishing process: generate readings on schedule, inject faults, publish, keep a ledger.

The runner starts one of these per process (``--processes``); each owns every P-th device of
the fleet and publishes ``rate / P`` readings per second for them.

A device whose configuration sets ``settings.sample_interval_s`` sends less often: the schedule
stays the process's round robin (every device has a slot every ``devices / rate`` seconds, the
base interval), and such a device uses only every ``f``-th of its slots, ``f`` = its interval
over the base interval, rounded (at least 1: a device cannot send faster than its slot comes
round). The skip is one vectorised mask over a chunk's readings, and values are generated for
every slot as before, so a device's values and sequence numbers do not depend on its interval
and a fleet without intervals costs nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from simulator.fleet import Fleet
from simulator.generators import TypeGenerator
from simulator.ledger import MALFORMED, RECORD_DTYPE, Fault, LedgerWriter, digest_values, metric_key
from simulator.pacing import Schedule
from simulator.transports import Transport, TransportConfig, make_transport

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
#: Messages generated per pacing step at most (bounds the latency a big catch-up adds).
CHUNK = 512


@dataclass
class Device:
    index: int  # global index in the fleet (the ledger's device number)
    id: str
    type_index: int
    type_device_index: int  # index among the devices of its type
    token: str | None = None


@dataclass
class WorkerSpec:
    """Everything one publishing process needs (picklable, sent to spawned processes)."""

    shard: int
    shards: int
    fleet: dict[str, Any]
    devices: list[Device]
    rate: float  # readings/s for this shard
    duration: float
    batch: int
    seed: int
    run_id: str
    transport: TransportConfig
    start_wall: float  # common start time (epoch seconds) of every shard
    ledger_dir: Path | None = None
    max_burst_seconds: float = 0.25
    flush_timeout: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    readings: int = 0
    points: int = 0
    messages: int = 0
    acked: int = 0
    failed: int = 0
    rejected: int = 0
    faults: int = 0
    forfeited_readings: int = 0
    #: Seconds from the start to the last message handed to the transport.
    elapsed: float = 0.0
    done: bool = False

    FIELDS = (
        "readings",
        "points",
        "messages",
        "acked",
        "failed",
        "rejected",
        "faults",
        "forfeited_readings",
        "elapsed",
        "done",
    )

    def as_list(self) -> list[float]:
        return [float(getattr(self, f)) for f in self.FIELDS]


def flush_limit(flush_timeout: float, transport: TransportConfig) -> float:
    """How long the end of a run waits for confirms: long enough for every retry to end."""
    return max(flush_timeout, transport.give_up_after + 5.0)


def marker(run_id: str, shard: int, msg: int, fault: int) -> str:
    """Tag put into fault messages so a checker can find them in the dead letters."""
    return f"sim:{run_id}:{shard}:{msg}:{fault}"


def unknown_device_id(run_id: str, shard: int, msg: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"simulator/unknown/{run_id}/{shard}/{msg}"))


class Publisher:
    """The publishing loop of one shard."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        transport: Transport | None = None,
        report: Callable[[Progress], None] | None = None,
        ready: Callable[[], Awaitable[float]] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """``ready`` is awaited once the transport is connected and returns the common start
        time (epoch seconds); without it the spec's ``start_wall`` is used. ``stop`` is polled:
        once true, the publisher stops early (and still flushes and closes its ledger)."""
        self.spec = spec
        self.fleet = Fleet.model_validate(spec.fleet)
        self.faults = self.fleet.faults
        self.devices = spec.devices
        self.transport = transport or make_transport(
            spec.transport, [(d.id, d.token) for d in self.devices if d.token]
        )
        self.report = report
        self.ready = ready
        self.stop = stop or (lambda: False)
        self.progress = Progress()
        self.schedule = Schedule(len(self.devices), spec.batch, spec.rate, spec.duration)
        self.max_burst = max(1, round(self.schedule.message_rate * spec.max_burst_seconds))
        types = self.fleet.device_types
        self.gens = [
            TypeGenerator(t, seed=spec.seed, shard=spec.shard, type_index=i)
            for i, t in enumerate(types)
        ]
        self.keys = [
            np.array([metric_key(m.name) for m in t.metrics], dtype=np.uint64) for t in types
        ]
        self.dev_type = np.array([d.type_index for d in self.devices], dtype=np.int64)
        self.dev_type_idx = np.array([d.type_device_index for d in self.devices], dtype=np.int64)
        self.dev_global = np.array([d.index for d in self.devices], dtype=np.int32)
        seq = np.random.SeedSequence([spec.seed & 0xFFFFFFFF, spec.shard, 7777])
        self.fault_rng = np.random.default_rng(seq)
        self.ledger = LedgerWriter(spec.ledger_dir, spec.shard) if spec.ledger_dir else None
        self._unconfirmed = 0
        self._held: dict[int, tuple[bytes, int]] = {}  # device → (payload, msg) out of order
        #: Per device slot: use every n-th slot (its sample interval over the base interval).
        self.every = np.ones(len(self.devices), dtype=np.int64)
        self._config_changes = -1

    @property
    def base_interval(self) -> float:
        """Seconds between two slots of one device: the shortest interval it can send at."""
        return self.schedule.n_devices / self.schedule.rate

    def _sync_intervals(self) -> None:
        """Take up the sample intervals the devices' configurations ask for, when they changed."""
        tr = self.transport
        if tr.config_changes == self._config_changes:
            return
        self._config_changes = tr.config_changes
        base = self.base_interval
        intervals = tr.sample_intervals
        every = np.ones(len(self.devices), dtype=np.int64)
        for slot, device in enumerate(self.devices):
            interval = intervals.get(device.id)
            if interval is not None:
                every[slot] = max(1, round(interval / base))
        self.every = every

    # -- building messages ------------------------------------------------------------------
    def _build(self, m0: int, m1: int, wall0: float) -> list[tuple[int, bytes, int, bool]]:
        """Messages m0…m1-1 as (device slot, payload, fault, expect_reject), in send order."""
        spec = self.spec
        nb = spec.batch
        dev, step, offs, exists = self.schedule.readings(m0, m1)
        every = self.every[dev]
        if (every > 1).any():  # devices configured to send less often skip slots
            exists &= step % every[:, None] == 0
        counts = exists.sum(axis=1).tolist()
        ts = np.round(wall0 + offs, 6)
        n_msgs = len(dev)
        types = self.dev_type[dev]
        values: list[npt.NDArray[np.float64]] = [np.empty((0, 0, 0))] * len(self.gens)
        present: list[npt.NDArray[np.bool_]] = [np.empty((0, 0, 0), np.bool_)] * len(self.gens)
        rows = np.empty(n_msgs, dtype=np.int64)  # row of each message in its type's block
        for t, gen in enumerate(self.gens):
            sel = np.flatnonzero(types == t)
            if len(sel) == 0:
                continue
            rows[sel] = np.arange(len(sel))
            tdi = np.repeat(self.dev_type_idx[dev[sel]], nb)
            v, p = gen.generate(tdi, ts[sel].ravel())
            values[t] = v.reshape(len(sel), nb, -1)
            present[t] = p.reshape(len(sel), nb, -1)

        f = self.faults
        u = self.fault_rng.random((n_msgs, 4))
        main = np.zeros(n_msgs, dtype=np.uint8)
        c1 = f.out_of_order
        c2 = c1 + f.duplicate
        c3 = c2 + f.late
        main[u[:, 0] < c3] = Fault.LATE
        main[u[:, 0] < c2] = Fault.DUPLICATE
        main[u[:, 0] < c1] = Fault.OUT_OF_ORDER
        malformed = u[:, 1] < f.malformed
        unknown = u[:, 2] < f.unknown_device

        out: list[tuple[int, bytes, int, bool]] = []
        sent_msgs = 0
        records = np.zeros(n_msgs * nb + int(malformed.sum()) + int(unknown.sum()), RECORD_DTYPE)
        r = 0
        for i in range(n_msgs):
            m = m0 + i
            t = int(types[i])
            metric_names = self.gens[t].metric_names
            row = rows[i]
            v = values[t][row]
            p = present[t][row]
            fault = int(main[i])
            k = counts[i]
            if k == 0:  # every slot of this message skipped: the device sends nothing now
                continue
            sent_msgs += 1
            if k < nb:  # a final partial batch, or slots skipped for a sample interval
                keep = exists[i]
                v, p, mts, seqs = v[keep], p[keep], ts[i, keep], step[i, keep]
            else:
                mts, seqs = ts[i], step[i]
            if fault == Fault.LATE:
                mts = mts - f.late_seconds
            readings = []
            vl = v.tolist()
            pl = p.tolist()
            tl = mts.tolist()
            sl = seqs.tolist()
            for j in range(k):
                metrics = {
                    name: val
                    for name, val, ok in zip(metric_names, vl[j], pl[j], strict=True)
                    if ok
                }
                reading: dict[str, Any] = {"ts": tl[j], "metrics": metrics, "seq": sl[j]}
                if fault == Fault.LATE:
                    reading["sim"] = marker(spec.run_id, spec.shard, m, Fault.LATE)
                readings.append(reading)
            body = _encode(readings if nb > 1 else readings[0])
            d = int(dev[i])
            out.append((d, body, fault, False))
            block = records[r : r + k]
            block["msg"] = m
            block["device"] = self.dev_global[d]
            block["fault"] = fault
            block["points"] = p.sum(axis=1)
            block["seq"] = seqs
            block["ts"] = mts
            block["digest"] = digest_values(v, p, self.keys[t])
            r += k
            last_ts = float(ts[i, -1])
            if malformed[i]:
                kind = MALFORMED[min(int(u[i, 3] * len(MALFORMED)), len(MALFORMED) - 1)]
                out.append((d, self._malformed(kind, m, last_ts, metric_names[0]), kind, True))
                rec = records[r]
                rec["msg"], rec["device"], rec["fault"] = m, self.dev_global[d], kind
                rec["seq"], rec["ts"] = -1, last_ts
                r += 1
            if unknown[i]:
                body = _encode(
                    {
                        "ts": last_ts,
                        "metrics": {metric_names[0]: 1.0},
                        "seq": 0,
                        "sim": marker(spec.run_id, spec.shard, m, Fault.UNKNOWN_DEVICE),
                    }
                )
                out.append((-1 - m, body, Fault.UNKNOWN_DEVICE, True))
                rec = records[r]
                rec["msg"], rec["device"], rec["fault"] = m, -1, Fault.UNKNOWN_DEVICE
                rec["seq"], rec["ts"], rec["points"] = 0, last_ts, 1
                r += 1
        records = records[:r]
        if self.ledger is not None:
            self.ledger.append(records)
        self.progress.readings += int(exists.sum())
        self.progress.messages += sent_msgs
        self.progress.points += int(
            records["points"][records["fault"] < Fault.MALFORMED_JSON].sum()
        )
        sending = np.asarray(counts) > 0
        self.progress.faults += int(
            ((main != 0) & sending).sum() + (malformed & sending).sum() + (unknown & sending).sum()
        )
        return out

    def _malformed(self, kind: int, m: int, ts: float, metric: str) -> bytes:
        mark = marker(self.spec.run_id, self.spec.shard, m, kind)
        if kind == Fault.MALFORMED_JSON:
            return f'{{"ts": {ts}, "metrics": {{"{metric}": 1.0}} {mark}'.encode()
        if kind == Fault.MALFORMED_SCHEMA:
            return _encode({"metrics": {metric: 1.0}, "seq": 0, "sim": mark})
        if kind == Fault.MALFORMED_NON_NUMERIC:
            return _encode({"ts": ts, "metrics": {metric: "high"}, "seq": 0, "sim": mark})
        return _encode({"ts": ts, "metrics": {}, "seq": 0, "sim": mark})

    # -- sending ----------------------------------------------------------------------------
    async def _send(self, slot: int, body: bytes, *, reject: bool) -> None:
        if slot < 0:  # an unknown device: slot encodes the message number
            device_id = unknown_device_id(self.spec.run_id, self.spec.shard, -1 - slot)
            token = None
        else:
            device_id = self.devices[slot].id
            token = self.devices[slot].token
        await self.transport.publish(device_id, body, token=token, expect_reject=reject)

    async def _publish(self, messages: list[tuple[int, bytes, int, bool]]) -> None:
        for slot, body, fault, reject in messages:
            if fault == Fault.OUT_OF_ORDER:
                held = self._held.pop(slot, None)
                if held is not None:
                    await self._send(slot, held[0], reject=False)
                self._held[slot] = (body, fault)
                continue
            await self._send(slot, body, reject=reject)
            if fault == Fault.DUPLICATE:
                await self._send(slot, body, reject=False)
            if not reject:
                held = self._held.pop(slot, None)
                if held is not None:
                    await self._send(slot, held[0], reject=False)
        self._sync_counts()

    def _sync_counts(self) -> None:
        tr = self.transport
        self.progress.acked = tr.acked
        self.progress.failed = tr.failed + self._unconfirmed
        self.progress.rejected = tr.rejected

    async def run(self) -> Progress:
        spec = self.spec
        await self.transport.start()
        wall0 = spec.start_wall if self.ready is None else await self.ready()
        # Map the common wall-clock start onto this process's monotonic clock.
        mono0 = time.monotonic() + (wall0 - time.time())
        while time.monotonic() < mono0:  # noqa: ASYNC110 - waiting for a clock time
            await asyncio.sleep(min(0.05, mono0 - time.monotonic()))
        sent = 0
        sched = self.schedule
        last_report = 0.0
        total = sched.total_messages
        try:
            while sent < total and not self.stop():
                now = time.monotonic() - mono0
                due = min(sched.due(now), total)
                if due - sent > self.max_burst and not sched.at_end(now):
                    lost = sched.slide(due - sent, self.max_burst)
                    self.progress.forfeited_readings += lost * spec.batch
                    due = min(sched.due(now), total)
                if due > sent:
                    self._sync_intervals()
                    take = min(due - sent, CHUNK)
                    await self._publish(self._build(sent, sent + take, wall0))
                    sent += take
                    self.progress.elapsed = time.monotonic() - mono0
                else:
                    wait = sched.due_at(sent) - now
                    await asyncio.sleep(max(0.0, min(wait, 0.05)))
                if self.report is not None and now - last_report >= 0.2:
                    last_report = now
                    self._report()
            # What is still held back (out of order) goes out last.
            for slot, (body, _) in list(self._held.items()):
                await self._send(slot, body, reject=False)
            self._held.clear()
            # Unconfirmed messages are retried until given up: wait for that, at least.
            await self.transport.flush(flush_limit(spec.flush_timeout, spec.transport))
        finally:
            tr = self.transport
            self._unconfirmed = max(0, tr.sent - (tr.acked + tr.failed + tr.rejected))
            await self.transport.close()
            if self.ledger is not None:
                self.ledger.close()
            self.progress.done = True
            self._report()
        return self.progress

    def _report(self) -> None:
        self._sync_counts()
        if self.report is not None:
            self.report(self.progress)
