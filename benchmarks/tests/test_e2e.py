"""A short end-to-end run through the real services, and its loss check.

simulator → MQTT → ingest-bridge → Kafka → stream-agents → PostgreSQL store: a few thousand
readings with every kind of fault injected; every valid reading must be stored exactly once
with its values, every fault dead-lettered with the right reason (or, for duplicates and
out-of-order messages, stored once).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_e2e import Scenario, run_pipeline
from benchmarks.e2e_stack import E2EStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_every_reading_stored_once_and_every_fault_accounted(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    scenario = Scenario(
        rate=500,
        duration=8,
        batch=2,
        devices=20,
        probes=False,
        faults={
            "out_of_order": 0.02,
            "duplicate": 0.02,
            "late": 0.02,
            "late_seconds": 3600,
            "malformed": 0.02,
            "unknown_device": 0.02,
        },
    )
    with E2EStack(kafka_bootstrap=kafka_bootstrap) as stack:
        res = run_pipeline(stack, scenario, tmp_path, drain_s=60, log=lambda _: None)
    check = res["loss_check"]
    assert res["simulator"]["readings"] == 4000
    assert res["simulator"]["failed"] == 0
    assert check["expected_readings"] >= 3800
    assert check["missing"] == 0, check
    assert check["stored_twice"] == 0
    assert check["wrong_values"] == 0 and check["wrong_ts"] == 0
    assert check["unexpected_stored"] == 0
    kinds = set(check["faults"])
    assert {"out_of_order", "duplicate", "late", "unknown_device"} <= kinds
    assert any(k.startswith("malformed") for k in kinds)
    for kind, counts in check["faults"].items():
        assert counts["accounted"] == counts["injected"], (kind, check)
    assert res["loss_check_ok"]
