"""Private, throw-away instances of the platform's infrastructure for fault-injection tests.

The machine's own PostgreSQL, Redis, RabbitMQ and Mosquitto are shared by everything that
runs on it, so a test that restarts them would break its neighbours. These start a second
instance of each on free ports with their data in a temporary directory, and can restart it
(``restart()``) as often as a test likes. Debian's packages provide the binaries.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
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
class PrivateMosquitto(_Instance):
    """Mosquitto with persistence, so QoS 1 sessions survive its restart."""

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise SandboxUnavailable("mosquitto is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n",
            encoding="utf-8",
        )
        if os.geteuid() == 0:
            _chown(self.directory, "mosquitto")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port, 10, self.proc)


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
