"""The infrastructure the tests and the benchmarks share, written once.

Like quix-streams' ``tests/containerhelper.py``: the root ``conftest.py``, every benchmark and
``scripts/test.sh`` take their PostgreSQL admin connection, throw-away databases, Redis key
clean-up, the RabbitMQ administrator, the MongoDB-compatible server, stopping the services they
started, free ports, latency percentiles and per-package coverage totals from here (the
brokers come from :mod:`iotctl.broker` and :mod:`iotctl.mosquitto`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from iot_common.settings import DEFAULT_DATABASE_URL
from iotctl.broker import TansuBroker, free_port

if TYPE_CHECKING:
    from iot_common.rabbitmq import Management

__all__ = [
    "PG_ADMIN_ENV",
    "PsqlError",
    "RabbitAdmin",
    "coverage_by_package",
    "coverage_lines",
    "create_database",
    "database_url",
    "drop_database",
    "drop_redis_namespace",
    "free_port",
    "mongodb_server",
    "percentiles",
    "pg_admin_url",
    "psql",
    "psql_file",
    "stop_process",
]

#: The one variable naming the PostgreSQL server (and a database to connect to as a superuser)
#: on which tests and benchmarks create their throw-away databases.
PG_ADMIN_ENV = "IOT_TEST_PG_ADMIN"
#: What the benchmarks read before; refused with a pointer to :data:`PG_ADMIN_ENV`, so that a
#: run configured the old way does not quietly use another server.
_RETIRED_ENV = ("IOT_BENCH_PG_ADMIN",)
DEFAULT_PG_ADMIN_URL = DEFAULT_DATABASE_URL.rsplit("/", 1)[0] + "/postgres"


def pg_admin_url() -> str:
    """``IOT_TEST_PG_ADMIN``, else the local PostgreSQL's ``postgres`` database."""
    for name in _RETIRED_ENV:
        if os.environ.get(name) and not os.environ.get(PG_ADMIN_ENV):
            raise RuntimeError(f"{name} is no longer read: set {PG_ADMIN_ENV} instead")
    return os.environ.get(PG_ADMIN_ENV) or DEFAULT_PG_ADMIN_URL


class PsqlError(subprocess.CalledProcessError):
    """``psql`` refused a statement; the message carries what it said."""

    def __str__(self) -> str:
        said = (self.stderr or b"").decode(errors="replace").strip()
        return f"psql failed ({self.returncode}) on {self.cmd[-1]!r}: {said}"


def psql(sql: str, *, url: str | None = None) -> str:
    """Run ``sql`` on the admin database (or ``url``), stopping at the first error."""
    return _psql(["-c", sql], url)


def psql_file(path: Path, *, url: str | None = None) -> str:
    """Run the script at ``path`` like :func:`psql`, ``pg_dump`` output included (``COPY``)."""
    return _psql(["-f", str(path)], url)


def _psql(args: list[str], url: str | None) -> str:
    cmd = ["psql", url or pg_admin_url(), "-v", "ON_ERROR_STOP=1", "-q", *args]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode:
        raise PsqlError(done.returncode, cmd, done.stdout, done.stderr)
    return done.stdout.decode()


def database_url(name: str) -> str:
    """The URL of database ``name`` on the admin URL's server."""
    return f"{pg_admin_url().rsplit('/', 1)[0]}/{name}"


