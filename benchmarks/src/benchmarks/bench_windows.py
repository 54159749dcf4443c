"""The closing tick of :mod:`benchmarks.bench_agents`'s backlog, in-process: window engine only.

Builds the window state one worker holds when that benchmark's backlog ends (10,000 devices ×
5 metrics at 5 Hz, 20 s of event time across a minute boundary, 8 partitions, one chunk per
tick of 2 s of event time, series ids as the decoder assigns them), then times the closing
tick (idle partitions: every window still open is closed, 10 s and 60 s), the same state
copied for every run. With ``--base PATH`` (a ``windows.py``, e.g. main's from ``git show
main:stream-agents/src/stream_agents/windows.py``) that module and this checkout's alternate,
the order reversed every other round, and their windows must be bit-identical. Prints every
run and the medians as JSON::

    git show main:stream-agents/src/stream_agents/windows.py > /tmp/base_windows.py
    flock /work/wt/bench.lock uv run --no-sync python -m benchmarks.bench_windows \\
        --base /tmp/base_windows.py --rounds 9
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from types import ModuleType
from typing import Any

import numpy as np

from stream_agents import windows as this_windows

METRICS = 5
INTERVAL = 0.2


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_base_windows", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def build(
    w: ModuleType, *, devices: int, per_device: int, partitions: int, ticks: int, start: float
) -> Any:
    """The partitions' window states when the backlog ends (all its rows retained); the
    readings start at ``start`` (both variants the same data)."""
    cfg = w.WindowConfig(sizes=(10, 60), idle_close_after=1.0)
    states = [w.PartitionWindows(cfg) for _ in range(partitions)]
    offsets = [0] * partitions
    dev = np.arange(devices)
    per_tick = -(-per_device // ticks)
    for t in range(ticks):
        steps = np.arange(t * per_tick, min((t + 1) * per_tick, per_device))
        for p, state in enumerate(states):
            # Records in the order they were produced (reading j of every device, then j + 1),
            # one reading of 5 metrics each.
            j, d = (
                a.ravel() for a in np.meshgrid(steps, dev[dev % partitions == p], indexing="ij")
            )
            ts = np.repeat(np.round(start + j * INTERVAL + d * 1e-6, 6), METRICS)
            k = np.arange(METRICS)
            series = (d[:, None] * METRICS + k).ravel().astype(np.int64)
            value = (((d[:, None] + j[:, None] * (k + 1)) % 97) + 0.5 * k).ravel()
            off = np.repeat(offsets[p] + np.arange(len(j), dtype=np.int64), METRICS)
            offsets[p] += len(j)
            rows = w.Rows(series, ts, value.astype(np.float64), off, np.repeat(j, METRICS))
            state.add(
                rows, max_ingest_ts=float(ts.max()) + 0.05, last_offset=offsets[p] - 1, wall=0.0
            )
            state.tick(wall=time.time(), live=True)
    for state in states:
        state.caught_up = True
    return states


def closing_tick(states: Any, wall: float) -> tuple[dict[str, float], list[Any]]:
    """Seconds of the whole tick and of each size's ``tick_size``; the windows."""
    out = []
    secs = {"tick": 0.0, **{f"size_{s}": 0.0 for s in states[0].config.sizes}}
    t0 = time.perf_counter()
    for state in states:
        ctx = state.begin_tick(wall=wall, live=True)
        for size in state.config.sizes:
            t1 = time.perf_counter()
            out.append(state.tick_size(ctx, size))
            secs[f"size_{size}"] += time.perf_counter() - t1
        state.end_tick(ctx)
    secs["tick"] = time.perf_counter() - t0
    return secs, out


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(getattr(x, n), getattr(y, n), equal_nan=True)
        and getattr(x, n).dtype == getattr(y, n).dtype
        for x, y in zip(a, b, strict=True)
        for n in this_windows.WindowBatch.__slots__
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="a windows.py to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--per-device", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--ticks", type=int, default=10)
    args = ap.parse_args(argv)
    variants = {"new": this_windows}
    if args.base:
        variants = {"base": _load(args.base), **variants}
    shape = dict(
        devices=args.devices,
        per_device=args.per_device,
        partitions=args.partitions,
        ticks=args.ticks,
    )
    start = (time.time() // 60) * 60 - 130.0
    built = {name: build(w, **shape, start=start) for name, w in variants.items()}
    wall = time.time()
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        got = {}
        for name in names if r % 2 == 0 else names[::-1]:
            secs, got[name] = closing_tick(copy.deepcopy(built[name]), wall)
            for what, v in secs.items():
                runs[name].setdefault(what, []).append(round(v, 4))
        if len(got) == 2 and not _same(got["base"], got["new"]):
            raise SystemExit("the variants' windows differ")
        windows = sum(len(wb) for wb in got["new"])
        values = sum(int(wb.count.sum()) for wb in got["new"])
        last = {n: {w: v[-1] for w, v in d.items()} for n, d in runs.items()}
        print(json.dumps({"round": r, **last}), flush=True)
    med = {n: {w: statistics.median(v) for w, v in d.items()} for n, d in runs.items()}
    res: dict[str, Any] = {
        "shape": shape,
        "windows": windows,
        "values": values,
        "runs": runs,
        "medians": med,
    }
    if "base" in med:
        res["new_over_base"] = {w: round(v / med["base"][w], 3) for w, v in med["new"].items()}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
