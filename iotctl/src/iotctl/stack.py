"""``iotctl up``: bring components up in order, wait for health, supervise them until stopped.

One ``iotctl up`` process is the supervisor of the components it started: it echoes their
logs, restarts a component that dies (with back-off), and stops them all, process group by
process group, on Ctrl-C or SIGTERM. ``--detach`` runs that same supervisor in the
background. Each supervisor records itself and its children in ``.run/stacks/<pid>.json``,
which ``status`` and ``down`` read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from iot_common import dynsec, rabbitmq
from iotctl import deps, gateway
from iotctl.broker import BrokerUnavailable, TansuBroker, port_open, speaks_kafka
from iotctl.components import COMPONENTS, Component, Need, landed, resolve, script_path
from iotctl.deps import MissingDependency
from iotctl.mosquitto import Accounts, Mosquitto, login_accepted, mosquitto_binary, plugin_path
from iotctl.procs import Proc, StackState, Supervisor, create_time, stacks_dir
from iotctl.sandbox import SandboxUnavailable, mongodb_server_binary
from iotctl.topics import ensure_topics, topic_partitions

DEFAULT_HEALTH_TIMEOUT = 90.0
#: The supervised name of the MongoDB-compatible server of ``--store mongodb``.
MONGODB = "mongodb"
#: A component that ran at least this long before dying restarts without back-off.
STABLE_SECONDS = 30.0
MAX_BACKOFF = 30.0


class ComponentFailed(Exception):
    """A component did not start or did not become healthy."""


def admin_credentials() -> tuple[str, str]:
    env = os.environ
    email = env.get("IOT_ADMIN_EMAIL") or env.get(
        "SIGNING_BOOTSTRAP_ADMIN_EMAIL", "admin@example.com"
    )
    password = env.get("IOT_ADMIN_PASSWORD") or env.get(
        "SIGNING_BOOTSTRAP_ADMIN_PASSWORD", "admin-password-change-me"
    )
    return email, password


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def mqtt_address() -> tuple[str, int]:
    """Where this run's MQTT broker is: the given one, else the ``mosquitto`` component."""
    if deps.mqtt_external():
        item = deps.infra("mqtt")
        return item.host, item.port
    port = COMPONENTS["mosquitto"].port
    assert port is not None
    return "127.0.0.1", port


def mqtt_accounts() -> Accounts:
    """The service accounts of the local broker, with the passwords the bridge and
    device-management are given (their development defaults unless set)."""
    env = os.environ
    return Accounts(
        admin_username=env.get("DEVICE_MANAGEMENT_MQTT_ADMIN_USERNAME", dynsec.ADMIN_USERNAME),
        admin_password=env.get("DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD", dynsec.DEV_ADMIN_PASSWORD),
        bridge_username=env.get("INGEST_BRIDGE_MQTT_USERNAME", dynsec.BRIDGE_USERNAME),
        bridge_password=env.get("INGEST_BRIDGE_MQTT_PASSWORD", dynsec.DEV_BRIDGE_PASSWORD),
    )


def local_mqtt_env(accounts: Accounts) -> dict[str, str]:
    """A local run's MQTT: device-management keeps every device's client on the broker (as
    its admin account), the bridge logs in as its own account; the simulator's devices log
    in as themselves with the tokens they are issued."""
    return {
        "DEVICE_MANAGEMENT_MQTT_PROVISIONING": "true",
        "DEVICE_MANAGEMENT_MQTT_ADMIN_USERNAME": accounts.admin_username,
        "DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD": accounts.admin_password,
        "INGEST_BRIDGE_MQTT_USERNAME": accounts.bridge_username,
        "INGEST_BRIDGE_MQTT_PASSWORD": accounts.bridge_password,
    }


def component_up(comp: Component) -> bool:
    """Whether ``comp`` already answers on its port (started by us or by someone else)."""
    if comp.kind == "broker":
        return comp.port is not None and speaks_kafka("127.0.0.1", comp.port)
    if comp.kind == "mqtt":
        return port_open(*mqtt_address())
    if comp.health_url is None:
        return False
    return healthy(comp.health_url)


