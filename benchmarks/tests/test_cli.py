"""The `benchmarks` command: discovery, and the report it writes."""

from __future__ import annotations

import json
from pathlib import Path

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
