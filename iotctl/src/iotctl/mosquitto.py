"""The project's own Mosquitto: one class for ``iotctl up``, every test session and the benchmarks.

The machine's Mosquitto keeps its default configuration (anonymous, port 1883); the platform
needs a broker configured its own way — dynamic security with the service accounts of
:mod:`iot_common.dynsec`, anonymous clients refused, packet and queue limits — so it runs this
instance on a port of its own. The configuration files are rewritten at every start; the
plugin's state (device clients created at run time) and the broker's persistence stay in
``directory``, so a restart keeps both.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iot_common import dynsec
from iotctl.broker import free_port
from iotctl.sandbox import SandboxUnavailable, _chown, _Instance, _private_dir, _wait_port

#: Where Debian (and the eclipse-mosquitto image) install the dynamic-security plugin.
PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)
#: The largest MQTT packet the platform's brokers accept (and the bridge announces in CONNECT):
#: readings are capped at 64 KiB by the bridge; 256 KiB leaves room for topic and properties.
MAX_PACKET_SIZE = 256 * 1024
#: A queue bound no benchmark reaches (see :meth:`Mosquitto.for_benchmarks`).
UNLIMITED_QUEUE = 1_000_000_000


class MosquittoError(RuntimeError):
    """The broker refused a control command, or did not answer it."""


def plugin_path() -> str:
    for candidate in PLUGIN_PATHS:
        if Path(candidate).exists():
            return candidate
    raise SandboxUnavailable(
        "Mosquitto's dynamic-security plugin is not installed (apt-get install mosquitto)"
    )


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SandboxUnavailable("mosquitto is not installed (apt-get install mosquitto)")
    return binary


def _reachable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can get to ``path`` (search permission on every directory above it)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == entry.pw_gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def login_accepted(
    host: str, port: int, username: str, password: str, *, timeout: float = 3.0
) -> bool:
    """Whether the MQTT broker at ``host:port`` accepts this login (a CONNACK with success)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    answer: list[Any] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"iotctl-probe-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(username, password)
    client.on_connect = lambda _c, _u, _f, rc, _p: answer.append(rc)
    try:
        client.connect(host, port, keepalive=5)
        deadline = time.monotonic() + timeout
        while not answer and time.monotonic() < deadline:
            if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except OSError:
        return False
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    return bool(answer) and not answer[0].is_failure


@dataclass(frozen=True)
class Accounts:
    """The service accounts the broker starts with (see :mod:`iot_common.dynsec`)."""

    admin_password: str = dynsec.DEV_ADMIN_PASSWORD
    bridge_password: str = dynsec.DEV_BRIDGE_PASSWORD
    admin_username: str = dynsec.ADMIN_USERNAME
    bridge_username: str = dynsec.BRIDGE_USERNAME
    #: MQTT topic prefixes the roles and device patterns cover ("+" levels allowed: a test
    #: session gives each test its own ``test/<tag>/`` prefix).
    prefixes: tuple[str, ...] = ("",)
    #: The bridge's shared-subscription group ("+" lets every test use its own).
    share_group: str = dynsec.SHARE_GROUP


