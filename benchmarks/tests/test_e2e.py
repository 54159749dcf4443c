"""Short end-to-end runs through the real services, and their loss checks.

simulator → MQTT/HTTP/AMQP → ingest-bridge → Kafka → stream-agents → PostgreSQL store: a few
thousand readings with every kind of fault injected; every valid reading must be stored exactly
once with its values, every fault dead-lettered with the right reason (or, for duplicates and
out-of-order messages, stored once).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_e2e import Scenario, run_pipeline
from benchmarks.e2e_check import run_check
from benchmarks.e2e_stack import E2EStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAULTS = {
    "out_of_order": 0.02,
    "duplicate": 0.02,
    "late": 0.02,
    "late_seconds": 3600,
    "malformed": 0.02,
    "unknown_device": 0.02,
}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str) -> Iterator[E2EStack]:
    with E2EStack(kafka_bootstrap=kafka_bootstrap) as s:
        yield s


@pytest.fixture(scope="module")
def first_run(stack: E2EStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Registers 20 devices and publishes 4,000 readings over MQTT."""
    work = tmp_path_factory.mktemp("e2e-mqtt")
    scenario = Scenario(
        rate=500, duration=8, batch=2, devices=20, probes=False, faults=dict(FAULTS)
    )
    res = run_pipeline(stack, scenario, work, drain_s=60, log=lambda _: None)
    res["workdir"] = work
    return res


def _assert_passes(check: dict[str, Any]) -> None:
    assert check["missing"] == 0, check
    assert check["stored_twice"] == 0, check
    assert check["wrong_values"] == 0 and check["wrong_ts"] == 0, check
    assert check["unexpected_stored"] == 0, check
    for kind, counts in check["faults"].items():
        assert counts["accounted"] == counts["injected"], (kind, check)
    assert check["ok"]


def test_mqtt_every_reading_stored_once_and_every_fault_accounted(
    first_run: dict[str, Any],
) -> None:
    check = first_run["loss_check"]
    assert first_run["simulator"]["readings"] == 4000
    assert first_run["simulator"]["failed"] == 0
    assert check["expected_readings"] >= 3800
    kinds = set(check["faults"])
    assert {"out_of_order", "duplicate", "late", "unknown_device"} <= kinds
    assert any(k.startswith("malformed") for k in kinds)
    _assert_passes(check)


@pytest.mark.parametrize("transport", ["http", "amqp"])
def test_cli_reuses_the_registered_devices_over_http_and_amqp(
    stack: E2EStack, first_run: dict[str, Any], transport: str, tmp_path: Path
) -> None:
    work: Path = first_run["workdir"]
    ledger = tmp_path / "ledger"
    summary = tmp_path / "summary.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "run",
            "--config",
            str(work / "fleet.yaml"),
            "--reuse-devices",
            "--devices-file",
            str(work / "devices.json"),
            "--transport",
            transport,
            "--rate",
            "300",
            "--duration",
            "4",
            "--batch",
            "3",
            "--ledger",
            str(ledger),
            "--summary-json",
            str(summary),
            "--no-live",
        ],
        env=stack.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode == 0, text
    assert "reusing 20 devices" in text
    sim = json.loads(summary.read_text())
    assert sim["readings"] == 1200 and sim["failed"] == 0
    result = asyncio.run(
        run_check(
            ledger,
            store_url=stack.database_url,
            bootstrap=str(stack.kafka_bootstrap),
            topic_prefix=stack.topic_prefix,
            wait_s=60,
        )
    )
    check = result.__dict__
    assert check["expected_readings"] >= 1100
    _assert_passes(check)
