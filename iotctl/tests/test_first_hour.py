"""The README's "first hour" walkthrough, run as it is written, against a stack of its own.

Every fenced ``sh`` block between ``<!-- first-hour -->`` and ``<!-- /first-hour -->`` runs in
order, as a newcomer pastes them:

* a plain block runs in the "second terminal": each in a fresh ``bash -euo pipefail``, with the
  variables the walkthrough assigns carried from block to block as one terminal keeps them; it
  must exit 0 (its wait loops end when what they wait for is there, or the block times out);
* a ``sh server ready="…"`` block is a terminal of its own: started in the background, ready
  once it prints that text, and stopped at the end with Ctrl-C (SIGINT to its process group, as
  a terminal sends it); ``make run``'s supervisor must then stop everything and exit 0.

What differs from a newcomer's machine, and only this:

* addresses: this stack listens on free ports (a developer's own ``make run`` may hold 8080), so
  ``127.0.0.1:8080`` and the receiver's port 9000 are replaced everywhere, and the
  ``MQTT_PORT=`` line gets the broker's port (the one ``iotctl up`` printed, else the one this
  session gave it);
* ``make run`` is ``make sync``, ``scripts/ensure-services.sh`` and ``iotctl up`` (checked
  against the Makefile here); the test runs that ``iotctl up`` with every component but the
  simulator: syncing the environment the tests run in, and the demo fleet's load and its device
  cache in ``~/.cache``, are not the walkthrough's business;
* MQTT is the platform's Mosquitto that ``iotctl up`` runs (dynamic security, anonymous
  clients refused, device accounts kept by device-management), on a port of its own, so the
  device's credential is really checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from iotctl.broker import free_port
from iotctl.components import COMPONENTS, landed

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BEGIN, END = "<!-- first-hour -->", "<!-- /first-hour -->"
#: Every component ``make run`` starts, but the simulator (the broker comes with them).
COMPONENTS_UP = ["signing", "device-management", "ingest-bridge", "stream-agents"]
COMPONENTS_UP += ["monitoring-api", "gateway"]
#: The gateway's address the walkthrough names, and the port of the receiver it runs.
GATEWAY, RECEIVER_PORT = "127.0.0.1:8080", 9000
BLOCK_TIMEOUT = 90.0
READY_TIMEOUT = 180.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(landed(COMPONENTS[n]) for n in COMPONENTS_UP if n != "gateway"),
        reason="needs every service",
    ),
    pytest.mark.timeout(400),
]

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
_ASSIGNED = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", re.M)


@dataclass
class Block:
    body: str
    #: For a server block: the text it prints once it is ready.
    ready: str | None = None


def walkthrough(text: str) -> tuple[str, list[Block]]:
    """The walkthrough's text between the markers, and its shell blocks in order."""
    start, end = text.index(BEGIN), text.index(END)
    part = text[start:end]
    blocks = []
    for m in _FENCE.finditer(part):
        info = m.group("info").split(maxsplit=1)
        if not info:
            continue
        assert info[0] == "sh", f"the walkthrough's blocks are sh, not {info[0]!r}"
        rest = info[1] if len(info) > 1 else ""
        ready = None
        if rest:
            server = re.fullmatch(r'server ready="([^"]+)"', rest)
            assert server, f"unknown block kind {rest!r}"
            ready = server.group(1)
        blocks.append(Block(m.group("body"), ready))
    return part, blocks


def test_the_walkthrough_reads_as_the_makefile_and_the_platform_are() -> None:
    """The parts the run below replaces are what they stand for (no stack needed)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert recipe.splitlines()[0].strip() == "sync"
    assert "scripts/ensure-services.sh" in recipe
    assert recipe.rstrip().endswith("iotctl up")
    text, blocks = walkthrough(README.read_text(encoding="utf-8"))
    assert "make run" in blocks[0].body and blocks[0].ready
    assert sum(b.ready is not None for b in blocks) == 2  # the stack and the receiver
    assert f"http://{GATEWAY}/dashboard" in text
    assert COMPONENTS["gateway"].default_port == int(GATEWAY.rsplit(":", 1)[1])
    assert re.search(r"^MQTT_PORT=\d+$", text, re.M)


class Terminal:
    """A server block running in the background, its output in a file."""

    def __init__(self, name: str, body: str, env: dict[str, str], out: Path) -> None:
        self.name = name
        self.out = out
        self._file = out.open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"set -euo pipefail\n{body}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never printed {text!r}:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def ctrl_c(self, timeout: float) -> int | None:
        """SIGINT to its process group, as a terminal's Ctrl-C; its exit code (None: still up)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._file.close()


