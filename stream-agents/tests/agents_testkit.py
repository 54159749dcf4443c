"""Helpers of the stream-agents tests (imported by conftest and the test modules)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from iot_common.telemetry import Reading, TelemetryEnvelope
from iot_common.topics import Topics
from iotctl.broker import free_port

PARTITIONS = 4


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Any

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return None

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class AgentEnv:
    """One isolated agents deployment: topics, store database, consumer group."""

    bootstrap: str
    topics: Topics
    store_url: str
    app_id: str
    env: dict[str, str]
    log_dir: str
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, **extra: str) -> Worker:
        port = free_port()
        env = {**self.env, "AGENTS_WEB_PORT": str(port), **extra}
        log = open(os.path.join(self.log_dir, f"worker-{port}.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_agents"], env=env, stdout=log, stderr=log
        )
        w = Worker(proc, port, log)
        self.workers.append(w)
        return w

    def wait_ready(self, w: Worker, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert w.proc.poll() is None, f"worker exited: {w.proc.returncode}"
            h = w.health()
            if h and h.get("status") == "ok" and h.get("partitions"):
                return
            time.sleep(0.2)
        raise AssertionError("worker not ready")


async def create_topics(bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in topics.all()])
    finally:
        await admin.close()


def envelope(
    device: str,
    ingest: float,
    readings: list[tuple[float, dict[str, float]]],
    seqs: list[int | None] | None = None,
) -> bytes:
    """One TelemetryEnvelope; each reading's seq is its index unless ``seqs`` is given."""
    seq = seqs if seqs is not None else list(range(len(readings)))
    return msgspec.json.encode(
        TelemetryEnvelope(
            device,
            "http",
            ingest,
            [Reading(t, m, q) for (t, m), q in zip(readings, seq, strict=True)],
        )
    )


async def read_topic(
    bootstrap: str, topic: str, *, until: Callable[[list[bytes]], bool], timeout: float = 20.0
) -> list[bytes]:
    c = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await c.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300)
            for recs in batch.values():
                got.extend(r.value for r in recs if r.value is not None)
            if until(got):
                return got
        return got
    finally:
        await c.stop()


async def wait_for(cond: Callable[[], Any], timeout: float = 30.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await cond()
        if last:
            return last
        await asyncio.sleep(every)
    return last
