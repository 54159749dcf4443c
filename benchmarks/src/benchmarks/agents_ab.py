"""Our agents before vs after a change, in one run: workers of two source trees alternating.

One topic is preloaded as in :mod:`benchmarks.bench_agents`; each round runs one worker of
every variant over it (raw samples off unless ``--raw``; the order reversed every other round,
so a change in the machine's load hits both alike), each with its own new database and
consumer group. A variant is ``name=PYTHONPATH``: the source directories its worker imports
first, e.g. ``main``'s sources unpacked with ``git archive``; ``name=-`` is this checkout::

    git archive main common/src monitoring-store/src stream-agents/src | tar -x -C /tmp/base
    flock /work/wt/bench.lock uv run --no-sync python -m benchmarks.agents_ab --rounds 3 \\
        base=/tmp/base/common/src:/tmp/base/monitoring-store/src:/tmp/base/stream-agents/src \\
        new=-

``--store=mongodb`` runs the workers on the MongoDB backend (a private emulator) over a
topic of :data:`~benchmarks.bench_agents.BACKEND_DEVICES` devices. Prints each run as it
ends, then every run and the medians as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
from typing import Any

from benchmarks import bench_agents
from iot_common.topics import Topics
from iotctl.broker import TansuBroker, free_port

_FIGURES = ("seconds_to_process", "seconds_to_durable", "readings_per_s", "readings_per_cpu_s")


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in runs if "error" not in r]
    out = {f: statistics.median(r[f] for r in ok) for f in _FIGURES if ok}
    if ok:
        out["durable_minus_processed"] = statistics.median(
            r["seconds_to_durable"] - r["seconds_to_process"] for r in ok
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="name=PYTHONPATH (or name=- for this checkout)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--raw", action="store_true", help="raw samples on")
    ap.add_argument("--store", choices=("postgres", "mongodb"), default="postgres")
    args = ap.parse_args(argv)
    variants = [tuple(v.split("=", 1)) for v in args.variants]
    default = bench_agents.BACKEND_DEVICES if args.store == "mongodb" else bench_agents.DEVICES
    devices = args.devices or default
    mongo = None
    if args.store == "mongodb":
        from iotctl.sandbox import PrivateMongoDB

        mongo = PrivateMongoDB()
        mongo.start()
    prefix = f"benchab{secrets.token_hex(3)}."
    broker = TansuBroker(port=free_port())
    broker.start()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    own = os.environ.get("PYTHONPATH")
    try:
        data = asyncio.run(
            bench_agents._preload(
                broker.bootstrap,
                Topics(prefix),
                devices=devices,
                per_device=bench_agents.READINGS_PER_DEVICE,
                per_record=1,
            )
        )
        print(f"agents_ab: preloaded {data}", file=sys.stderr, flush=True)
        for r in range(args.rounds):
            for name, path in variants if r % 2 == 0 else variants[::-1]:
                if path != "-":
                    os.environ["PYTHONPATH"] = path
                elif own is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = own
                try:
                    res = bench_agents._run_agents(
                        broker.bootstrap,
                        prefix,
                        workers=1,
                        raw=args.raw,
                        total_records=data["records"],
                        total_readings=data["readings"],
                        expected_windows=data["expected_windows"],
                        label=f"ab{r}",
                        mongodb_url=mongo.url if mongo is not None else None,
                    )
                except Exception as exc:  # keep the other runs' figures
                    res = {"error": repr(exc)}
                res["round"] = r
                runs[name].append(res)
                print(f"agents_ab: {name} {json.dumps(res)}", file=sys.stderr, flush=True)
    finally:
        broker.stop()
        if mongo is not None:
            mongo.cleanup()
    out = {
        "store": args.store,
        "devices": devices,
        "raw_samples": args.raw,
        "runs": runs,
        "medians": {name: _medians(rs) for name, rs in runs.items()},
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
