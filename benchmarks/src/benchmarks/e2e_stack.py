"""The whole platform as child processes, isolated for one end-to-end run.

Everything a run creates is its own: a Tansu broker (or a given one) with a topic prefix, a
private Mosquitto configured as the platform's (dynamic security with service accounts of the
run's own, anonymous clients refused, device clients kept by device-management, so every
device publishes as itself; queue limits lifted, so a lagging bridge never makes the broker
drop QoS 1 messages), a fresh PostgreSQL database for signing, device-management and the monitoring
store, a Redis namespace, a RabbitMQ virtual host with service accounts of its own (written by
``device-management amqp-setup``, as ``iotctl up`` does; device users provisioned by
device-management, so the simulator's devices publish as themselves). Services run as
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
from iotctl.broker import TansuBroker, free_port
from iotctl.mosquitto import Accounts, Mosquitto
from iotctl.testinfra import (
    RabbitAdmin,
    create_database,
    database_url,
    drop_database,
    drop_redis_namespace,
)

REDIS_URL = os.environ.get("IOT_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The machine's RabbitMQ as its administrator: the run's vhost and accounts are made with it.
RABBITMQ_URL = os.environ.get("IOT_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQ_ADMIN = RabbitAdmin.from_url(RABBITMQ_URL)
RABBITMQ_MANAGEMENT_URL = os.environ.get("IOT_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
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
    #: The monitoring store (e.g. a MongoDB URL); empty: the run's PostgreSQL database.
    store_url: str = ""

    broker: TansuBroker | None = None
    mosquitto: Mosquitto | None = None
    services: dict[str, Service] = field(default_factory=dict)
    database: str = ""
    env: dict[str, str] = field(default_factory=dict)
    _amqp_passwords: tuple[str, str] = field(
        default_factory=lambda: (secrets.token_urlsafe(16), secrets.token_urlsafe(16))
    )
    _amqp_ready: bool = False
    _mqtt_passwords: tuple[str, str] = field(
        default_factory=lambda: (secrets.token_urlsafe(16), secrets.token_urlsafe(16))
    )

    @property
    def topic_prefix(self) -> str:
        return f"e2e{self.run_id}."

    @property
    def namespace(self) -> str:
        return f"e2e{self.run_id}"

    @property
    def database_url(self) -> str:
        return database_url(self.database)

    @property
    def monitoring_store_url(self) -> str:
        return self.store_url or self.database_url

    @property
    def rabbitmq_vhost(self) -> str:
        return f"iot-e2e-{self.run_id}"

    def _amqp_url(self, username: str | None = None, password: str | None = None) -> str:
        return RABBITMQ_ADMIN.url(self.rabbitmq_vhost, username, password)

    def _amqp_env(self) -> dict[str, str]:
        """The run's AMQP: its own vhost, service accounts named after the run (users are
        global on the shared broker), device users kept by device-management; messages the
        simulator sends for devices it has no credential for go out as the administrator,
        without ``user_id`` (the bridge dead-letters them ``unauthorized``)."""
        rid = self.run_id
        bridge = (f"ingest-bridge-e2e{rid}", self._amqp_passwords[0])
        publisher = (f"device-management-e2e{rid}", self._amqp_passwords[1])
        return {
            "IOT_RABBITMQ_URL": self._amqp_url(*publisher),
            "DEVICE_MANAGEMENT_RABBITMQ_URL": self._amqp_url(*publisher),
            "DEVICE_MANAGEMENT_AMQP_PROVISIONING": "true",
            "DEVICE_MANAGEMENT_RABBITMQ_MANAGEMENT_URL": RABBITMQ_MANAGEMENT_URL,
            "DEVICE_MANAGEMENT_RABBITMQ_ADMIN_USERNAME": RABBITMQ_ADMIN.username,
            "DEVICE_MANAGEMENT_RABBITMQ_ADMIN_PASSWORD": RABBITMQ_ADMIN.password,
            "DEVICE_MANAGEMENT_AMQP_BRIDGE_USERNAME": bridge[0],
            "DEVICE_MANAGEMENT_AMQP_BRIDGE_PASSWORD": bridge[1],
            "DEVICE_MANAGEMENT_AMQP_PUBLISHER_USERNAME": publisher[0],
            "DEVICE_MANAGEMENT_AMQP_PUBLISHER_PASSWORD": publisher[1],
            "INGEST_BRIDGE_RABBITMQ_URL": self._amqp_url(*bridge),
            "SIMULATOR_RABBITMQ_URL": self._amqp_url(),
        }

    @property
    def mqtt_accounts(self) -> Accounts:
        """The run's broker accounts: device-management's (the plugin's admin) and the
        bridge's, with passwords of the run's own and the run's share group."""
        admin, bridge = self._mqtt_passwords
        return Accounts(
            admin_password=admin,
            bridge_password=bridge,
            share_group=f"ingest-bridge-e2e{self.run_id}",
        )

    def _mqtt_env(self) -> dict[str, str]:
        a = self.mqtt_accounts
        return {
            "DEVICE_MANAGEMENT_MQTT_PROVISIONING": "true",
            "DEVICE_MANAGEMENT_MQTT_ADMIN_USERNAME": a.admin_username,
            "DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD": a.admin_password,
            "INGEST_BRIDGE_MQTT_USERNAME": a.bridge_username,
            "INGEST_BRIDGE_MQTT_PASSWORD": a.bridge_password,
            "INGEST_BRIDGE_MQTT_SHARE_GROUP": a.share_group,
        }

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
                # A throw-away stack on this machine's services, with the development secrets.
                "IOT_ALLOW_DEV_DEFAULTS": "true",
                "PYTHONUNBUFFERED": "1",
                "IOT_LOG_LEVEL": self.log_level,
                "IOT_KAFKA_BOOTSTRAP": str(self.kafka_bootstrap),
                "IOT_TOPIC_PREFIX": self.topic_prefix,
                "IOT_REDIS_URL": REDIS_URL,
                "IOT_REDIS_NAMESPACE": self.namespace,
                "IOT_MQTT_HOST": "127.0.0.1",
                "IOT_MQTT_PORT": str(self.mosquitto.port),
                "IOT_MQTT_TOPIC_PREFIX": "",
                "IOT_DATABASE_URL": self.database_url,
                "MONITORING_STORE_URL": self.monitoring_store_url,
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
                "AGENTS_APP_ID": f"stream-agents-e2e{rid}",
                "AGENTS_TOPIC_PARTITIONS": str(self.partitions),
                "AGENTS_WEB_HOST": "127.0.0.1",
                "INGEST_BRIDGE_HTTP_HOST": "127.0.0.1",
            }
        )
        env.update(self._amqp_env())
        env.update(self._mqtt_env())
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
        self.mosquitto = Mosquitto.for_benchmarks(
            directory=self.workdir / "mosquitto", accounts=self.mqtt_accounts
        )
        self.mosquitto.start()
        self.database = f"iot_e2e_{self.run_id}"
        create_database(self.database)
        ports = {name: free_port() for name, _, _ in SERVICES}
        self.env = self._env(ports)
        for name, package, _ in SERVICES:
            if name in ("signing", "device-management"):
                self._run_once(name, [sys.executable, "-m", package, "migrate"])
            if name == "device-management":
                self._amqp_ready = True  # from here on, stop() removes the vhost and users
                self._run_once(name, [sys.executable, "-m", package, "amqp-setup"])
                self._grant_admin()
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
                drop_database(self.database)
        self._cleanup_rabbitmq()
        self._cleanup_redis()
        if not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _cleanup_redis(self) -> None:
        with contextlib.suppress(Exception):  # cleanup must not hide the run's result
            drop_redis_namespace(REDIS_URL, self.namespace)

    def _management(self) -> Any:
        return RABBITMQ_ADMIN.management(RABBITMQ_MANAGEMENT_URL)

    def _grant_admin(self) -> None:
        """The administrator may publish in the run's vhost (the simulator's messages for
        devices it has no credential for) and inspect it."""
        from iot_common.rabbitmq import Permissions

        async def grant() -> None:
            async with self._management() as api:
                await api.grant(
                    self.rabbitmq_vhost, RABBITMQ_ADMIN.username, Permissions(".*", ".*", ".*")
                )

        asyncio.run(grant())

    def _cleanup_rabbitmq(self) -> None:
        """Delete the run's vhost and every user granted in it (service accounts and the
        devices' users), except the administrator."""
        if not self._amqp_ready:
            return

        async def clean() -> None:
            async with self._management() as api:
                users = set(await api.vhost_users(self.rabbitmq_vhost)) - {RABBITMQ_ADMIN.username}
                await api.delete_vhost(self.rabbitmq_vhost)
                await api.delete_users(sorted(users))

        try:
            asyncio.run(clean())
        except Exception as exc:  # cleanup must not hide the run's result
            print(f"e2e stack: could not remove RabbitMQ vhost {self.rabbitmq_vhost}: {exc}")
