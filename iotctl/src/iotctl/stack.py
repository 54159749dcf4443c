"""``iotctl up``: bring components up in order, wait for health, keep or hand off the stack."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console
from rich.table import Table

from iotctl import deps, gateway
from iotctl.broker import BrokerUnavailable, TansuBroker, port_open, speaks_kafka
from iotctl.components import Component, Need, landed, resolve, script_path
from iotctl.deps import MissingDependency
from iotctl.procs import Proc, StackState, Supervisor, create_time

STATE_FILE = "stack.json"
DEFAULT_HEALTH_TIMEOUT = 90.0


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


def component_up(comp: Component) -> bool:
    """Whether ``comp`` already answers on its port (started by us or by someone else)."""
    if comp.kind == "broker":
        return comp.port is not None and speaks_kafka("127.0.0.1", comp.port)
    if comp.health_url is None:
        return False
    return healthy(comp.health_url)


@dataclass
class Stack:
    """One ``iotctl up`` run."""

    root: Path
    run: Path
    console: Console
    detach: bool
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    simulator_rate: float = 20.0
    supervisor: Supervisor = field(init=False)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    broker: TansuBroker | None = None
    bootstrap: str = ""
    #: Processes of a detached stack that was already running (kept in the state file).
    inherited: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.console, detach=self.detach, log_dir=self.run / "logs")
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
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("IOT_KAFKA_BOOTSTRAP", self.bootstrap or "127.0.0.1:9092")
        if self.bootstrap:
            env["IOT_KAFKA_BOOTSTRAP"] = self.bootstrap
        from iotctl.components import COMPONENTS

        for comp in COMPONENTS.values():
            for var in comp.port_env:
                if comp.port is not None:
                    env.setdefault(var, str(comp.port))
        signing = COMPONENTS["signing"].base_url
        env.setdefault("IOT_SIGNING_URL", str(signing))
        env.setdefault("IOT_JWKS_URL", f"{signing}/.well-known/jwks.json")
        env.setdefault("IOT_DEVICE_MANAGEMENT_URL", str(COMPONENTS["device-management"].base_url))
        env.setdefault("SIMULATOR_INGEST_URL", str(COMPONENTS["ingest-bridge"].base_url))
        env.setdefault("IOT_MONITORING_API_URL", str(COMPONENTS["monitoring-api"].base_url))
        env.setdefault("IOT_DATABASE_URL", deps.database_url())
        # The monitoring store lives in the same PostgreSQL database for a local run.
        env.setdefault("MONITORING_STORE_URL", deps.database_url())
        email, password = admin_credentials()
        env.setdefault("IOT_ADMIN_EMAIL", email)
        env.setdefault("IOT_ADMIN_PASSWORD", password)
        return env

    # -- the run ----------------------------------------------------------------------------
    def plan(self, names: list[str]) -> list[Component]:
        comps = resolve(names)
        runnable = []
        for comp in comps:
            reason = self.unavailable(comp)
            if reason:
                self.skipped[comp.name] = reason
                self.say(comp.name, f"skipped: {reason}", "yellow")
            else:
                runnable.append(comp)
        return runnable

    def unavailable(self, comp: Component) -> str | None:
        if comp.kind == "gateway":
            if gateway.nginx_binary() is None:
                return "nginx is not installed (apt-get install nginx)"
            return None
        if comp.kind == "simulator":
            if not landed(comp):
                return "the simulator is not built yet (no simulator.__main__)"
            if not (self.root / "simulator" / "fleets" / "demo.yaml").is_file():
                return "simulator/fleets/demo.yaml is missing"
            return None
        if comp.package and not landed(comp):
            return f"not built yet (no {comp.package}.__main__ in this workspace)"
        return None

    def check_infra(self, comps: list[Component]) -> None:
        needs: set[Need] = set()
        for comp in comps:
            needs.update(comp.needs)
        for note in deps.ensure_infra(needs, self.root):
            self.say("iotctl", note)
        if any(c.migrate or "postgres" in c.needs for c in comps) and deps.ensure_database():
            self.say("iotctl", f"created database {deps.database_url().rsplit('/', 1)[-1]!r}")

    def bring_up(self, names: list[str]) -> None:
        comps = self.plan(names)
        self.check_infra(comps)
        for comp in comps:
            try:
                self.start_component(comp)
            except ComponentFailed as exc:
                self.failed[comp.name] = str(exc)
                self.say(comp.name, f"failed: {exc}", "bold red")
                for line in self.supervisor.last_lines(comp.name):
                    self.say(comp.name, f"  {line}", "red")
            self.save_state()

    def start_component(self, comp: Component) -> None:
        if component_up(comp):
            self.reused.append(comp.name)
            where = f"127.0.0.1:{comp.port}"
            self.say(comp.name, f"already running on {where}, reusing it", "dim")
            self.supervisor.adopt(Proc(comp.name, 0, 0.0, port=comp.port, external=True))
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
        assert self.broker.proc is not None
        pid = self.broker.proc.pid
        self.supervisor.adopt(Proc(comp.name, pid, create_time(pid), comp.port, str(log)))
        self.bootstrap = self.broker.bootstrap
        self.say(comp.name, f"Tansu (memory storage) listening on {self.bootstrap}", "green")

    def start_service(self, comp: Component) -> None:
        script = script_path(comp.name)
        assert script is not None
        env = self.child_env()
        if comp.migrate:
            self.say(comp.name, "applying database migrations")
            self.run_once(comp.name, [script, "migrate"], env)
        self.supervisor.start(comp.name, [script], env=env, cwd=self.root, port=comp.port)
        self.wait_healthy(comp)

    def run_once(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        child = self.supervisor.start(f"{name}-migrate", cmd, env=env, cwd=self.root)
        popen = self.supervisor.children[child.name]
        try:
            code = popen.wait(300)
        except Exception as exc:
            raise ComponentFailed(f"`{' '.join(cmd[-2:])}` did not finish") from exc
        finally:
            self.supervisor.procs.pop(child.name, None)
            self.supervisor.children.pop(child.name, None)
        if code != 0:
            lines = self.supervisor.last_lines(child.name)
            last = lines[-1] if lines else ""
            raise ComponentFailed(f"`{name} migrate` exited with code {code}: {last}")

    def start_gateway(self, comp: Component) -> None:
        nginx = gateway.nginx_binary()
        assert nginx is not None and comp.port is not None
        from iotctl.components import COMPONENTS

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

    # -- state ------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run / STATE_FILE

    def save_state(self) -> None:
        me = os.getpid()
        StackState(
            mode="detached" if self.detach else "foreground",
            supervisor_pid=me,
            supervisor_create_time=create_time(me),
            procs={
                **self.inherited,
                **{n: p for n, p in self.supervisor.procs.items() if not p.external},
            },
        ).save(self.state_path)

    def stop(self) -> None:
        stopped = self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.proc = None  # stopped with the others, through its process group
        for name in stopped:
            self.say(name, "stopped", "dim")
        self.supervisor.procs.clear()
        if self.inherited:
            self.save_state()
        else:
            self.state_path.unlink(missing_ok=True)

    # -- summary ----------------------------------------------------------------------------
    def summary(self) -> Table:
        from iotctl.components import COMPONENTS

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
        if self.detach:
            self.console.print(
                f"Logs in {self.run / 'logs'}; `iotctl status` to check, `iotctl down` to stop."
            )
        else:
            self.console.print("Press Ctrl-C to stop everything.")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_up(
    names: list[str],
    *,
    root: Path,
    run: Path,
    console: Console,
    detach: bool,
    health_timeout: float,
    simulator_rate: float,
    on_ready: Callable[[Stack], None] | None = None,
) -> int:
    """Start ``names``; foreground runs until Ctrl-C/SIGTERM, ``detach`` returns at once."""
    existing = StackState.load(run / STATE_FILE)
    if existing and existing.supervisor_alive() and existing.mode == "foreground":
        console.print(
            f"[red]a stack is already running in the foreground (pid {existing.supervisor_pid});"
            " stop it first (Ctrl-C there, or `iotctl down`)[/]"
        )
        return 1
    stack = Stack(root, run, console, detach, health_timeout, simulator_rate)
    if existing and existing.procs:
        # A detached stack is running: keep its processes in the state file.
        stack.inherited = {n: p for n, p in existing.procs.items() if p.alive()}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            stack.bring_up(names)
        except MissingDependency:
            stack.stop()
            raise
        stack.print_summary()
        if on_ready:
            on_ready(stack)
        if detach:
            return 1 if stack.failed else 0
        reported: set[str] = set()
        while True:
            for name, code in stack.supervisor.exited().items():
                if name not in reported:
                    reported.add(name)
                    stack.say(name, f"exited with code {code}", "bold red")
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping…")
        stack.stop()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stdout.flush()
