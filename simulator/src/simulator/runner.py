"""A simulator run: register (or reuse) devices, start the publishing processes, show progress.

The fleet's devices are dealt round-robin to ``processes`` publishers (device ``i`` goes to
process ``i mod P``), each publishing ``rate / P`` readings/s. They share one wall-clock start
time, report progress through shared memory, and each writes its own ledger shard.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing as mp
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from simulator.fleet import Fleet
from simulator.ledger import write_manifest
from simulator.publisher import Device, Progress, Publisher, WorkerSpec, flush_limit
from simulator.transports import TransportConfig

log = logging.getLogger(__name__)

#: Messages per second one paho QoS 1 publisher process sustains here (see the issue).
MQTT_MSGS_PER_PROCESS = 2500.0
NFIELDS = len(Progress.FIELDS)


@dataclass
class RunOptions:
    fleet: Fleet
    rate: float
    duration: float
    transport: TransportConfig
    batch: int = 1
    seed: int | None = None
    processes: int | None = None  # None: as many as the message rate needs
    devices: list[Device] = field(default_factory=list)
    ledger_dir: Path | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    max_burst_seconds: float = 0.25
    flush_timeout: float = 30.0
    start_delay: float = 0.2
    live: bool = True


def auto_processes(rate: float, batch: int, transport: str) -> int:
    per_process = MQTT_MSGS_PER_PROCESS if transport == "mqtt" else 2000.0
    need = math.ceil(rate / batch / per_process)
    return max(1, min(need, os.cpu_count() or 1, 8))


def _shards(opts: RunOptions, processes: int, start_wall: float) -> list[WorkerSpec]:
    seed = opts.fleet.seed if opts.seed is None else opts.seed
    specs = []
    for shard in range(processes):
        devices = opts.devices[shard::processes]
        if not devices:
            continue
        cfg = TransportConfig(**{**opts.transport.__dict__})
        cfg.client_id = f"simulator-{opts.run_id}-{shard}"
        specs.append(
            WorkerSpec(
                shard=shard,
                shards=processes,
                fleet=opts.fleet.model_dump(mode="json"),
                devices=devices,
                rate=opts.rate * len(devices) / len(opts.devices),
                duration=opts.duration,
                batch=opts.batch,
                seed=seed,
                run_id=opts.run_id,
                transport=cfg,
                start_wall=start_wall,
                ledger_dir=opts.ledger_dir,
                max_burst_seconds=opts.max_burst_seconds,
                flush_timeout=opts.flush_timeout,
            )
        )
    return specs


def _worker(spec: WorkerSpec, shared: Any, control: Any, row: int, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The parent decides when to stop (Ctrl-C reaches the whole process group): it sets the
    # stop flag and every publisher flushes, closes its ledger and reports.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal terminated
        terminated = True

    signal.signal(signal.SIGTERM, on_term)
    parent = os.getppid()

    def stop() -> bool:
        return terminated or control[1] != 0.0 or os.getppid() != parent

    def report(p: Progress) -> None:
        shared[row * NFIELDS : (row + 1) * NFIELDS] = p.as_list()

    async def ready() -> float:
        control[2 + row] = 1.0
        while control[0] == 0.0:  # noqa: ASYNC110 - set by the parent process
            await asyncio.sleep(0.01)
        return float(control[0])

    asyncio.run(Publisher(spec, report=report, ready=ready, stop=stop).run())


def _totals(values: list[float], shards: int) -> dict[str, float]:
    tot = dict.fromkeys(Progress.FIELDS, 0.0)
    for s in range(shards):
        for i, name in enumerate(Progress.FIELDS):
            v = values[s * NFIELDS + i]
            tot[name] = max(tot[name], v) if name == "elapsed" else tot[name] + v
    return tot


class _View:
    """The live progress table."""

    def __init__(self, opts: RunOptions, processes: int) -> None:
        self.opts = opts
        self.processes = processes
        self.history: list[tuple[float, float]] = []

    def _recent(self, tot: dict[str, float], elapsed: float, span: float) -> float:
        self.history.append((elapsed, tot["readings"]))
        while len(self.history) > 2 and self.history[0][0] < elapsed - span:
            self.history.pop(0)
        (t0, r0), (t1, r1) = self.history[0], self.history[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self, tot: dict[str, float], elapsed: float) -> str:
        """One progress line (when there is no live display, e.g. under ``iotctl``)."""
        recent = self._recent(tot, elapsed, 10.0)
        return (
            f"simulator {self.opts.run_id}: {elapsed:,.0f} s, {tot['readings']:,.0f} readings "
            f"sent ({recent:,.0f}/s, target {self.opts.rate:,.0f}/s), "
            f"{tot['acked']:,.0f} confirmed, {tot['failed']:,.0f} failed"
        )

    def render(self, tot: dict[str, float], elapsed: float) -> Table:
        recent = self._recent(tot, elapsed, 2.0)
        average = tot["readings"] / elapsed if elapsed > 0 else 0.0
        o = self.opts
        table = Table(
            title=f"simulator {o.run_id} · {o.fleet.name} · {o.transport.kind} · "
            f"{len(o.devices)} devices · batch {o.batch} · {self.processes} process(es)",
            show_header=False,
        )
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_row("target rate", f"{o.rate:,.0f} readings/s")
        table.add_row("achieved (last 2 s)", f"{recent:,.0f} readings/s")
        table.add_row("achieved (average)", f"{average:,.0f} readings/s")
        table.add_row("readings sent", f"{tot['readings']:,.0f}")
        table.add_row("data points sent", f"{tot['points']:,.0f}")
        table.add_row("messages", f"{tot['messages']:,.0f}")
        table.add_row("confirmed", f"{tot['acked']:,.0f}")
        table.add_row("failed", f"[red]{tot['failed']:,.0f}[/red]" if tot["failed"] else "0")
        table.add_row("faults injected", f"{tot['faults']:,.0f}")
        if tot["forfeited_readings"]:
            table.add_row("behind (forfeited)", f"[yellow]{tot['forfeited_readings']:,.0f}[/]")
        until = f"{o.duration:,.0f} s" if math.isfinite(o.duration) else "∞"
        table.add_row("elapsed", f"{min(elapsed, o.duration):,.1f} s / {until}")
        return table


def run(
    opts: RunOptions,
    *,
    console: Console | None = None,
    on_tick: Callable[[dict[str, float], float], None] | None = None,
) -> dict[str, Any]:
    """Run the publishers to completion; returns the summary (also in the ledger manifest)."""
    if not opts.devices:
        raise ValueError("no devices to publish for")
    processes = opts.processes or auto_processes(opts.rate, opts.batch, opts.transport.kind)
    processes = max(1, min(processes, len(opts.devices)))
    specs = _shards(opts, processes, 0.0)
    manifest: dict[str, Any] = {
        "run_id": opts.run_id,
        "fleet": opts.fleet.name,
        "seed": specs[0].seed,
        "transport": opts.transport.kind,
        "mqtt_topic_prefix": opts.transport.mqtt_topic_prefix,
        "rate": opts.rate,
        "duration": opts.duration if math.isfinite(opts.duration) else None,
        "batch": opts.batch,
        "processes": len(specs),
        "devices": [d.id for d in opts.devices],
        "device_types": [d.type_index for d in opts.devices],
        "types": [
            {"name": t.name, "metrics": [m.name for m in t.metrics]}
            for t in opts.fleet.device_types
        ],
        "faults": opts.fleet.faults.model_dump(),
    }
    if opts.ledger_dir is not None:
        write_manifest(opts.ledger_dir, manifest)

    ctx = mp.get_context("spawn")
    shared: Any = ctx.Array("d", len(specs) * NFIELDS, lock=False)
    # control[0]: the common start time once every publisher is connected; [1]: stop;
    # [2+i]: publisher i is connected and waiting for the start.
    control: Any = ctx.Array("d", 2 + len(specs), lock=False)
    level = logging.getLogger().getEffectiveLevel()
    procs = [
        ctx.Process(target=_worker, args=(spec, shared, control, row, level), daemon=True)
        for row, spec in enumerate(specs)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while not all(control[2:]):
        if not all(p.is_alive() for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.terminate()
            raise RuntimeError("a publishing process failed to start (see its log above)")
        time.sleep(0.02)
    start_wall = time.time() + opts.start_delay
    control[0] = start_wall
    manifest["start"] = start_wall
    view = _View(opts, len(specs))
    console = console or Console(stderr=True)
    live = Live(console=console, refresh_per_second=4, transient=False) if opts.live else None
    interrupted = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, on_term) if in_main else None
    try:
        if live is not None:
            live.start()
        stop_deadline = math.inf
        last_line = 0.0
        while any(p.is_alive() for p in procs) and time.monotonic() < stop_deadline:
            try:
                elapsed = max(0.0, time.time() - start_wall)
                tot = _totals(list(shared), len(specs))
                if live is not None:
                    live.update(view.render(tot, elapsed))
                elif elapsed - last_line >= 10:
                    last_line = elapsed
                    console.print(view.line(tot, elapsed), highlight=False)
                if on_tick is not None:
                    on_tick(tot, elapsed)
                for p in procs:
                    p.join(timeout=0.25 / len(procs))
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting for the flush
                    break
                interrupted = True
                control[1] = 1.0
                stop_deadline = (
                    time.monotonic() + flush_limit(opts.flush_timeout, opts.transport) + 10
                )
    finally:
        for p in procs:
            p.join(timeout=1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        if live is not None:
            live.stop()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    end_wall = time.time()
    tot = _totals(list(shared), len(specs))
    failed_procs = [s.shard for s, p in zip(specs, procs, strict=True) if p.exitcode != 0]
    # Publishing time: from the common start to the last message sent (not the flush).
    publish_seconds = max(tot["elapsed"], 1e-9)
    if math.isfinite(opts.duration) and not interrupted:
        publish_seconds = max(publish_seconds, opts.duration)
    summary: dict[str, Any] = {
        "run_id": opts.run_id,
        "transport": opts.transport.kind,
        "devices": len(opts.devices),
        "processes": len(specs),
        "batch": opts.batch,
        "target_rate": opts.rate,
        "duration": opts.duration if math.isfinite(opts.duration) else None,
        "publish_seconds": publish_seconds,
        "readings": int(tot["readings"]),
        "data_points": int(tot["points"]),
        "messages": int(tot["messages"]),
        "confirmed": int(tot["acked"]),
        "failed": int(tot["failed"]),
        "rejected_as_expected": int(tot["rejected"]),
        "faults_injected": int(tot["faults"]),
        "forfeited_readings": int(tot["forfeited_readings"]),
        "achieved_rate": tot["readings"] / publish_seconds,
        "achieved_points_rate": tot["points"] / publish_seconds,
        "wall_seconds": end_wall - start_wall,
        "failed_processes": failed_procs,
        "interrupted": interrupted,
    }
    if opts.ledger_dir is not None:
        manifest["summary"] = summary
        manifest["end"] = end_wall
        write_manifest(opts.ledger_dir, manifest)
    return summary


def run_in_process(opts: RunOptions) -> dict[str, Any]:
    """One publisher in this process, no live view (tests, embedding)."""
    start_wall = time.time() + opts.start_delay
    specs = _shards(opts, 1, start_wall)
    if opts.ledger_dir is not None:
        write_manifest(
            opts.ledger_dir,
            {
                "run_id": opts.run_id,
                "fleet": opts.fleet.name,
                "seed": specs[0].seed,
                "transport": opts.transport.kind,
                "batch": opts.batch,
                "start": start_wall,
                "devices": [d.id for d in opts.devices],
                "device_types": [d.type_index for d in opts.devices],
                "types": [
                    {"name": t.name, "metrics": [m.name for m in t.metrics]}
                    for t in opts.fleet.device_types
                ],
            },
        )
    progress = asyncio.run(Publisher(specs[0]).run())
    return {f: getattr(progress, f) for f in Progress.FIELDS}
