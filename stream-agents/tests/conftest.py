"""Fixtures: a real Tansu broker (root conftest), a monitoring store (PostgreSQL, or MongoDB
for a test parametrised with ``both_backends``), agent worker processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from iot_common.topics import Topics
from monitoring_store import open_store
from monitoring_store.base import MonitoringStore

sys.path.insert(0, str(Path(__file__).parent))

from agents_testkit import PARTITIONS, AgentEnv, create_topics


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test's deployments: PostgreSQL unless the test is
    parametrised over both (``agents_testkit.both_backends``)."""
    return str(getattr(request, "param", "postgres"))


@pytest.fixture
def agent_env_factory(
    kafka_bootstrap: str,
    store_url_factory: Callable[[str, str], str],
    store_backend: str,
    infra_env: dict[str, str],
    tmp_path: Any,
) -> Iterator[Callable[..., AgentEnv]]:
    made: list[AgentEnv] = []

    def make(**settings: str) -> AgentEnv:
        run = secrets.token_hex(3)
        topics = Topics(f"{infra_env['IOT_TOPIC_PREFIX']}{run}.")
        # May be called from a running loop (async tests): create topics on another thread.
        t = threading.Thread(target=lambda: asyncio.run(create_topics(kafka_bootstrap, topics)))
        t.start()
        t.join()
        url = store_url_factory(store_backend, "agents")
        env = {
            **os.environ,
            **infra_env,
            "IOT_TOPIC_PREFIX": topics.prefix,
            "MONITORING_STORE_URL": url,
            "AGENTS_APP_ID": f"agents-test-{run}",
            "AGENTS_TOPIC_PARTITIONS": str(PARTITIONS),
            "AGENTS_EMIT_INTERVAL": "0.5",
            "AGENTS_IDLE_CLOSE_SECONDS": "0.5",
            "AGENTS_ALLOWED_LATENESS": "5",
            "AGENTS_REORDER_SLACK": "5",
            "AGENTS_DEFAULT_RULES": "{}",
            "IOT_LOG_LEVEL": "INFO",
            **settings,
        }
        ae = AgentEnv(kafka_bootstrap, topics, url, env["AGENTS_APP_ID"], env, str(tmp_path))
        made.append(ae)
        return ae

    yield make
    for ae in made:
        for w in ae.workers:
            w.stop()
            w.log.close()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def store_factory() -> AsyncIterator[Callable[[str], Any]]:
    opened: list[MonitoringStore] = []

    async def make(url: str) -> MonitoringStore:
        s = open_store(url)
        await s.start()
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()
