"""Fixtures shared by every package's tests: real infrastructure, isolated per test run.

Each pytest session gets its own PostgreSQL database, Redis key namespace, Kafka topic prefix
and RabbitMQ/MQTT name prefix, so several runs (and developers) can share one machine's
services without seeing each other's data. The Kafka-compatible broker is the one named by
``IOT_KAFKA_BOOTSTRAP`` (``make test`` starts one) or, failing that, a Tansu this session starts.
The MongoDB-compatible server is the one named by ``MONGODB_URL`` or, failing that, a private
SecantusDB this session starts (installed when missing): the MongoDB cases never skip.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotctl.broker import TansuBroker, free_port, port_open
from iotctl.mosquitto import Accounts, Mosquitto
from iotctl.testinfra import (
    PsqlError,
    RabbitAdmin,
    coverage_by_package,
    coverage_lines,
    create_database,
    drop_database,
    mongodb_server,
)

# pytest's importlib mode names a test module after its folders ("signing.tests.conftest") and,
# when the top package is not imported yet, stands in a namespace module built from the folder
# for it. Where a folder is named like its package, that stand-in would shadow the real package,
# so those packages are imported before any of their tests.
for _package in ("signing", "simulator", "benchmarks"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_package)

# The tests run every service against this machine's unauthenticated PostgreSQL, Redis and
# RabbitMQ with the repository's development secrets; services (and subprocesses the tests
# start) refuse those without this flag. Tests of the refusal itself unset it.
os.environ.setdefault("IOT_ALLOW_DEV_DEFAULTS", "true")

_SESSION_START = pytest.StashKey[float]()


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
def mongodb_url() -> Iterator[str]:
    """A MongoDB server for this session: ``MONGODB_URL``, else a private one started here."""
    with mongodb_server() as url:
        yield url


#: The monitoring store's backends; end-to-end tests through the store run on each.
STORE_BACKENDS = ("postgres", "mongodb")


@pytest.fixture(scope="session")
def store_url_factory(
    run_id: str, mongodb_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[str, str], str]]:
    """Throw-away monitoring stores by backend: ``make("postgres" | "mongodb", label)`` → URL
    (a PostgreSQL database, or a database on the session's MongoDB-compatible server)."""
    made: list[str] = []

    def make(backend: str, label: str) -> str:
        if backend == "postgres":
            url: str = request.getfixturevalue("pg_database_factory")(f"store_{label}")
            return url
        if backend != "mongodb":
            raise ValueError(f"unknown store backend {backend!r}")
        url = f"{mongodb_url.rstrip('/')}/iot_test_{run_id}_{label}_{len(made)}"
        made.append(url)
        return url

    yield make
    if made:  # before the session's server stops (this fixture depends on it)
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(mongodb_url)
        for url in made:
            client.drop_database(url.rsplit("/", 1)[1])
        client.close()


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


RABBITMQ_MANAGEMENT_URL = os.environ.get(
    "IOT_TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"
)


class RabbitVhost:
    """This session's private RabbitMQ virtual host, its service accounts and an admin client.

    The machine's RabbitMQ is shared by every run: users are global there, so the service
    accounts carry the run id, and every user granted in the vhost is deleted with it at the
    end (the device users the tests provisioned included).
    """

    def __init__(self, run_id: str, admin_url: str) -> None:
        self.admin = RabbitAdmin.from_url(admin_url)
        self.name = f"iot-test-{run_id}"
        self.admin_username = self.admin.username
        self.admin_password = self.admin.password
        self.management_url = RABBITMQ_MANAGEMENT_URL
        self.bridge_username = f"ingest-bridge-{run_id}"
        self.publisher_username = f"device-management-{run_id}"
        self.bridge_password = secrets.token_urlsafe(12)
        self.publisher_password = secrets.token_urlsafe(12)

    def url(self, username: str | None = None, password: str | None = None) -> str:
        """An AMQP URL into the vhost (the admin's when no user is given)."""
        return self.admin.url(self.name, username, password)

    @property
    def bridge_url(self) -> str:
        return self.url(self.bridge_username, self.bridge_password)

    @property
    def publisher_url(self) -> str:
        return self.url(self.publisher_username, self.publisher_password)

    def management(self) -> Any:
        return self.admin.management(self.management_url)


def _ensure_rabbitmq_management(url: str) -> None:
    """The management API is RabbitMQ's own plugin; enable it on the machine's broker if off."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 15672
    if port_open(host, port):
        return
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_management"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    import time

    deadline = time.monotonic() + 60
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ's management API did not come up on {host}:{port}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def rabbitmq_vhost(run_id: str, rabbitmq_url: str) -> Iterator[RabbitVhost]:
    """A private vhost with the platform's exchanges and service accounts, deleted at the end."""
    import asyncio

    from iot_common import rabbitmq
    from iot_common.topics import DEVICE_EVENTS_EXCHANGE, TELEMETRY_EXCHANGE

    _ensure_rabbitmq_management(RABBITMQ_MANAGEMENT_URL)
    vhost = RabbitVhost(run_id, rabbitmq_url)

    async def setup() -> None:
        async with vhost.management() as api:
            await api.import_definitions(
                rabbitmq.definitions(
                    vhost=vhost.name,
                    telemetry_exchange=TELEMETRY_EXCHANGE,
                    events_exchange=DEVICE_EVENTS_EXCHANGE,
                    bridge_queues=["ingest-bridge.telemetry", "ingest-bridge.device-events"],
                    bridge_password=vhost.bridge_password,
                    publisher_password=vhost.publisher_password,
                    bridge_username=vhost.bridge_username,
                    publisher_username=vhost.publisher_username,
                )
            )
            # Each test's bridge gets queues of its own: the session's bridge account may use
            # every ingest-bridge.* queue (a deployment grants it exactly its two).
            await api.grant(
                vhost.name,
                vhost.bridge_username,
                rabbitmq.Permissions(
                    configure=r"^ingest-bridge\..*$",
                    write=r"^ingest-bridge\..*$",
                    read=r"^(telemetry|device\.events|ingest-bridge\..*)$",
                ),
            )
            # The admin works in the vhost too (tests inspect queues with it).
            await api.grant(
                vhost.name, vhost.admin_username, rabbitmq.Permissions(".*", ".*", ".*")
            )

    async def teardown() -> None:
        async with vhost.management() as api:
            users = set(await api.vhost_users(vhost.name)) - {vhost.admin_username}
            await api.delete_vhost(vhost.name)
            await api.delete_users(sorted(users))

    asyncio.run(setup())
    try:
        yield vhost
    finally:
        asyncio.run(teardown())


@pytest.fixture(scope="session")
def mqtt_address() -> tuple[str, int]:
    return ("127.0.0.1", int(os.environ.get("IOT_TEST_MQTT_PORT", "1883")))


#: MQTT topic prefixes a test may use on the session's broker: none, or ``test/<tag>/``.
TEST_MQTT_PREFIXES = ("", "test/+/")


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """This session's own Mosquitto: dynamic security, anonymous clients refused.

    The service accounts have their development passwords (what the services default to);
    every test may use its own topic prefix and share group.
    """
    broker = Mosquitto(
        persistence=False, accounts=Accounts(prefixes=TEST_MQTT_PREFIXES, share_group="+")
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


class MqttConnection:
    """One MQTT v5 connection (paho, network loop in a thread) that records what happens."""

    def __init__(
        self, address: tuple[str, int], username: str | None, password: str | None, client_id: str
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.connack = threading.Event()
        self.disconnected = threading.Event()
        self.reason: str = ""
        self.disconnect_reason: str = ""
        self.messages: list[tuple[str, bytes]] = []
        self._acks: dict[int, threading.Event] = {}
        self._results: dict[int, Any] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_ack
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect(*address)
        self.client.loop_start()
        if not self.connack.wait(10):
            raise AssertionError("no CONNACK")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.reason = str(rc)
        if rc.is_failure:
            self.disconnected.set()
            client.disconnect()
        self.connack.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnect_reason = str(rc)
        self.disconnected.set()
        client.disconnect()  # no automatic reconnect: a test sees each connection's fate

    def _on_ack(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._results[mid] = rc
        self._acks.setdefault(mid, threading.Event()).set()

    @property
    def accepted(self) -> bool:
        return self.reason == "Success"

    def _wait(self, mid: int, timeout: float) -> str:
        if not self._acks.setdefault(mid, threading.Event()).wait(timeout):
            raise AssertionError(f"no answer to message {mid}")
        rc = self._results[mid]
        if isinstance(rc, list):
            return ",".join(str(r) for r in rc)
        # 0x10 "No matching subscribers" is a success too: the broker took the message.
        return str(rc) if rc.is_failure else "Success"

    def publish(self, topic: str, payload: bytes | str, *, timeout: float = 10) -> str:
        """Publish at QoS 1; "Success" when the broker took it, else its PUBACK reason."""
        info = self.client.publish(topic, payload, qos=1)
        return self._wait(info.mid, timeout)

    def subscribe(self, topic: str, *, timeout: float = 10) -> str:
        """Subscribe at QoS 1; the SUBACK reason ("Granted QoS 1", "Not authorized", …)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self._wait(mid, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_connect(mosquitto: Mosquitto) -> Iterator[Callable[..., MqttConnection]]:
    """Open MQTT connections to the session's broker (closed after the test)."""
    opened: list[MqttConnection] = []

    def connect(
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        address: tuple[str, int] | None = None,
    ) -> MqttConnection:
        conn = MqttConnection(
            address or mosquitto.address,
            username,
            password,
            client_id if client_id is not None else (username or secrets.token_hex(6)),
        )
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        with contextlib.suppress(Exception):
            conn.close()


@pytest.fixture(scope="session")
def pg_database_factory(run_id: str) -> Iterator[object]:
    """Create throw-away PostgreSQL databases (on ``IOT_TEST_PG_ADMIN``'s server); returns
    their asyncpg-style URLs."""
    created: list[str] = []

    def make(label: str) -> str:
        name = f"iot_test_{run_id}_{label}_{len(created)}"
        url = create_database(name)
        created.append(name)
        return url

    yield make
    for name in created:
        with contextlib.suppress(PsqlError):
            drop_database(name)


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


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_START] = time.time()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """A line per workspace package from the ``coverage.xml`` this run wrote (``make test``)."""
    reports = config.getoption("cov_report", default=None)
    if not isinstance(reports, dict) or "xml" not in reports:
        return
    xml = Path(reports["xml"] or "coverage.xml")
    # Only a report written by this session: not one left by an earlier run (``--no-cov``, or a
    # report that coverage failed to write).
    if not xml.exists() or xml.stat().st_mtime < config.stash.get(_SESSION_START, 0.0):
        return
    for line in coverage_lines(coverage_by_package(xml, root=Path.cwd())):
        terminalreporter.write_line(line)


#: Test modules that each run a stack of service processes (iotctl up, the agents with a store
#: and a broker, the reliability suite's kills): under pytest-xdist they form one unit of work,
#: run one after another on one worker while the other workers take everything else. Two of
#: them at once on this 2-core machine starve each other's health deadlines; one of them beside
#: the in-process tests does not.
STACK_MODULES = frozenset(
    {
        "benchmarks/tests/test_e2e.py",
        "iotctl/tests/test_cli.py",
        "iotctl/tests/test_first_hour.py",
        "iotctl/tests/test_reliability.py",
        "stream-agents/tests/test_agents_e2e.py",
        "stream-agents/tests/test_alerts_e2e.py",
        "stream-agents/tests/test_errors_e2e.py",
    }
)
STACK_UNIT = "stack"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N --dist loadfile`` (``make test``): whole modules per worker, the stack modules
    together as one unit, handed out first (it is the longest)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class StackFirst(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return STACK_UNIT if module in STACK_MODULES else module

        def _assign_work_unit(self, node: Any) -> None:
            if STACK_UNIT in self.workqueue:
                self.workqueue.move_to_end(STACK_UNIT, last=False)
            super()._assign_work_unit(node)

    return StackFirst(config, log)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every stack module named above exists: a renamed one would run beside the others."""
    missing = [m for m in sorted(STACK_MODULES) if not (Path(__file__).parent / m).exists()]
    if missing:
        raise pytest.UsageError(f"STACK_MODULES names modules that do not exist: {missing}")