def unavailable(comp: Component, root: Path) -> str | None:
    """Why ``comp`` cannot be started here (None when it can)."""
    if comp.kind == "gateway":
        if gateway.nginx_binary() is None:
            return "nginx is not installed (apt-get install nginx)"
        return None
    if comp.kind == "mqtt":
        if deps.mqtt_external():
            return None
        try:
            mosquitto_binary()
            plugin_path()
        except SandboxUnavailable as exc:
            return str(exc)
        return None
    if comp.kind == "simulator":
        if not landed(comp):
            return "the simulator is not built yet (no simulator.__main__)"
        if not (root / "simulator" / "fleets" / "demo.yaml").is_file():
            return "simulator/fleets/demo.yaml is missing"
        return None
    if comp.package and not landed(comp):
        return f"not built yet (no {comp.package}.__main__ in this workspace)"
    return None


BUILD_TIMEOUT = 600.0


def build_assets(comp: Component, root: Path) -> tuple[bool, str]:
    """Run ``comp.build`` from ``root``: (succeeded, the one line that says what happened)."""
    script, *args = comp.build
    path = root / script
    if not path.is_file():
        return False, f"{script} is missing"
    try:
        done = subprocess.run(
            ["bash", str(path), *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"{script} did not finish in {BUILD_TIMEOUT:.0f} s"
    out = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    err = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    if done.returncode == 0:
        return True, out[-1] if out else f"{script}: done"
    return False, (err or out or [f"{script} exited with code {done.returncode}"])[-1]


def check_infra(comps: list[Component], root: Path) -> list[str]:
    """Make sure what ``comps`` need is reachable and the database exists; notes to print."""
    needs: set[Need] = set()
    for comp in comps:
        needs.update(comp.needs)
    notes = deps.ensure_infra(needs, root)
    if any(c.migrate or "postgres" in c.needs for c in comps) and deps.ensure_database():
        notes.append(f"created database {deps.database_url().rsplit('/', 1)[-1]!r}")
    return notes


def preflight(names: list[str], root: Path) -> None:
    """Raise :class:`MissingDependency` before anything starts if a dependency is missing."""
    comps = [c for c in resolve(names) if unavailable(c, root) is None]
    check_infra(comps, root)


#: Components that read or write the monitoring store: its migrations run before the first.
STORE_USERS = ("stream-agents", "monitoring-api")


#: A local run's AMQP: the platform's own vhost on the machine's RabbitMQ (``/`` stays the
#: machine's), each service on its own account (development passwords), device users kept by
#: device-management; the simulator's devices log in as themselves (host and vhost from here).
LOCAL_AMQP_VHOST = "iot"
LOCAL_AMQP_ENV = {
    "DEVICE_MANAGEMENT_AMQP_PROVISIONING": "true",
    "DEVICE_MANAGEMENT_RABBITMQ_URL": (
        f"amqp://{rabbitmq.PUBLISHER_USERNAME}:{rabbitmq.DEV_PUBLISHER_PASSWORD}"
        f"@127.0.0.1:5672/{LOCAL_AMQP_VHOST}"
    ),
    "INGEST_BRIDGE_RABBITMQ_URL": (
        f"amqp://{rabbitmq.BRIDGE_USERNAME}:{rabbitmq.DEV_BRIDGE_PASSWORD}"
        f"@127.0.0.1:5672/{LOCAL_AMQP_VHOST}"
    ),
    "SIMULATOR_RABBITMQ_URL": f"amqp://127.0.0.1:5672/{LOCAL_AMQP_VHOST}",
}


@dataclass
class Stack:
    """One ``iotctl up`` supervisor."""

    root: Path
    run: Path
    console: Console
    detached: bool = False
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    simulator_rate: float = 20.0
    restart: bool = True
    supervisor: Supervisor = field(init=False)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    broker: TansuBroker | None = None
    mosquitto: Mosquitto | None = None
    bootstrap: str = ""
    ready: bool = False
    #: Components waiting to be restarted: name -> monotonic time when due.
    restarts: dict[str, float] = field(default_factory=dict)
    backoff: dict[str, float] = field(default_factory=dict)
    waiting_health: set[str] = field(default_factory=set)
    _store_migrated: bool = False
    #: The monitoring store's backend: "postgres" (the local database) or "mongodb" (a
    #: MongoDB-compatible server this stack starts, data in .run/mongodb).
    store: str = "postgres"
    store_url: str = ""

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.console, log_dir=self.run / "logs")
        self.bootstrap = os.environ.get("IOT_KAFKA_BOOTSTRAP", "")

    # -- output -----------------------------------------------------------------------------
    def say(self, name: str, message: str, style: str = "") -> None:
        prefix = self.supervisor.prefix(name)
        prefix.append(message, style=style)
        with self.supervisor._lock:
            self.console.print(prefix, highlight=False, markup=False, soft_wrap=True)

    # -- environment ------------------------------------------------------------------------
    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("IOTCTL_DETACHED", None)
        env["PYTHONUNBUFFERED"] = "1"
        # A local run uses this machine's unauthenticated Redis/RabbitMQ and the repository's
        # development secrets, which the services refuse unless told this is development.
        env.setdefault("IOT_ALLOW_DEV_DEFAULTS", "true")
        env["IOT_KAFKA_BOOTSTRAP"] = self.bootstrap or env.get(
            "IOT_KAFKA_BOOTSTRAP", f"127.0.0.1:{COMPONENTS['broker'].port}"
        )
        for comp in COMPONENTS.values():
            for var in comp.port_env:
                if comp.port is not None:
                    env.setdefault(var, str(comp.port))
        signing = COMPONENTS["signing"].base_url
        env.setdefault("IOT_SIGNING_URL", str(signing))
        env.setdefault("IOT_JWKS_URL", f"{signing}/.well-known/jwks.json")
        env.setdefault("IOT_DEVICE_MANAGEMENT_URL", str(COMPONENTS["device-management"].base_url))
        env.setdefault("SIMULATOR_INGEST_URL", str(COMPONENTS["ingest-bridge"].base_url))
        env.setdefault("IOT_DATABASE_URL", deps.database_url())
        # The monitoring store lives in the same PostgreSQL database for a local run.
        env.setdefault("MONITORING_STORE_URL", self.store_url or deps.database_url())
        for var, value in LOCAL_AMQP_ENV.items():
            env.setdefault(var, value)
        host, port = mqtt_address()
        env["IOT_MQTT_HOST"], env["IOT_MQTT_PORT"] = host, str(port)
        for var, value in local_mqtt_env(mqtt_accounts()).items():
            env.setdefault(var, value)
        email, password = admin_credentials()
        env.setdefault("IOT_ADMIN_EMAIL", email)
        env.setdefault("IOT_ADMIN_PASSWORD", password)
        return env

    # -- bringing it up ---------------------------------------------------------------------
    def plan(self, names: list[str]) -> list[Component]:
        runnable = []
        for comp in resolve(names):
            reason = unavailable(comp, self.root)
            if reason:
                self.skipped[comp.name] = reason
                self.say(comp.name, f"skipped: {reason}", "yellow")
            else:
                runnable.append(comp)
        return runnable

    def bring_up(self, names: list[str]) -> None:
        comps = self.plan(names)
        for note in check_infra(comps, self.root):
            self.say("iotctl", note)
        for comp in comps:
            try:
                self.start_component(comp)
            except ComponentFailed as exc:
                self.failed[comp.name] = str(exc)
                self.say(comp.name, f"failed: {exc}", "bold red")
                for line in self.supervisor.last_lines(comp.name):
                    self.say(comp.name, f"  {line}", "red")
            self.save_state()
        self.ready = True
        self.save_state()

    def start_component(self, comp: Component) -> None:
        if comp.kind == "mqtt":
            self.start_mosquitto(comp)
            return
        if component_up(comp):
            self.reused.append(comp.name)
            where = f"127.0.0.1:{comp.port}"
            self.say(comp.name, f"already running on {where}, reusing it", "dim")
            if comp.kind == "broker":
                self.bootstrap = where
            return
        if comp.kind == "broker":
            self.start_broker(comp)
        elif comp.kind == "gateway":
            self.start_gateway(comp)
        elif comp.kind == "simulator":
            self.start_simulator(comp)
        else:
            self.start_service(comp)
        self.started.append(comp.name)

    def start_broker(self, comp: Component) -> None:
        assert comp.port is not None
        if port_open("127.0.0.1", comp.port):
            raise ComponentFailed(f"port {comp.port} is in use by something that is not Kafka")
        log = self.supervisor.log_path(comp.name)
        self.broker = TansuBroker(port=comp.port, log_path=log)
        try:
            self.broker.start()
        except BrokerUnavailable as exc:
            raise ComponentFailed(str(exc)) from exc
        popen = self.broker.proc
        assert popen is not None
        proc = Proc(comp.name, popen.pid, create_time(popen.pid), comp.port, str(log))
        self.supervisor.adopt(proc, popen)
        self.bootstrap = self.broker.bootstrap
        try:
            created = ensure_topics(self.bootstrap, prefix=os.environ.get("IOT_TOPIC_PREFIX", ""))
        except RuntimeError as exc:
            raise ComponentFailed(str(exc)) from exc
        self.say(
            comp.name,
            f"Tansu (memory storage) listening on {self.bootstrap}; "
            f"created {len(created)} topics with {topic_partitions()} partitions",
            "green",
        )

    def start_mosquitto(self, comp: Component) -> None:
        """The platform's Mosquitto, supervised like a service; its plugin state (the device
        clients device-management created) and sessions stay in ``.run/mosquitto`` across
        stacks. A broker given by ``IOT_MQTT_HOST``/``IOT_MQTT_PORT`` is used as it is."""
        accounts = mqtt_accounts()
        if deps.mqtt_external():
            host, port = mqtt_address()
            self.reused.append(comp.name)
            self.say(comp.name, f"using the MQTT broker at {host}:{port} (IOT_MQTT_PORT)", "dim")
            return
        assert comp.port is not None
        if port_open("127.0.0.1", comp.port):
            if login_accepted(
                "127.0.0.1", comp.port, accounts.admin_username, accounts.admin_password
            ):
                self.reused.append(comp.name)
                self.say(comp.name, f"already running on 127.0.0.1:{comp.port}, reusing it", "dim")
                return
            raise ComponentFailed(
                f"port {comp.port} is in use by something that does not take the platform's "
                "MQTT accounts (set IOTCTL_MOSQUITTO_PORT to a free port)"
            )
        self.mosquitto = Mosquitto(
            directory=self.run / "mosquitto", port=comp.port, accounts=accounts, log_stdout=True
        )
        try:
            binary = mosquitto_binary()
            self.mosquitto.write_config()
        except (SandboxUnavailable, OSError) as exc:
            raise ComponentFailed(str(exc)) from exc
        t0 = time.monotonic()
        self.supervisor.start(
            comp.name,
            [binary, "-c", str(self.mosquitto.config_path)],
            env=dict(os.environ),
            cwd=self.root,
            port=comp.port,
        )
        child = self.supervisor.children[comp.name]
        deadline = t0 + 10
        while not port_open("127.0.0.1", comp.port):
            code = child.poll()
            if code is not None or time.monotonic() > deadline:
                why = f"exited with code {code}" if code is not None else "did not listen in 10 s"
                raise ComponentFailed(f"Mosquitto {why}")
            time.sleep(0.05)
        self.started.append(comp.name)
        self.say(
            comp.name,
            f"Mosquitto (dynamic security, anonymous refused) on mqtt://127.0.0.1:{comp.port} "
            f"in {time.monotonic() - t0:.2f} s; device clients kept in {self.mosquitto.directory}",
            "green",
        )

    def start_service(self, comp: Component) -> None:
        script = script_path(comp.name)
        assert script is not None
        env = self.child_env()
        if comp.build:
            self.build(comp)
        if comp.migrate:
            self.say(comp.name, "applying database migrations")
            self.run_once(comp.name, [script, "migrate"], env)
        if comp.name == "device-management" and env.get("DEVICE_MANAGEMENT_AMQP_PROVISIONING"):
            self.say(comp.name, "writing RabbitMQ's vhost, exchanges and service accounts")
            self.run_once(comp.name, [script, "amqp-setup"], env)
        if comp.name in STORE_USERS and self.store == "mongodb" and not self.store_url:
            self.start_mongodb()
            env = self.child_env()
        if comp.name in STORE_USERS and not self._store_migrated:
            # The monitoring store's schema, once, before the first component that uses it.
            store_cli = script_path("monitoring-store")
            if store_cli is not None:
                self.say(comp.name, "applying monitoring store migrations")
                self.run_once("monitoring-store", [store_cli, "migrate"], env)
            self._store_migrated = True
        self.supervisor.start(comp.name, [script], env=env, cwd=self.root, port=comp.port)
        self.wait_healthy(comp)

    def build(self, comp: Component) -> None:
        """Build what ``comp`` serves when missing or stale; one line either way.

        A failed build does not stop the component (its API works without the page): the
        line says why, and what the component answers meanwhile.
        """
        ok, line = build_assets(comp, self.root)
        if ok:
            self.say(comp.name, line, "green" if " built " in line else "dim")
        else:
            self.say(comp.name, f"{line}; starting without it", "yellow")

    def start_mongodb(self) -> None:
        """The MongoDB-compatible server (SecantusDB, installed on first use), supervised like
        the components; its data stays in ``.run/mongodb`` across stacks."""
        given = os.environ.get("MONITORING_STORE_URL", "")
        if given.startswith("mongodb"):
            self.store_url = given
            return
        port = int(os.environ.get("IOTCTL_MONGODB_PORT", "27017"))
        if port_open("127.0.0.1", port):
            raise ComponentFailed(f"port {port} is taken: set IOTCTL_MONGODB_PORT to a free one")
        try:
            binary = mongodb_server_binary()
        except SandboxUnavailable as exc:
            raise ComponentFailed(str(exc)) from exc
        data = self.run / "mongodb"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(data)]
        self.supervisor.start(
            MONGODB,
            [*cmd, "--log-level", "WARNING"],
            env=dict(os.environ),
            cwd=self.root,
            port=port,
        )
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise ComponentFailed(f"the MongoDB-compatible server did not listen on {port}")
            time.sleep(0.1)
        self.started.append(MONGODB)
        self.store_url = f"mongodb://127.0.0.1:{port}/iot"
        self.say(
            "mongodb", f"SecantusDB (MongoDB-compatible emulator) on {self.store_url}", "green"
        )

    def run_once(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        label = f"{name}-migrate"
        self.supervisor.start(label, cmd, env=env, cwd=self.root)
        popen = self.supervisor.children.pop(label)
        self.supervisor.procs.pop(label, None)
        try:
            code = popen.wait(300)
        except Exception as exc:
            raise ComponentFailed(f"`{name} migrate` did not finish") from exc
        if code != 0:
            lines = self.supervisor.last_lines(label)
            last = lines[-1] if lines else ""
            raise ComponentFailed(f"`{name} migrate` exited with code {code}: {last}")

    def start_gateway(self, comp: Component) -> None:
        nginx = gateway.nginx_binary()
        assert nginx is not None and comp.port is not None

        def upstream(name: str) -> str:
            return f"127.0.0.1:{COMPONENTS[name].port}"

        try:
            rendered = gateway.render(
                self.root,
                self.run,
                overrides={
                    "GATEWAY_PORT": f"127.0.0.1:{comp.port}",
                    "SIGNING_UPSTREAM": upstream("signing"),
                    "DEVICE_MANAGEMENT_UPSTREAM": upstream("device-management"),
                    "MONITORING_API_UPSTREAM": upstream("monitoring-api"),
                    "INGEST_BRIDGE_UPSTREAM": upstream("ingest-bridge"),
                },
            )
        except gateway.GatewayUnavailable as exc:
            raise ComponentFailed(str(exc)) from exc
        if port_open("127.0.0.1", comp.port):
            raise ComponentFailed(f"port {comp.port} is already in use")
        self.supervisor.start(
            comp.name, rendered.command(nginx), env=self.child_env(), cwd=self.root, port=comp.port
        )
        self.wait_healthy(comp)

    def start_simulator(self, comp: Component) -> None:
        script = script_path("simulator")
        assert script is not None
        cmd = [
            script,
            "run",
            "--config",
            "simulator/fleets/demo.yaml",
            "--rate",
            f"{self.simulator_rate:g}",
            "--duration",
            "0",
            "--no-live",
            # Publish as the devices an earlier `make run` registered (registers when none).
            # Their file lives with the broker's state: a device reused must have its client
            # in this run's Mosquitto, which keeps them in the same directory.
            "--reuse-devices",
            "--devices-file",
            str(self.run / "simulator-devices.json"),
        ]
        self.supervisor.start(comp.name, cmd, env=self.child_env(), cwd=self.root)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            code = self.supervisor.children[comp.name].poll()
            if code is not None:
                raise ComponentFailed(f"the simulator exited with code {code}")
            time.sleep(0.1)
        self.say(comp.name, "running", "green")

    def wait_healthy(self, comp: Component) -> None:
        url = comp.health_url
        assert url is not None
        child = self.supervisor.children[comp.name]
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                raise ComponentFailed(f"exited with code {code} before it was healthy")
            if healthy(url):
                self.say(comp.name, f"healthy ({url})", "green")
                return
            time.sleep(0.25)
        raise ComponentFailed(f"not healthy at {url} after {self.health_timeout:.0f}s")

    # -- supervising ------------------------------------------------------------------------
    def supervise_once(self) -> None:
        """React to children that exited: restart components (with back-off), report jobs."""
        now = time.monotonic()
        for name, code in self.supervisor.exited().items():
            if name in self.restarts:
                continue
            comp = COMPONENTS.get(name)
            proc = self.supervisor.procs.get(name)
            # What the dead child left in its process group (nginx workers, Faust's helpers)
            # would hold its port: the group goes with it.
            if proc is not None and proc.pid > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            # The MongoDB-compatible server is no component but is supervised like one: the
            # agents and the API hold their writes until it is back.
            restartable = name == MONGODB or (comp is not None and comp.kind != "simulator")
            if not restartable or not self.restart:
                self.say(name, f"exited with code {code}", "bold red" if code else "dim")
                self.supervisor.children.pop(name)
                continue
            ran = time.time() - proc.create_time if proc else 0.0
            delay = 1.0 if ran >= STABLE_SECONDS else self.backoff.get(name, 1.0)
            self.backoff[name] = min(delay * 2, MAX_BACKOFF)
            self.restarts[name] = now + delay
            broker = comp is not None and comp.kind == "broker"
            note = " (memory storage: topics and offsets are gone)" if broker else ""
            self.say(name, f"exited with code {code}; restarting in {delay:.0f}s{note}", "bold red")
        for name, due in list(self.restarts.items()):
            if due > now:
                continue
            try:
                self.restart_component(name)
            except (ComponentFailed, BrokerUnavailable, OSError) as exc:
                delay = self.backoff.get(name, 1.0)
                self.backoff[name] = min(delay * 2, MAX_BACKOFF)
                self.restarts[name] = now + delay
                self.say(name, f"restart failed: {exc}; retrying in {delay:.0f}s", "bold red")
                continue
            del self.restarts[name]
            self.waiting_health.add(name)
            self.save_state()
        for name in list(self.waiting_health):
            comp = COMPONENTS.get(name)
            if comp is None:
                up = port_open("127.0.0.1", self.supervisor.procs[name].port or 0)
            else:
                up = comp.health_url is None or healthy(comp.health_url, timeout=0.5)
            if up:
                self.waiting_health.discard(name)
                self.say(name, "healthy again", "green")

    def restart_component(self, name: str) -> None:
        comp = COMPONENTS.get(name)
        if comp is not None and comp.kind == "broker":
            assert self.broker is not None
            self.broker.proc = None
            self.start_broker(comp)
            return
        proc = self.supervisor.restart(name)
        self.say(name, f"restarted (pid {proc.pid})", "yellow")

    # -- state ------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return stacks_dir(self.run) / f"{os.getpid()}.json"

    def save_state(self) -> None:
        me = os.getpid()
        StackState(
            supervisor_pid=me,
            supervisor_create_time=create_time(me),
            procs={n: p for n, p in self.supervisor.procs.items() if not p.external},
            ready=self.ready,
            failed=self.failed,
        ).save(self.state_path)

    def stop(self) -> None:
        stopped = self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.proc = None  # stopped with the others, through its process group
        for name in stopped:
            self.say(name, "stopped", "dim")
        self.supervisor.procs.clear()
        self.state_path.unlink(missing_ok=True)

    # -- summary ----------------------------------------------------------------------------
    def summary(self) -> Table:
        table = Table(title="Local stack", show_lines=False)
        table.add_column("component")
        table.add_column("state")
        table.add_column("where")
        for name, comp in COMPONENTS.items():
            if name in self.failed:
                table.add_row(name, "[red]failed[/]", self.failed[name])
            elif name in self.skipped:
                table.add_row(name, "[yellow]skipped[/]", self.skipped[name])
            elif name in self.started or name in self.reused:
                state = "[green]running[/]" if name in self.started else "[cyan]reused[/]"
                if comp.kind == "broker":
                    where = f"kafka://{self.bootstrap or f'127.0.0.1:{comp.port}'}"
                elif comp.kind == "mqtt":
                    host, port = mqtt_address()
                    where = f"mqtt://{host}:{port} (accounts only, no anonymous clients)"
                elif comp.base_url:
                    where = comp.base_url
                    for label, path in comp.extra_urls:
                        where += f"  {label}: {comp.base_url}{path}"
                else:
                    where = f"pid {self.supervisor.procs[name].pid}"
                table.add_row(name, state, where)
        return table

    def print_summary(self) -> None:
        self.console.print(self.summary())
        if "signing" in self.started or "signing" in self.reused:
            email, password = admin_credentials()
            self.console.print(
                f"Demo login: [bold]{email}[/] / [bold]{password}[/]  "
                "(POST /users/auth through the gateway or signing)"
            )
        if self.detached:
            self.console.print(
                f"Running in the background (supervisor pid {os.getpid()}); logs in "
                f"{self.run / 'logs'}; `iotctl status` to check, `iotctl down` to stop."
            )
        else:
            self.console.print("Press Ctrl-C to stop everything.")


class StopSignals:
    """SIGINT and SIGTERM ask the supervisor to stop, once: the first raises KeyboardInterrupt.

    A terminal's Ctrl-C reaches us more than once (the whole foreground group gets it, and
    ``make``/``uv run`` pass it on), and people press it again when a stop seems slow. The
    first signal sets both to SIG_IGN before it raises, so no repeat can abandon the stop
    half-way, and they stay ignored until the process exits: restoring the previous handlers
    let a late repeat raise KeyboardInterrupt after the clean stop, and a Python-level handler
    is reset to SIG_DFL during interpreter shutdown (``_PySignal_Fini`` leaves SIG_IGN alone),
    where a repeat killed the process by signal (return code -2, seen in CI). Installing our
    handler also makes Ctrl-C work under a shell that started us with SIGINT ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # a repeat that was already pending when the first switched to SIG_IGN
        self.received = signum
        for s in self.SIGNALS:
            # signal.signal() first runs pending handlers (this one, returning above).
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.received is None:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


def run_up(
    names: list[str],
    *,
    root: Path,
    run: Path,
    console: Console,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
    simulator_rate: float = 20.0,
    restart: bool = True,
    detached: bool = False,
    on_ready: Callable[[Stack], None] | None = None,
    store: str = "postgres",
) -> int:
    """Start ``names`` and supervise them until Ctrl-C/SIGTERM (then stop them all)."""
    stack = Stack(
        root,
        run,
        console,
        detached=detached,
        health_timeout=health_timeout,
        simulator_rate=simulator_rate,
        restart=restart,
        store=store,
    )
    with StopSignals():
        try:
            try:
                stack.bring_up(names)
            except MissingDependency:
                stack.stop()
                raise
            stack.print_summary()
            if on_ready:
                on_ready(stack)
            if not stack.started:
                stack.stop()  # nothing of ours to supervise
                return 1 if stack.failed else 0
            while True:
                stack.supervise_once()
                time.sleep(0.25)
        except KeyboardInterrupt:
            console.print("stopping…")
            stack.stop()
            return 1 if stack.failed else 0