def amqp_env(vhost: str, run_id: str, admin: Any) -> dict[str, str]:
    """This stack's AMQP as ``iotctl up`` has it, in a vhost of its own: ``iotctl up`` runs
    ``device-management amqp-setup``, which writes it with service accounts named after the
    run (users are global on the machine's broker). The shared local vhost would let another
    stack's bridge take this one's device events."""
    accounts = {
        "bridge": (f"ingest-bridge-fh{run_id}", secrets.token_urlsafe(12)),
        "publisher": (f"device-management-fh{run_id}", secrets.token_urlsafe(12)),
    }

    def url(user: str, password: str) -> str:
        broker = admin.admin
        return f"amqp://{user}:{password}@{broker.host}:{broker.port}/{quote(vhost, safe='')}"

    return {
        "IOT_RABBITMQ_URL": url(*accounts["publisher"]),
        "DEVICE_MANAGEMENT_RABBITMQ_URL": url(*accounts["publisher"]),
        "DEVICE_MANAGEMENT_AMQP_PROVISIONING": "true",
        "DEVICE_MANAGEMENT_RABBITMQ_MANAGEMENT_URL": admin.management_url,
        "DEVICE_MANAGEMENT_RABBITMQ_ADMIN_USERNAME": admin.admin_username,
        "DEVICE_MANAGEMENT_RABBITMQ_ADMIN_PASSWORD": admin.admin_password,
        "DEVICE_MANAGEMENT_AMQP_BRIDGE_USERNAME": accounts["bridge"][0],
        "DEVICE_MANAGEMENT_AMQP_BRIDGE_PASSWORD": accounts["bridge"][1],
        "DEVICE_MANAGEMENT_AMQP_PUBLISHER_USERNAME": accounts["publisher"][0],
        "DEVICE_MANAGEMENT_AMQP_PUBLISHER_PASSWORD": accounts["publisher"][1],
        "INGEST_BRIDGE_RABBITMQ_URL": url(*accounts["bridge"]),
    }


