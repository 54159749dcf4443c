"""Checks (and where possible starts) what the components depend on; creates the database."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from iot_common.settings import DEFAULT_DATABASE_URL
from iotctl.broker import port_open
from iotctl.components import Need


class MissingDependency(Exception):
    """Something the stack needs is absent; the message is one line saying how to get it."""


@dataclass(frozen=True)
class Infra:
    """One piece of local infrastructure: where it is and how to get it."""

    need: Need
    label: str
    host: str
    port: int
    how: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_default_local(self) -> bool:
        return self.host in {"127.0.0.1", "localhost"} and self.port == _DEFAULT_PORTS[self.need]


_DEFAULT_PORTS: dict[Need, int] = {
    "postgres": 5432,
    "redis": 6379,
    "rabbitmq": 5672,
    "mqtt": 1883,
    "kafka": 9092,
}


def database_url() -> str:
    """The PostgreSQL database the services use locally (``IOT_DATABASE_URL`` overrides)."""
    return os.environ.get("IOT_DATABASE_URL", DEFAULT_DATABASE_URL)


def mqtt_external() -> bool:
    """Whether this run's MQTT broker is given (``IOT_MQTT_HOST``/``IOT_MQTT_PORT``).

    Otherwise ``iotctl up`` runs the platform's own Mosquitto (component ``mosquitto``); a
    given broker is used as it is and must carry the platform's accounts (the reliability
    suite hands in a private one it restarts itself).
    """
    return bool(os.environ.get("IOT_MQTT_HOST") or os.environ.get("IOT_MQTT_PORT"))


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def infra(need: Need) -> Infra:
    """Where ``need`` is for this run, from the same ``IOT_*`` variables the services read."""
    env = os.environ
    if need == "postgres":
        host, port = _host_port(database_url(), 5432)
        how = "install it with `apt-get install postgresql` (`make run` starts it if installed)"
        return Infra(need, "PostgreSQL", host, port, how)
    if need == "redis":
        host, port = _host_port(env.get("IOT_REDIS_URL", "redis://127.0.0.1:6379/0"), 6379)
        return Infra(need, "Redis", host, port, "install it with `apt-get install redis-server`")
    if need == "rabbitmq":
        url = env.get("IOT_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
        host, port = _host_port(url, 5672)
        how = "install it with `apt-get install rabbitmq-server`"
        return Infra(need, "RabbitMQ", host, port, how)
    if need == "mqtt":
        host = env.get("IOT_MQTT_HOST", "127.0.0.1")
        port = int(env.get("IOT_MQTT_PORT", "1883"))
        return Infra(
            need, "Mosquitto (MQTT)", host, port, "install it with `apt-get install mosquitto`"
        )
    host, port = _host_port("kafka://" + env.get("IOT_KAFKA_BOOTSTRAP", "127.0.0.1:9092"), 9092)
    how = "run `iotctl up broker` or point IOT_KAFKA_BOOTSTRAP at a running broker"
    return Infra(need, "Kafka-compatible broker", host, port, how)


def ensure_infra(needs: set[Need], root: Path) -> list[str]:
    """Make sure every need except Kafka is reachable, starting local services when down.

    MQTT is checked only when the broker is given (:func:`mqtt_external`); otherwise it is
    the ``mosquitto`` component, which ``iotctl up`` starts like the Kafka broker.

    Returns notes to print; raises :class:`MissingDependency` with one line when something
    stays unreachable.
    """
    notes: list[str] = []
    checked = [n for n in sorted(needs) if n != "kafka" and (n != "mqtt" or mqtt_external())]
    down = [infra(n) for n in checked if not _reachable(infra(n))]
    if not down:
        return notes
    script = root / "scripts" / "ensure-services.sh"
    if any(i.is_default_local for i in down) and script.is_file():
        names = ", ".join(i.label for i in down)
        notes.append(f"starting {names} (scripts/ensure-services.sh)")
        subprocess.run(["bash", str(script)], capture_output=True, check=False, timeout=180)
    for item in down:
        if not _reachable(item):
            raise MissingDependency(f"{item.label} is not reachable at {item.address}: {item.how}")
    return notes


def _reachable(item: Infra) -> bool:
    return port_open(item.host, item.port, timeout=0.5)


def _admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "iot"
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    return admin, name


def ensure_database(url: str | None = None) -> bool:
    """Create the services' database if it is missing; True when it was created."""
    url = url or database_url()
    psql = shutil.which("psql")
    if psql is None:
        raise MissingDependency(
            "psql is not installed (needed to create the database): "
            "install it with `apt-get install postgresql-client`"
        )
    admin, name = _admin_url(url.replace("postgresql+asyncpg://", "postgresql://"))
    # psql's own quoting (:'var' / :"var") works on its input, not on -c.
    check = subprocess.run(
        [psql, admin, "-tA", "-v", "ON_ERROR_STOP=1", "-v", f"dbname={name}"],
        input="SELECT 1 FROM pg_database WHERE datname = :'dbname';",
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if check.returncode != 0:
        first = (check.stderr.strip().splitlines() or ["unknown error"])[0]
        raise MissingDependency(f"cannot query PostgreSQL at {admin}: {first}")
    if check.stdout.strip() == "1":
        return False
    create = subprocess.run(
        [psql, admin, "-q", "-v", "ON_ERROR_STOP=1", "-v", f"dbname={name}"],
        input='CREATE DATABASE :"dbname";',
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if create.returncode != 0 and "already exists" not in create.stderr:
        first = (create.stderr.strip().splitlines() or ["unknown error"])[0]
        raise MissingDependency(f"cannot create database {name!r}: {first}")
    return create.returncode == 0
