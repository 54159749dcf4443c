"""Fixtures shared by every package's tests: real infrastructure, isolated per test run.

Each pytest session gets its own PostgreSQL database, Redis key namespace, Kafka topic prefix
and RabbitMQ/MQTT name prefix, so several runs (and developers) can share one machine's
services without seeing each other's data. The Kafka-compatible broker is the one named by
``IOT_KAFKA_BOOTSTRAP`` (``make test`` starts one) or, failing that, a Tansu this session starts.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from iotctl.broker import TansuBroker, free_port, port_open

# pytest's importlib mode names a test module after its folders ("signing.tests.conftest") and,
# when the top package is not imported yet, stands in a namespace module built from the folder
# for it. Where a folder is named like its package, that stand-in would shadow the real package,
# so those packages are imported before any of their tests.
for _package in ("signing", "simulator", "benchmarks"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_package)

PG_ADMIN_URL = os.environ.get("IOT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("IOT_KAFKA_BOOTSTRAP")
    if given:
        host, _, port = given.rpartition(":")
        if port_open(host, int(port)):
            yield given
            return
    broker = TansuBroker(port=free_port())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def topic_prefix(run_id: str) -> str:
    return f"t{run_id}."


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("IOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_namespace(run_id: str) -> str:
    return f"test{run_id}"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return os.environ.get("IOT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def mqtt_address() -> tuple[str, int]:
    return ("127.0.0.1", int(os.environ.get("IOT_TEST_MQTT_PORT", "1883")))


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def pg_database_factory(run_id: str) -> Iterator[object]:
    """Create throw-away PostgreSQL databases; returns their asyncpg-style URLs."""
    created: list[str] = []

    def make(label: str) -> str:
        name = f"iot_test_{run_id}_{label}_{len(created)}"
        _psql(f'CREATE DATABASE "{name}"')
        created.append(name)
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        return f"{base}/{name}"

    yield make
    for name in created:
        with contextlib.suppress(subprocess.CalledProcessError):
            _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def infra_env(
    kafka_bootstrap: str,
    redis_url: str,
    redis_namespace: str,
    topic_prefix: str,
    rabbitmq_url: str,
) -> dict[str, str]:
    """``IOT_*`` environment for running a service as a subprocess against this run's infra."""
    return {
        "IOT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "IOT_REDIS_URL": redis_url,
        "IOT_REDIS_NAMESPACE": redis_namespace,
        "IOT_TOPIC_PREFIX": topic_prefix,
        "IOT_RABBITMQ_URL": rabbitmq_url,
    }