@pytest.fixture
def stack_env(
    tmp_path: Path,
    infra_env: dict[str, str],
    pg_database_factory: Callable[[str], str],
    rabbitmq_vhost: Any,
    run_id: str,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTCTL_", "IOT_"))}
    env.update(infra_env)
    vhost = f"iot-firsthour-{run_id}"
    env.update(amqp_env(vhost, run_id, rabbitmq_vhost))
    # iotctl starts its own broker with the platform's topics, as `make run` does.
    env.pop("IOT_KAFKA_BOOTSTRAP", None)
    env.update(
        {
            "IOTCTL_RUN_DIR": str(tmp_path / "run"),
            "IOTCTL_ROOT": str(ROOT),
            "IOT_DATABASE_URL": pg_database_factory("firsthour"),
            "SIGNING_KEY_FILE": str(tmp_path / "signing-key.pem"),
            "COLUMNS": "200",
        }
    )
    if "mosquitto" in COMPONENTS:
        # iotctl runs the platform's own Mosquitto, as `make run` does (on a port of its own).
        env["IOTCTL_MOSQUITTO_PORT"] = str(free_port())
    else:
        # Before it did, `make run` used the machine's anonymous one: this session's own
        # Mosquitto checks the device's credential instead.
        mosquitto = request.getfixturevalue("mosquitto")
        env["IOT_MQTT_HOST"], env["IOT_MQTT_PORT"] = mosquitto.host, str(mosquitto.port)
        env["DEVICE_MANAGEMENT_MQTT_PROVISIONING"] = "true"
        # The bridge's session and share group are this run's own on the session's broker.
        env["INGEST_BRIDGE_MQTT_INSTANCE"] = f"firsthour-{run_id}"
        env["INGEST_BRIDGE_MQTT_SHARE_GROUP"] = f"firsthour{run_id}"
    for name in [*COMPONENTS_UP, "broker"]:
        env[f"IOTCTL_{name.upper().replace('-', '_')}_PORT"] = str(free_port())
    yield env
    if any((tmp_path / "run" / "stacks").glob("*.json")):  # a stack the test did not stop
        subprocess.run(
            [sys.executable, "-m", "iotctl", "down"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )

    async def drop_vhost() -> None:
        async with rabbitmq_vhost.management() as api:
            users: set[str] = set()
            with contextlib.suppress(Exception):  # no vhost: amqp-setup never ran
                users = set(await api.vhost_users(vhost)) - {rabbitmq_vhost.admin_username}
            await api.delete_vhost(vhost)
            await api.delete_users(sorted(users))

    asyncio.run(drop_vhost())


def test_first_hour_walkthrough_runs_as_written(stack_env: dict[str, str], tmp_path: Path) -> None:
    env = stack_env
    text, blocks = walkthrough(README.read_text(encoding="utf-8"))
    gateway_port, receiver_port = env["IOTCTL_GATEWAY_PORT"], free_port()
    iotctl_up = shlex.join([sys.executable, "-m", "iotctl", "up", *COMPONENTS_UP])
    state = tmp_path / "terminal-state.sh"
    names = sorted({n for b in blocks if b.ready is None for n in _ASSIGNED.findall(b.body)})
    assert {"GW", "MQTT_PORT", "TOKEN", "DEVICE_ID", "DEVICE_TOKEN"} <= set(names)

    def localise(body: str) -> str:
        body = body.replace(GATEWAY, f"127.0.0.1:{gateway_port}")
        return re.sub(rf"\b{RECEIVER_PORT}\b", str(receiver_port), body)

    terminals: list[Terminal] = []
    outputs: list[str] = []
    began = time.monotonic()
    try:
        for i, block in enumerate(blocks):
            if block.ready is not None:
                body = localise(block.body)
                if "make run" in body:
                    body = body.replace("make run", f"exec {iotctl_up}")
                term = Terminal(f"block {i + 1}", body, env, tmp_path / f"terminal-{i + 1}.log")
                terminals.append(term)
                term.wait_for(block.ready, READY_TIMEOUT)
                if len(terminals) == 1:
                    stack_ready = time.monotonic() - began
                print(f"block {i + 1} ready at {time.monotonic() - began:.1f} s")
                continue
            body = localise(block.body)
            if re.search(r"^MQTT_PORT=", body, re.M):
                port = mqtt_port(terminals[0], env)
                body = re.sub(r"^MQTT_PORT=.*$", f"MQTT_PORT={port}", body, flags=re.M)
            outputs.append(run_block(i + 1, body, env, state, names, terminals[0]))
            print(f"block {i + 1} done at {time.monotonic() - began:.1f} s")
        walked = time.monotonic() - began

        # What the newcomer saw: their device, its reading, the alert, the delivery.
        values = read_state(state)
        for name in ("TOKEN", "DEVICE_ID", "DEVICE_TOKEN", "ALERT_ID", "SUBSCRIPTION"):
            assert values.get(name) not in (None, "", "null"), f"{name} is {values.get(name)!r}"
        seen = "\n".join(outputs)
        assert '"metric": "temperature"' in seen and '"value": 21.5' in seen
        assert '"severity": "critical"' in seen
        assert '"status": "delivered"' in seen
        receiver_terminal = terminals[1]
        hook = receiver_terminal.output()
        assert "alert.acknowledged" in hook and values["ALERT_ID"] in hook

        # The dashboard the walkthrough sends them to, and its sign-in with the demo login.
        base = f"http://127.0.0.1:{gateway_port}"
        page = httpx.get(f"{base}/dashboard", follow_redirects=True, timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        login = re.search(r"`(\S+@\S+)` / `(\S+)`", text)
        assert login, "the demo login is in the walkthrough"
        session = httpx.post(
            f"{base}/monitoring/session",
            json={"email": login.group(1), "password": login.group(2)},
            timeout=10,
        )
        assert session.status_code == 200, session.text
        check_gateway(base, terminals[0].output(), login.group(1), login.group(2))

        # Ctrl-C in the first terminal stops everything; the supervisor exits 0.
        receiver_terminal.ctrl_c(10)
        stack = terminals[0]
        code = stack.ctrl_c(90)
        assert code == 0, stack.tail()
        print(
            f"first hour: stack ready {stack_ready:.1f} s, walkthrough done {walked:.1f} s "
            f"after the start"
        )
    finally:
        for term in reversed(terminals):
            term.ctrl_c(30)
            term.kill()


def mqtt_port(stack: Terminal, env: dict[str, str]) -> int:
    """The MQTT port ``iotctl up`` printed, else the one this stack was given."""
    out = stack.output()
    for pattern in (r"mqtt://[\w.\-]+:(\d+)", r"(?i)mqtt\b[^\n]*?127\.0\.0\.1:(\d+)"):
        found = re.search(pattern, out)
        if found:
            return int(found.group(1))
    return int(env.get("IOT_MQTT_PORT") or env["IOTCTL_MOSQUITTO_PORT"])


def read_state(path: Path) -> dict[str, str]:
    """The variables the walkthrough's terminal holds (``declare -p`` lines)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r'declare -\S* ([A-Za-z_][A-Za-z0-9_]*)="(.*)"$', line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def run_block(
    number: int, body: str, env: dict[str, str], state: Path, names: list[str], stack: Terminal
) -> str:
    """Run one block in the walkthrough's terminal (its variables in ``state``); its stdout."""
    saved = shlex.quote(str(state))
    script = "\n".join(
        [
            "set -euo pipefail",
            f"if [ -f {saved} ]; then source {saved}; fi",
            body,
            f"declare -p {' '.join(names)} > {saved} 2>/dev/null || true",
        ]
    )
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"block {number} did not finish in {BLOCK_TIMEOUT:.0f} s:\n{body}\n"
            f"--- output\n{exc.stdout!r}\n{exc.stderr!r}\n--- stack\n{stack.tail()}"
        ) from None
    assert done.returncode == 0, (
        f"block {number} exited {done.returncode}:\n{body}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n--- stack\n{stack.tail()}"
    )
    return done.stdout


def check_gateway(base: str, stack_output: str, email: str, password: str) -> None:
    """What else the gateway in front of the real services does (this stack serves these
    checks too, rather than starting one of its own for them)."""
    import socketio

    # The dashboard was built (or found current) before monitoring-api started, in one line.
    said = [
        ln for ln in stack_output.splitlines() if re.search(r"dashboard (built|up to date)", ln)
    ]
    assert len(said) == 1 and said[0].startswith("monitoring-api"), said

    login = httpx.post(
        f"{base}/users/auth",
        json={"email": email, "password": password},
        headers={"X-Request-ID": "first-hour-1"},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    assert login.headers["x-request-id"] == "first-hour-1"  # passed on, and answered
    token = login.json()["access_token"]
    # Redirects from the service keep the client on the gateway.
    page = httpx.get(f"{base}/dashboard", follow_redirects=True, timeout=10)
    assert str(page.url).startswith(base)
    assert httpx.get(f"{base}/monitoring/alerts", timeout=10).status_code == 401

    async def live() -> None:
        # Socket.IO over a real WebSocket upgrade through nginx.
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(
            base,
            socketio_path="/ws/monitoring",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=10,
        )
        try:
            assert sio.transport() == "websocket"
            ack = await sio.call("join", {"room": "fleet"}, timeout=10)
            assert ack["ok"] is True, ack
        finally:
            await sio.disconnect()

    asyncio.run(live())
