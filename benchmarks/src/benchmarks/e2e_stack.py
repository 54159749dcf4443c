"""The whole platform as child processes, isolated for one end-to-end run.

Everything a run creates is its own: a Tansu broker (or a given one) with a topic prefix, a
private Mosquitto (queue limits lifted, so a lagging bridge never makes the broker drop QoS 1
messages), a fresh PostgreSQL database for signing, device-management and the monitoring
store, a Redis namespace, RabbitMQ exchange and queue names. Services run as
``python -m <package>`` with logs in the run's directory; ``stop()`` ends them and drops the
database. Used by ``bench_e2e`` and the end-to-end test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from iot_common.topics import Topics
from iotctl.broker import TansuBroker, free_port, port_open

PG_ADMIN_URL = os.environ.get("IOT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IOT_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("IOT_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
ADMIN_EMAIL = os.environ.get("IOT_ADMIN_EMAIL", "admin@example.com")
ADMIN_PASSWORD = os.environ.get("IOT_ADMIN_PASSWORD", "admin-password-change-me")

#: (component, package, port env var); started in this order.
SERVICES = (
    ("signing", "signing", "SIGNING_PORT"),
    ("device-management", "device_management", "DEVICE_MANAGEMENT_PORT"),
    ("ingest-bridge", "ingest_bridge", "INGEST_BRIDGE_HTTP_PORT"),
    ("stream-agents", "stream_agents", "AGENTS_WEB_PORT"),
    ("monitoring-api", "monitoring_api", "MONITORING_API_PORT"),
)


class StackError(RuntimeError):
    """A component did not start; the message names it and the tail of its log."""


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


@dataclass
class Mosquitto:
    """A private Mosquitto: memory only, no queue caps."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "set_tcp_nodelay true\n"
        )
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StackError("mosquitto did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class E2EStack:
    """Start with :meth:`start`, end with :meth:`stop` (or use it as a context manager)."""

    kafka_bootstrap: str | None = None  # None: start a Tansu broker of our own
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    log_level: str = "WARNING"
    extra_env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iot-e2e-")))
    keep_logs: bool = False
    partitions: int = 8

    broker: TansuBroker | None = None
    mosquitto: Mosquitto | None = None
    services: dict[str, Service] = field(default_factory=dict)
    database: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def topic_prefix(self) -> str:
        return f"e2e{self.run_id}."

    @property
    def namespace(self) -> str:
        return f"e2e{self.run_id}"

    @property
    def database_url(self) -> str:
        return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{self.database}"

    def url(self, name: str) -> str:
        return self.services[name].url

    def __enter__(self) -> E2EStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting ---------------------------------------------------------------------------
    def _env(self, ports: dict[str, int]) -> dict[str, str]:
        assert self.mosquitto is not None
        rid = self.run_id
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IOT_", "SIGNING_", "DEVICE_MANAGEMENT_", "INGEST_BRIDGE_"))
            and not k.startswith(("AGENTS_", "MONITORING_", "SIMULATOR_"))
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "IOT_LOG_LEVEL": self.log_level,
                "IOT_KAFKA_BOOTSTRAP": str(self.kafka_bootstrap),
                "IOT_TOPIC_PREFIX": self.topic_prefix,
                "IOT_REDIS_URL": REDIS_URL,
                "IOT_REDIS_NAMESPACE": self.namespace,
                "IOT_RABBITMQ_URL": RABBITMQ_URL,
                "IOT_TELEMETRY_EXCHANGE": f"telemetry.e2e{rid}",
                "IOT_DEVICE_EVENTS_EXCHANGE": f"device.events.e2e{rid}",
                "IOT_MQTT_HOST": "127.0.0.1",
                "IOT_MQTT_PORT": str(self.mosquitto.port),
                "IOT_MQTT_TOPIC_PREFIX": "",
                "IOT_DATABASE_URL": self.database_url,
                "MONITORING_STORE_URL": self.database_url,
                "IOT_ADMIN_EMAIL": ADMIN_EMAIL,
                "IOT_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "SIGNING_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
                "SIGNING_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "SIGNING_KEY_FILE": str(self.workdir / "signing-key.pem"),
                "IOT_SIGNING_URL": f"http://127.0.0.1:{ports['signing']}",
                "IOT_JWKS_URL": f"http://127.0.0.1:{ports['signing']}/.well-known/jwks.json",
                "IOT_DEVICE_MANAGEMENT_URL": f"http://127.0.0.1:{ports['device-management']}",
                "SIMULATOR_INGEST_URL": f"http://127.0.0.1:{ports['ingest-bridge']}",
                "INGEST_BRIDGE_MQTT_CLIENT_ID": f"ingest-bridge-e2e{rid}",
                "INGEST_BRIDGE_MQTT_SHARE_GROUP": f"ingest-bridge-e2e{rid}",
                "INGEST_BRIDGE_AMQP_QUEUE": f"ingest-bridge.telemetry.e2e{rid}",
                "INGEST_BRIDGE_DEVICE_EVENTS_QUEUE": f"ingest-bridge.device-events.e2e{rid}",
                "AGENTS_APP_ID": f"stream-agents-e2e{rid}",
                "AGENTS_TOPIC_PARTITIONS": str(self.partitions),
                "AGENTS_WEB_HOST": "127.0.0.1",
                "INGEST_BRIDGE_HTTP_HOST": "127.0.0.1",
            }
        )
        for name, _, port_env in SERVICES:
            env[port_env] = str(ports[name])
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kafka_bootstrap is None:
            self.broker = TansuBroker(port=free_port(), log_path=self.workdir / "tansu.log")
            self.broker.start()
            self.kafka_bootstrap = self.broker.bootstrap
        self._create_topics()
        self.mosquitto = Mosquitto(self.workdir)
        self.mosquitto.start()
        self.database = f"iot_e2e_{self.run_id}"
        _psql(f'CREATE DATABASE "{self.database}"')
        ports = {name: free_port() for name, _, _ in SERVICES}
        self.env = self._env(ports)
        for name, package, _ in SERVICES:
            if name in ("signing", "device-management"):
                self._run_once(name, [sys.executable, "-m", package, "migrate"])
            for attempt in range(4):
                self._spawn(name, package, ports[name])
                try:
                    self._wait_healthy(self.services[name])
                    break
                except StackError:
                    # Another process on this shared machine may have taken the free port
                    # between choosing and binding it: choose again.
                    svc = self.services.pop(name)
                    svc.log.close()
                    if attempt == 3 or "address already in use" not in svc.tail(200):
                        raise
                    ports[name] = free_port()
                    self.env = self._env(ports)

    def _create_topics(self) -> None:
        """Create the bus topics up front, as a deployment does (all with the agents'
        partition count), so no service races another into auto-creating one."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap)
            await admin.start()
            try:
                topics = Topics(self.topic_prefix).all()
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [
                            NewTopic(t, num_partitions=self.partitions, replication_factor=1)
                            for t in topics
                        ]
                    )
            finally:
                await admin.close()

        asyncio.run(create())

    def _run_once(self, name: str, cmd: list[str]) -> None:
        out = subprocess.run(cmd, env=self.env, capture_output=True, timeout=120, check=False)
        if out.returncode != 0:
            tail = (out.stdout + out.stderr).decode(errors="replace")[-2000:]
            raise StackError(f"{name} {cmd[-1]} failed ({out.returncode}):\n{tail}")

    def _spawn(self, name: str, package: str, port: int) -> None:
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", package],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.services[name] = Service(name, port, proc, log_path, log)

    def _wait_healthy(self, svc: Service, limit: float = 90.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise StackError(
                    f"{svc.name} exited with {svc.proc.returncode} while starting:\n{svc.tail()}"
                )
            try:
                if httpx.get(f"{svc.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{svc.name} was not healthy after {limit:.0f} s:\n{svc.tail()}")

    # -- measuring --------------------------------------------------------------------------
    def processes(self) -> dict[str, list[psutil.Process]]:
        """Processes per component (each with its children), for CPU accounting."""
        out: dict[str, list[psutil.Process]] = {}

        def tree(pid: int) -> list[psutil.Process]:
            try:
                p = psutil.Process(pid)
                return [p, *p.children(recursive=True)]
            except psutil.Error:
                return []

        for name, svc in self.services.items():
            out[name] = tree(svc.proc.pid)
        if self.broker is not None and self.broker.proc is not None:
            out["kafka (tansu)"] = tree(self.broker.proc.pid)
        if self.mosquitto is not None and self.mosquitto.proc is not None:
            out["mosquitto"] = tree(self.mosquitto.proc.pid)
        return out

    def check_alive(self) -> None:
        for svc in self.services.values():
            if svc.proc.poll() is not None:
                raise StackError(f"{svc.name} exited with {svc.proc.returncode}:\n{svc.tail()}")

    # -- stopping ---------------------------------------------------------------------------
    def stop(self) -> None:
        for svc in reversed(list(self.services.values())):
            if svc.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGTERM)
        for svc in self.services.values():
            try:
                svc.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGKILL)
                svc.proc.wait(5)
            svc.log.close()
        if self.mosquitto is not None:
            self.mosquitto.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.database:
            with contextlib.suppress(subprocess.CalledProcessError):
                _psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self._cleanup_rabbitmq()
        self._cleanup_redis()
        if not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _cleanup_redis(self) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover
            return
        with contextlib.suppress(Exception):
            client: Any = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{self.namespace}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            client.close()

    def _cleanup_rabbitmq(self) -> None:
        rid = self.run_id

        async def clean() -> None:
            import aio_pika

            conn = await aio_pika.connect(RABBITMQ_URL)
            async with conn:
                ch = await conn.channel()
                for q in (
                    f"ingest-bridge.telemetry.e2e{rid}",
                    f"ingest-bridge.device-events.e2e{rid}",
                ):
                    with contextlib.suppress(Exception):
                        await ch.queue_delete(q)
                for x in (f"telemetry.e2e{rid}", f"device.events.e2e{rid}"):
                    with contextlib.suppress(Exception):
                        await ch.exchange_delete(x)

        with contextlib.suppress(Exception):
            asyncio.run(clean())
