from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator.fleet import Fleet
from simulator.publisher import Device, Publisher, WorkerSpec
from simulator.registry import local_devices
from simulator.transports import TransportConfig


class RecordingTransport:
    """Keeps every published message (device id, payload) in order.

    ``sample_intervals`` stand for the devices' applied configurations; ``on_message(self,
    device_id)`` runs after each message (a test changes a configuration mid-run there).
    """

    def __init__(
        self,
        sample_intervals: dict[str, float] | None = None,
        on_message: Callable[[RecordingTransport, str], None] | None = None,
    ) -> None:
        self.sent = self.acked = self.failed = self.rejected = 0
        self.messages: list[tuple[str, bytes, bool]] = []
        self.sample_intervals: dict[str, float] = dict(sample_intervals or {})
        self.config_changes = 0
        self.on_message = on_message

    async def start(self) -> None:
        return None

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        self.sent += 1
        self.acked += 1
        self.messages.append((device_id, payload, expect_reject))
        if self.on_message is not None:
            self.on_message(self, device_id)

    async def flush(self, limit: float) -> None:
        return None

    async def close(self) -> None:
        return None


def fleet_dict(**faults: float) -> dict[str, Any]:
    return {
        "name": "testfleet",
        "seed": 3,
        "device_types": [
            {
                "name": "thermo",
                "count": 5,
                "metrics": [
                    {
                        "name": "temp",
                        "min": -10,
                        "max": 50,
                        "generator": {"kind": "sine", "offset": 20, "amplitude": 5, "period": 10},
                    },
                    {
                        "name": "hum",
                        "min": 0,
                        "max": 100,
                        "generator": {"kind": "random_walk", "start": 50, "step": 1},
                        "dropout": 0.1,
                    },
                ],
                "rules": [
                    {"type": "threshold", "id": "hot", "metric": "temp", "op": "above", "value": 24}
                ],
            },
            {
                "name": "pump",
                "count": 3,
                "metrics": [
                    {
                        "name": "pressure",
                        "min": 0,
                        "max": 10,
                        "generator": {"kind": "steps", "levels": [1, 5, 9], "every": 2},
                        "spikes": {"probability": 0.05, "magnitude": 3},
                    }
                ],
            },
        ],
        "faults": faults,
    }


def run_publisher(
    fleet: dict[str, Any],
    *,
    rate: float,
    duration: float,
    batch: int = 1,
    ledger_dir: Path | None = None,
    seed: int = 3,
    start_wall: float | None = None,
    sample_intervals: dict[str, float] | None = None,
    on_message: Callable[[RecordingTransport, str], None] | None = None,
) -> tuple[RecordingTransport, Publisher, list[Device]]:
    f = Fleet.model_validate(fleet)
    devices = local_devices(f, seed)
    spec = WorkerSpec(
        shard=0,
        shards=1,
        fleet=fleet,
        devices=devices,
        rate=rate,
        duration=duration,
        batch=batch,
        seed=seed,
        run_id="testrun",
        transport=TransportConfig(kind="null"),
        start_wall=time.time() if start_wall is None else start_wall,
        ledger_dir=ledger_dir,
    )
    transport = RecordingTransport(sample_intervals, on_message)
    pub = Publisher(spec, transport=transport)
    asyncio.run(pub.run())
    return transport, pub, devices


@pytest.fixture
def recording_run() -> Any:
    return run_publisher


@pytest.fixture
def make_fleet() -> Any:
    return fleet_dict