def create_database(name: str, *, replace: bool = False) -> str:
    """Create database ``name`` (dropping it first if ``replace``); returns its URL."""
    if replace:
        drop_database(name)
    psql(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(name: str) -> None:
    """Drop database ``name`` if it exists, closing its connections."""
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_redis_namespace(redis_url: str, namespace: str) -> int:
    """Delete every key under ``namespace:``; returns how many."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


@contextmanager
def mongodb_server() -> Iterator[str]:
    """``MONGODB_URL``, else a private MongoDB-compatible server started for the caller and
    stopped afterwards (installed when missing: the MongoDB cases never skip)."""
    given = os.environ.get("MONGODB_URL")
    if given:
        yield given
        return
    from iotctl.sandbox import PrivateMongoDB

    server = PrivateMongoDB()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@dataclass(frozen=True)
class RabbitAdmin:
    """The machine's RabbitMQ as its administrator, read once from an AMQP URL.

    Tests and benchmarks make their private vhost and service accounts with it; the URL's
    user and password are percent-decoded here (an AMQP URL quotes them) and quoted again by
    :meth:`url`.
    """

    host: str
    port: int
    username: str
    password: str

    @classmethod
    def from_url(cls, url: str) -> RabbitAdmin:
        """``amqp://user:password@host:port/``; guest/guest on 127.0.0.1:5672 where left out."""
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5672,
            username=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
        )

    def url(self, vhost: str, username: str | None = None, password: str | None = None) -> str:
        """An AMQP URL into ``vhost`` as ``username`` (the administrator when none is given)."""
        user = quote(username or self.username, safe="")
        pw = quote((password or "") if username else self.password, safe="")
        return f"amqp://{user}:{pw}@{self.host}:{self.port}/{quote(vhost, safe='')}"

    def management(self, management_url: str) -> Management:
        """A client of the broker's management API, logged in as the administrator."""
        from iot_common.rabbitmq import Management

        return Management(management_url, username=self.username, password=self.password)


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 15.0) -> int:
    """SIGTERM, up to ``timeout`` seconds to exit, then SIGKILL; the exit status (reaped)."""
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def percentiles(
    values: Sequence[float],
    qs: Sequence[int] = (50, 90, 99),
    *,
    unit: str = "",
    digits: int = 2,
    mean: bool = False,
) -> dict[str, float]:
    """``{"n", "p50<unit>", …, ["mean<unit>"], "max<unit>"}`` of ``values``; ``{"n": 0}`` if none.

    Percentiles interpolate linearly between the nearest ranks (NumPy's default method).
    """
    a = sorted(float(v) for v in values)
    if not a:
        return {"n": 0}
    out: dict[str, float] = {"n": len(a)}
    for q in qs:
        pos = (len(a) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(a) - 1)
        out[f"p{q}{unit}"] = round(a[lo] + (a[hi] - a[lo]) * (pos - lo), digits)
    if mean:
        out[f"mean{unit}"] = round(sum(a) / len(a), digits)
    out[f"max{unit}"] = round(a[-1], digits)
    return out


def coverage_by_package(xml_path: Path, *, root: Path | None = None) -> dict[str, tuple[int, int]]:
    """``{workspace folder: (lines covered, lines measured)}`` from a Cobertura ``coverage.xml``.

    The totals SonarQube shows, since they are read from the file it reads. Each file is named
    relative to one of the report's ``<source>`` folders (``signing/src``, relative to ``root``,
    by default the report's folder): its first path component names the workspace package.
    """
    from xml.etree import ElementTree

    root = root or xml_path.parent
    # The report is coverage.py's own output, written by this test run.
    tree = ElementTree.parse(xml_path)  # noqa: S314
    sources = [s.text or "" for s in tree.iterfind("sources/source")]
    totals: dict[str, tuple[int, int]] = {}
    for cls in tree.iterfind("packages/package/classes/class"):
        filename = cls.get("filename", "")
        owner = next((s for s in sources if (root / s / filename).exists()), filename)
        folder = Path(owner).parts[0]
        hits = [int(line.get("hits", "0")) for line in cls.iterfind("lines/line")]
        covered, measured = totals.get(folder, (0, 0))
        totals[folder] = (covered + sum(1 for h in hits if h), measured + len(hits))
    return dict(sorted(totals.items()))


def coverage_lines(totals: dict[str, tuple[int, int]]) -> list[str]:
    """``coverage signing: 87.3 % (1203 of 1378 lines)``, one per package, then the total."""
    if not totals:
        return []
    rows = dict(totals)
    rows["total"] = (sum(c for c, _ in totals.values()), sum(m for _, m in totals.values()))
    return [
        f"coverage {name}: {100 * covered / measured if measured else 100.0:.1f} % "
        f"({covered} of {measured} lines)"
        for name, (covered, measured) in rows.items()
    ]


def serve_tansu(port: int) -> None:
    """Run a :class:`TansuBroker` on ``port`` until SIGTERM/SIGINT (``scripts/test.sh``)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker = TansuBroker(port=port)
    broker.start()
    try:
        print(broker.bootstrap, flush=True)
        stop.wait()
    finally:
        broker.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "tansu":
        sys.exit("usage: python -m iotctl.testinfra tansu PORT")
    serve_tansu(int(sys.argv[2]))
