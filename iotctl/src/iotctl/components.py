"""The components ``iotctl`` knows: how each is started, where it listens, what it needs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["broker", "mqtt", "service", "gateway", "simulator"]
Need = Literal["postgres", "redis", "rabbitmq", "mqtt", "kafka"]


@dataclass(frozen=True)
class Component:
    """One thing ``iotctl up`` can start."""

    name: str
    kind: Kind
    default_port: int | None = None
    #: Python package whose ``__main__`` runs the component (absent = not landed yet).
    package: str | None = None
    health_path: str | None = "/health"
    migrate: bool = False
    needs: tuple[Need, ...] = ()
    #: Other components it talks to; ``up`` starts them first unless already running.
    after: tuple[str, ...] = ()
    #: Env variables that tell the service which port to listen on.
    port_env: tuple[str, ...] = ()
    extra_urls: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: Script (from the repository root) and arguments that build what the component serves,
    #: run before each start; it skips what is up to date and says what it did in its last line.
    build: tuple[str, ...] = ()

    @property
    def port(self) -> int | None:
        """The port for this run: ``IOTCTL_<NAME>_PORT`` overrides the default."""
        if self.default_port is None:
            return None
        env = f"IOTCTL_{self.name.upper().replace('-', '_')}_PORT"
        return int(os.environ.get(env, self.default_port))

    @property
    def health_url(self) -> str | None:
        if self.health_path is None or self.port is None:
            return None
        return f"http://127.0.0.1:{self.port}{self.health_path}"

    @property
    def base_url(self) -> str | None:
        return None if self.port is None else f"http://127.0.0.1:{self.port}"


def _service(
    name: str,
    port: int,
    *,
    port_env: str,
    needs: tuple[Need, ...],
    after: tuple[str, ...] = (),
    migrate: bool = False,
    extra_urls: tuple[tuple[str, str], ...] = (),
    build: tuple[str, ...] = (),
) -> Component:
    return Component(
        name=name,
        kind="service",
        default_port=port,
        package=name.replace("-", "_"),
        migrate=migrate,
        needs=needs,
        after=after,
        port_env=(port_env,),
        extra_urls=extra_urls,
        build=build,
    )


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("broker", "broker", default_port=9092, health_path=None, needs=()),
        # The platform's own Mosquitto (dynamic security, anonymous clients refused), on a
        # port of its own: the machine's Mosquitto on 1883 keeps its default configuration.
        Component("mosquitto", "mqtt", default_port=1884, health_path=None, needs=()),
        _service(
            "signing",
            8001,
            port_env="SIGNING_PORT",
            needs=("postgres", "redis"),
            migrate=True,
            extra_urls=(("API docs", "/docs"),),
        ),
        _service(
            "device-management",
            8002,
            port_env="DEVICE_MANAGEMENT_PORT",
            # "mqtt": it keeps the devices' MQTT clients (dynamic security's control topic).
            needs=("postgres", "redis", "rabbitmq", "mqtt"),
            after=("signing",),
            migrate=True,
            extra_urls=(("API docs", "/docs"),),
        ),
        _service(
            "ingest-bridge",
            8004,
            port_env="INGEST_BRIDGE_HTTP_PORT",
            needs=("kafka", "redis", "rabbitmq", "mqtt"),
            after=("broker",),
        ),
        _service(
            "stream-agents",
            6066,
            port_env="AGENTS_WEB_PORT",
            needs=("kafka", "postgres"),
            after=("broker",),
        ),
        _service(
            "monitoring-api",
            8003,
            port_env="MONITORING_API_PORT",
            needs=("kafka", "postgres", "redis"),
            after=("broker", "signing"),
            extra_urls=(("dashboard", "/dashboard"),),
            # The same step `make test` runs, front end only (no browser for Playwright).
            build=("scripts/test.d/20-dashboard.sh", "build"),
        ),
        Component(
            "gateway",
            "gateway",
            default_port=8080,
            health_path="/gateway/health",
            extra_urls=(("dashboard", "/dashboard"),),
        ),
        Component(
            "simulator",
            "simulator",
            package="simulator",
            health_path=None,
            needs=("mqtt", "rabbitmq"),
            after=("signing", "device-management", "ingest-bridge"),
        ),
    )
}

ORDER: tuple[str, ...] = tuple(COMPONENTS)


def resolve(names: list[str]) -> list[Component]:
    """The named components (all when empty) plus what they need, in start order."""
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown component {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    wanted: set[str] = set(names or ORDER)
    todo = list(wanted)
    while todo:
        comp = COMPONENTS[todo.pop()]
        deps = list(comp.after)
        if "kafka" in comp.needs:
            deps.append("broker")
        if "mqtt" in comp.needs:
            deps.append("mosquitto")
        for dep in deps:
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    return [COMPONENTS[n] for n in ORDER if n in wanted]


def script_path(name: str) -> str | None:
    """The console script ``name`` of this environment (the venv's bin first)."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def landed(comp: Component) -> bool:
    """Whether the component's code exists: its console script and its ``__main__`` module."""
    if comp.package is None:
        return True
    if script_path(comp.name) is None:
        return False
    try:
        return importlib.util.find_spec(f"{comp.package}.__main__") is not None
    except (ImportError, ValueError):
        return False
