"""The `benchmarks` command: discovery, and the report it writes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

import iotctl.sandbox
from benchmarks import __main__ as cli
from benchmarks import bench_e2e
from benchmarks.__main__ import available, write_report


def test_every_bench_module_is_a_benchmark() -> None:
    names = available()
    assert "e2e" in names
    assert all(not n.startswith("bench_") for n in names)


def test_report_names_command_machine_date_and_plots(tmp_path: Path) -> None:
    results = {
        "e2e": {
            "summary": ["- sustained **50,000 data points/s**"],
            "_meta": {
                "command": "benchmarks e2e --quick",
                "started": "2026-11-27T12:00:00+00:00",
                "seconds": 12.5,
                "plots": ["e2e_latency.png"],
            },
        },
        "broken": {"error": "boom", "summary": ["**failed**: boom"], "_meta": {}},
    }
    report = write_report(tmp_path, results, "benchmarks all --quick")
    text = report.read_text()
    assert "`benchmarks all --quick`" in text
    assert "cores" in text and "GiB" in text
    assert "## e2e" in text and "sustained **50,000 data points/s**" in text
    assert "![e2e_latency.png](e2e_latency.png)" in text
    assert "**failed**: boom" in text
    combined = json.loads((tmp_path / "results.json").read_text())
    assert combined["command"] == "benchmarks all --quick"
    assert set(combined["results"]) == {"e2e", "broken"}


def _pipeline_result(scenario: Any, readings_per_s: int) -> dict[str, Any]:
    """What ``run_pipeline`` returns, for a run that sustained ``readings_per_s``."""
    series = [
        {"t": 100.0 + i, "agents": {"readings": i * readings_per_s, "samples": i * 10}}
        for i in range(5)
    ]
    return {
        "scenario": dataclasses.asdict(scenario),
        "simulator": {
            "processes": 1,
            "readings": 4 * readings_per_s,
            "achieved_rate": readings_per_s,
            "failed": 0,
            "forfeited_readings": 0,
        },
        "publish_window": [100.0, 104.0],
        "sustained_readings_per_s": readings_per_s,
        "sustained_points_per_s": 10 * readings_per_s,
        "latency_query_from_device_ts_s": {"p50": 0.5, "p99": 0.9, "n": 2},
        "latency_query_from_publish_s": {"p50": 0.4, "p99": 0.8, "n": 1},
        "api_query_seconds": {},
        "latency_push_open_window_s": {},
        "latency_push_closed_window_s": {},
        "cpu_percent_of_one_core": {},
        "loss_check": {
            "ok": True,
            "stored_readings": 4 * readings_per_s,
            "expected_readings": 4 * readings_per_s,
            "missing": 0,
            "stored_twice": 0,
            "wrong_values": 0,
            "faults": {},
        },
        "loss_check_ok": True,
        "drain_seconds": 1.0,
        "check_seconds": 1.0,
        "probe_errors": [],
        "_series": series,
        "_query_lat": [(101.0, 0.5, True), (102.0, 0.6, False)],
    }


def test_e2e_on_each_store_keeps_its_own_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`benchmarks e2e`, then `E2E_STORE=mongodb benchmarks e2e`: both summaries are kept,
    each with its own plots (the pipeline itself is replaced by a canned result)."""

    class Stack:
        def __init__(self, *, keep_logs: bool, store_url: str) -> None:
            self.workdir = tmp_path / f"stack-{store_url.startswith('mongodb')}"

        def start(self) -> None:
            self.workdir.mkdir()

        def stop(self) -> None:
            pass

    class MongoDB:
        url = "mongodb://127.0.0.1:1"

        def __init__(self, *, cache_size: str) -> None:
            pass

        def start(self) -> None:
            pass

        def cleanup(self) -> None:
            pass

    rates = {"postgres": 1_800, "mongodb": 140}

    def pipeline(stack: Stack, scenario: Any, work: Path, *, log: Any) -> dict[str, Any]:
        return _pipeline_result(scenario, rates[os.environ["E2E_STORE"]])

    def child_process(cmd: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        # `python -m benchmarks _child e2e ...`, in this process.
        code = cli.app(args=cmd[3:], standalone_mode=False)
        return subprocess.CompletedProcess(cmd, code)

    def plot(results_dir: Path, res: dict[str, Any]) -> list[str]:
        # As bench_e2e._plot names its plots, without matplotlib's seconds of import.
        names = ["e2e_throughput.png", "e2e_latency.png"]
        for name in names:
            (results_dir / name).write_bytes(b"png")
        return names

    monkeypatch.setattr(bench_e2e, "E2EStack", Stack)
    monkeypatch.setattr(bench_e2e, "_plot", plot)
    monkeypatch.setattr(bench_e2e, "run_pipeline", pipeline)
    monkeypatch.setattr(iotctl.sandbox, "PrivateMongoDB", MongoDB)
    monkeypatch.setattr(cli, "subprocess", types.SimpleNamespace(run=child_process))
    results = tmp_path / "results"
    for store in rates:
        monkeypatch.setenv("E2E_STORE", store)
        args = ["run", "e2e", "--quick", "--results-dir", str(results)]
        cli.app(args=args, standalone_mode=False)

    kept = {
        store: json.loads((results / name).read_text())
        for store, name in (("postgres", "e2e.json"), ("mongodb", "e2e_mongodb.json"))
        if (results / name).exists()
    }
    assert {s: r["store"] for s, r in kept.items()} == {s: s for s in rates}
    for store, result in kept.items():
        assert result["sustained_readings_per_s"] == rates[store]
        assert result["_meta"]["plots"]
        assert all((results / plot).is_file() for plot in result["_meta"]["plots"])
    assert not set(kept["postgres"]["_meta"]["plots"]) & set(kept["mongodb"]["_meta"]["plots"])
    # The report of the second run shows the MongoDB run's plots, not PostgreSQL's.
    report = (results / "REPORT.md").read_text()
    assert "MongoDB emulator" in report
    assert all(f"]({plot})" in report for plot in kept["mongodb"]["_meta"]["plots"])
