"""Reliability: the local stack under simulated load survives restarts and kills.

With every service running under ``iotctl up`` and the simulator publishing over MQTT, this
restarts RabbitMQ, Redis, PostgreSQL and Mosquitto one at a time and SIGKILLs each of our
services in turn. Afterwards the simulator's ledger check proves that every accepted reading
was stored exactly once with its values (and every injected fault accounted for), the stored
windows contain every stored reading, and every service is healthy again, restarted by the
supervisor without manual action.

The infrastructure here is a private instance of each server (``iotctl.sandbox``), so the
restarts do not disturb anything else using the machine's own services. The Mosquitto is the
platform's own (:class:`iotctl.mosquitto.Mosquitto`: device clients kept by device-management,
anonymous clients refused), so the readings go through the authenticated path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iotctl.broker import free_port, port_open, speaks_kafka
from iotctl.components import COMPONENTS, landed, script_path
from iotctl.mosquitto import Mosquitto
from iotctl.sandbox import (
    PrivatePostgres,
    PrivateRabbitMQ,
    PrivateRedis,
    SandboxUnavailable,
)

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["signing", "device-management", "ingest-bridge", "stream-agents", "monitoring-api"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(landed(COMPONENTS[n]) for n in [*SERVICES, "simulator"]),
        reason="needs every service and the simulator",
    ),
    pytest.mark.timeout(600),
]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Infra:
    def __init__(self) -> None:
        self.redis = PrivateRedis()
        # The platform's accounts (dynamic security, anonymous clients refused; iotctl turns
        # device-management's provisioning on), persistent, so QoS 1 sessions and the device
        # clients survive its restart.
        self.mqtt = Mosquitto()
        self.pg = PrivatePostgres()
        self.rabbit = PrivateRabbitMQ()
        self.all = {
            "RabbitMQ": self.rabbit,
            "Redis": self.redis,
            "PostgreSQL": self.pg,
            "Mosquitto": self.mqtt,
        }


@pytest.fixture(scope="module")
def infra() -> Iterator[Infra]:
    servers = Infra()
    started = []
    try:
        for server in servers.all.values():
            server.start()
            started.append(server)
    except SandboxUnavailable as exc:
        for server in started:
            server.cleanup()
        pytest.skip(str(exc))
    yield servers
    for server in started:
        server.cleanup()


class Stack:
    def __init__(self, env: dict[str, str], store: str, store_url: str) -> None:
        self.env = env
        #: The monitoring store's backend (``iotctl up --store``) and where it is.
        self.store = store
        self.store_url = store_url

    # On PostgreSQL every infrastructure server restarts and every service is SIGKILLed. On
    # MongoDB, where each step is slower (the store is an emulator), the run breaks what
    # touches the store: the agents, the API and the store's own server; the suite's time
    # stays within its budget.
    def restarts(self, infra: Infra) -> dict[str, Any]:
        return infra.all if self.store == "postgres" else {}

    def kills(self) -> list[str]:
        if self.store == "postgres":
            return SERVICES
        return ["stream-agents", "monitoring-api", "mongodb"]

    def iotctl(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iotctl", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, dict[str, object]]:
        out = self.iotctl("status", "--json", timeout=60)
        return {row["component"]: row for row in json.loads(out.stdout)}

    def port(self, name: str) -> int:
        return int(self.env[f"IOTCTL_{name.upper().replace('-', '_')}_PORT"])

    def pid(self, name: str) -> int | None:
        """The pid the supervisor recorded for ``name`` (read directly: this is polled)."""
        for path in (Path(self.env["IOTCTL_RUN_DIR"]) / "stacks").glob("*.json"):
            try:
                procs = json.loads(path.read_text())["procs"]
            except (OSError, ValueError, KeyError):
                continue
            if name in procs:
                return int(procs[name]["pid"])
        return None

    def all_healthy(self) -> bool:
        if not speaks_kafka("127.0.0.1", self.port("broker")):
            return False
        if self.store == "mongodb" and not port_open("127.0.0.1", self.port("mongodb")):
            return False
        for name in SERVICES:
            path = COMPONENTS[name].health_path
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port(name)}{path}", timeout=1)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:
                return False
        return True


#: One run on each monitoring store backend; on MongoDB the store's server (the emulator,
#: supervised by iotctl) is SIGKILLed too.
@pytest.fixture(params=["postgres", "mongodb"])
def stack(tmp_path: Path, infra: Infra, request: pytest.FixtureRequest) -> Iterator[Stack]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IOTCTL_", "IOT_")) and k != "MONITORING_STORE_URL"
    }
    env.update(
        {
            "IOTCTL_RUN_DIR": str(tmp_path / "run"),
            "IOTCTL_ROOT": str(ROOT),
            # The simulator (started below, not by iotctl) uses the development secrets too.
            "IOT_ALLOW_DEV_DEFAULTS": "true",
            "IOT_DATABASE_URL": infra.pg.url("iot"),
            "IOT_REDIS_URL": infra.redis.url,
            "IOT_RABBITMQ_URL": infra.rabbit.url,
            "IOT_MQTT_HOST": "127.0.0.1",
            "IOT_MQTT_PORT": str(infra.mqtt.port),
            "SIGNING_KEY_FILE": str(tmp_path / "signing-key.pem"),
            "COLUMNS": "200",
        }
    )
    for name in ["broker", "gateway", "mongodb", *SERVICES]:
        env[f"IOTCTL_{name.upper().replace('-', '_')}_PORT"] = str(free_port())
    store: str = request.param
    if store == "mongodb":
        store_url = f"mongodb://127.0.0.1:{env['IOTCTL_MONGODB_PORT']}/iot"
    else:
        store_url = infra.pg.url("iot")
    s = Stack(env, store, store_url)
    yield s
    s.iotctl("down", timeout=120)


def test_no_reading_lost_or_double_counted_through_restarts_and_kills(
    stack: Stack, infra: Infra, tmp_path: Path
) -> None:
    up = stack.iotctl("up", *SERVICES, "--detach", "--health-timeout=120", f"--store={stack.store}")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr
    ports = {n: int(stack.env[f"IOTCTL_{n.upper().replace('-', '_')}_PORT"]) for n in SERVICES}
    broker = f"127.0.0.1:{stack.env['IOTCTL_BROKER_PORT']}"

    # The simulator publishes over MQTT until stopped, keeping a ledger of every reading.
    ledger = tmp_path / "ledger"
    summary = tmp_path / "summary.json"
    sim_env = {
        **stack.env,
        "IOT_KAFKA_BOOTSTRAP": broker,
        "IOT_SIGNING_URL": f"http://127.0.0.1:{ports['signing']}",
        "IOT_DEVICE_MANAGEMENT_URL": f"http://127.0.0.1:{ports['device-management']}",
        "SIMULATOR_INGEST_URL": f"http://127.0.0.1:{ports['ingest-bridge']}",
    }
    simulator = script_path("simulator")
    assert simulator is not None
    sim_log = open(tmp_path / "simulator.log", "wb")  # noqa: SIM115
    sim = subprocess.Popen(
        [
            simulator,
            "run",
            "--config",
            str(ROOT / "simulator" / "fleets" / "demo.yaml"),
            "--rate",
            "40",
            "--duration",
            "0",
            "--ledger",
            str(ledger),
            "--devices-file",
            str(tmp_path / "devices.json"),
            "--summary-json",
            str(summary),
            "--no-live",
        ],
        env=sim_env,
        cwd=ROOT,
        stdout=sim_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: (ledger / "manifest.json").exists(), 60, "the simulator to register")
        time.sleep(2)

        # Infrastructure restarts, one at a time; everything must be healthy again after each.
        for name, server in stack.restarts(infra).items():
            server.restart()
            wait_until(stack.all_healthy, 90, f"every service healthy after restarting {name}")
            time.sleep(1)

        # SIGKILL each service (or server) in turn; the supervisor restarts it.
        for name in stack.kills():
            before = stack.pid(name)
            assert before is not None, f"{name} has no pid"
            os.kill(before, signal.SIGKILL)
            wait_until(
                lambda n=name, b=before: stack.pid(n) not in (None, b),  # type: ignore[misc]
                30,
                f"{name} to be restarted",
            )
            wait_until(stack.all_healthy, 90, f"every service healthy after killing {name}")
            time.sleep(1)
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(60)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        sim_log.close()
    sim_out = (tmp_path / "simulator.log").read_text(errors="replace")
    assert summary.exists(), sim_out[-3000:]
    sent = json.loads(summary.read_text())
    assert sent["readings"] > 0
    # The simulator re-sends what a restarting broker did not acknowledge, so every reading it
    # published was accepted and must be stored exactly once.
    assert sent["failed"] == 0, sim_out[-3000:]

    from benchmarks.e2e_check import run_check, time_range
    from monitoring_store import open_store
    from simulator.ledger import read_ledger

    result = asyncio.run(run_check(ledger, store_url=stack.store_url, bootstrap=broker, wait_s=60))
    report = "\n".join(result.summary_lines())
    assert result.ok, report
    assert result.missing == 0, report
    assert result.stored_twice == 0, report

    # Windows count every stored reading exactly once (no double counting after replays).
    led = read_ledger(ledger)
    start, end = time_range(led)

    async def counts() -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
        store = open_store(stack.store_url)
        await store.start()
        try:
            samples: Counter[tuple[str, str]] = Counter()
            windows: Counter[tuple[str, str]] = Counter()
            for device in led.devices:
                for s in await store.query_samples(
                    device, metrics=None, start=start, end=end, limit=1_000_000
                ):
                    samples[(device, s.metric)] += 1
                for w in await store.query_windows(
                    device, metrics=None, window_seconds=10, start=start - 10, end=end + 10
                ):
                    windows[(device, w.metric)] += w.count
            return samples, windows
        finally:
            await store.close()

    # Windows count every stored reading exactly once: replays after the kills neither lost nor
    # double-counted any (re-sent duplicates are counted once, as the raw samples are stored once).
    deadline = time.monotonic() + 30
    samples, windows = asyncio.run(counts())
    while samples != windows and time.monotonic() < deadline:
        time.sleep(1)
        samples, windows = asyncio.run(counts())
    diff = {
        k: (samples[k], windows[k])
        for k in samples.keys() | windows.keys()
        if samples[k] != windows[k]
    }
    assert not diff, f"windows disagree with stored readings (stored, counted): {diff}"
    assert sum(samples.values()) > 0

    rows = stack.status()
    assert all(rows[n]["health"] == "healthy" for n in SERVICES)