@dataclass
class Mosquitto(_Instance):
    """A Mosquitto of the project's own on ``127.0.0.1:port``, data in ``directory``."""

    directory: Path = field(default_factory=lambda: _private_dir("mosquitto"))
    #: None: anonymous clients, no dynamic security — only a baseline measured against code
    #: from before device identity (``bench_ingest --baseline``) runs that way.
    accounts: Accounts | None = field(default_factory=Accounts)
    persistence: bool = True
    #: Seconds between saves of the in-memory state (sessions, queues) when persistent.
    autosave_interval: int = 30
    #: Per-client queue bounds while a subscriber lags or is away (0 = no limit, but with
    #: 0 a refused publish disconnects its client: see :meth:`for_benchmarks`).
    max_queued_messages: int = 1_000_000
    max_queued_bytes: int = 0
    max_inflight_messages: int = 1000
    max_packet_size: int = MAX_PACKET_SIZE
    tcp_nodelay: bool = False
    #: Log to standard output (``iotctl up`` echoes it) instead of ``mosquitto.log``.
    log_stdout: bool = False
    #: Device clients (id, token) written into the plugin's file before the first start.
    devices: Sequence[tuple[str, str]] = ()
    host: str = "127.0.0.1"
    #: Also listen with TLS on ``tls_port`` (same accounts), with a self-signed certificate
    #: for 127.0.0.1/localhost made at the first start (:attr:`tls_ca_path` trusts it).
    tls: bool = False
    tls_port: int = field(default_factory=free_port)

    @classmethod
    def for_benchmarks(cls, **kw: Any) -> Mosquitto:
        """Memory only, no queue or in-flight caps: a lagging subscriber loses nothing and the
        broker never throttles the measured client."""
        kw.setdefault("persistence", False)
        # Not 0 ("no limit"): Mosquitto 2.0 compares a client's outgoing packet count with
        # this after refusing a publish (ACL denied), and with 0 disconnects the client for
        # "quota exceeded" every time — a device that published one refused message lost
        # its connection and its other messages waited for the reconnect.
        kw.setdefault("max_queued_messages", UNLIMITED_QUEUE)
        kw.setdefault("max_queued_bytes", 0)
        kw.setdefault("max_inflight_messages", 0)
        kw.setdefault("tcp_nodelay", True)
        return cls(**kw)

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.directory / "dynamic-security.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def tls_ca_path(self) -> Path:
        """The broker's (self-signed) certificate: what a TLS client trusts."""
        return self.directory / "tls.crt"

    def _make_certificate(self) -> None:
        if self.tls_ca_path.exists():
            return
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "7", "-subj", "/CN=localhost",
                "-addext", f"subjectAltName=DNS:localhost,IP:{self.host}",
                "-keyout", str(self.directory / "tls.key"), "-out", str(self.tls_ca_path),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def write_config(self) -> None:
        """Write mosquitto.conf (and the plugin file, acl_file) for the next start."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} {self.host}"]
        if self.accounts is None:
            lines.append("allow_anonymous true")
        else:
            existing = None
            if self.dynsec_path.exists():
                existing = json.loads(self.dynsec_path.read_text(encoding="utf-8"))
            a = self.accounts
            config = dynsec.merge_config(
                existing,
                admin_password=a.admin_password,
                bridge_password=a.bridge_password,
                admin_username=a.admin_username,
                bridge_username=a.bridge_username,
                prefixes=a.prefixes,
                share_group=a.share_group,
                devices=self.devices,
            )
            self.devices = ()  # written once; the plugin owns them from now on
            tmp = self.dynsec_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(config), encoding="utf-8")
            tmp.chmod(0o600)
            tmp.replace(self.dynsec_path)
            acl = self.directory / "acl"
            acl.write_text(dynsec.acl_file(a.prefixes), encoding="utf-8")
            lines += [
                "allow_anonymous false",
                f"plugin {plugin_path()}",
                f"plugin_opt_config_file {self.dynsec_path}",
                f"acl_file {acl}",
            ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
                f"autosave_interval {self.autosave_interval}",
            ]
        else:
            lines.append("persistence false")
        lines += [
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_inflight_messages {self.max_inflight_messages}",
        ]
        if self.max_packet_size:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.tls:
            self._make_certificate()
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"certfile {self.tls_ca_path}",
                f"keyfile {self.directory / 'tls.key'}",
                "tls_version tlsv1.2",
            ]
        if self.tcp_nodelay:
            lines.append("set_tcp_nodelay true")
        lines += [
            "log_dest stdout" if self.log_stdout else f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
        ]
        as_root = os.geteuid() == 0 and not _reachable_by(self.directory, "mosquitto")
        if as_root:
            # Under a directory private to root (pytest's tmp_path, a 0700 home) the broker's
            # own user could not even read its config: it stays root (loopback only).
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if os.geteuid() == 0 and not as_root:
            # Mosquitto drops to its own user when started as root; it must write its files.
            _chown(self.directory, "mosquitto")

    def start(self) -> None:
        binary = mosquitto_binary()
        self.write_config()
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, 10, self.proc)
        if self.tls:
            _wait_port(self.tls_port, 10, self.proc)

    def kill(self) -> None:
        """A crash: SIGKILL, so the broker loses what it had not saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def rss_mb(self) -> float:
        """The broker's resident memory (MiB)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    # -- the control topic (tests and benchmarks; device-management has its own client) ------
    def control(self, commands: Iterable[dict[str, Any]], timeout: float = 30.0) -> list[Any]:
        """Send dynamic-security commands as the admin; returns the answers, in order.

        Raises :class:`MosquittoError` for an answer with an error, except the ones that mean
        the broker is already as asked (a client that exists, or is gone).
        """
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        assert self.accounts is not None, "no dynamic security on this broker"
        tag = secrets.token_hex(6)
        cmds = [dict(c, correlationData=f"{tag}:{i}") for i, c in enumerate(commands)]
        answers: dict[str, dict[str, Any]] = {}
        done = threading.Event()
        subscribed = threading.Event()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            for r in json.loads(msg.payload).get("responses", []):
                cid = r.get("correlationData", "")
                if cid.startswith(f"{tag}:"):
                    answers[cid] = r
            if len(answers) >= len(cmds):
                done.set()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"control-{tag}", protocol=mqtt.MQTTv5
        )
        client.username_pw_set(self.accounts.admin_username, self.accounts.admin_password)
        client.on_message = on_message
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(self.host, self.port)
        client.loop_start()
        try:
            client.subscribe(dynsec.RESPONSE_TOPIC, qos=1)
            if not subscribed.wait(timeout):
                raise MosquittoError("no SUBACK for the control response topic")
            # One message per 500 commands keeps each answer well under the packet limit.
            for i in range(0, len(cmds), 500):
                payload = json.dumps({"commands": cmds[i : i + 500]})
                client.publish(dynsec.CONTROL_TOPIC, payload, qos=1).wait_for_publish(timeout)
            if cmds and not done.wait(timeout):
                raise MosquittoError(f"{len(cmds) - len(answers)} commands unanswered")
        finally:
            client.disconnect()
            client.loop_stop()
        out = [answers[c["correlationData"]] for c in cmds]
        for cmd, answer in zip(cmds, out, strict=True):
            error = answer.get("error")
            if error and error not in (dynsec.ALREADY_EXISTS, dynsec.NOT_FOUND):
                raise MosquittoError(f"{cmd['command']} refused: {error}")
        return out

    def add_devices(self, devices: Iterable[tuple[str, str]]) -> None:
        """Create device clients (id, token) on the running broker."""
        self.control(dynsec.create_device_command(d, t) for d, t in devices)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()
