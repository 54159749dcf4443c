"""``iotctl up/status/down`` for real: child processes, health, clean stops, clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iotctl.broker import TansuBroker, free_port, port_open, speaks_kafka
from iotctl.components import COMPONENTS, landed

SIGNING_BUILT = landed(COMPONENTS["signing"])
ROOT = Path(__file__).resolve().parents[2]
IOTCTL = [sys.executable, "-m", "iotctl"]


class Runner:
    """Runs ``iotctl`` with its own run dir and ports, so a developer's stack is untouched."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.ports = {
            name: int(env[f"IOTCTL_{name.upper().replace('-', '_')}_PORT"])
            for name in (
                "broker",
                "mosquitto",
                "gateway",
                "signing",
                "device-management",
                "monitoring-api",
            )
        }

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*IOTCTL, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*IOTCTL, *args],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def closed(port: int) -> bool:
    return not port_open("127.0.0.1", port)


@pytest.fixture
def iotctl(
    tmp_path: Path, infra_env: dict[str, str], pg_database_factory: Callable[[str], str]
) -> Iterator[Runner]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTCTL_", "IOT_"))}
    env.update(infra_env)
    # iotctl starts (or reuses) its own broker; the session's broker is not its business.
    env.pop("IOT_KAFKA_BOOTSTRAP", None)
    env["IOTCTL_RUN_DIR"] = str(tmp_path / "run")
    env["IOTCTL_ROOT"] = str(ROOT)
    env["IOT_DATABASE_URL"] = pg_database_factory("iotctl")
    env["SIGNING_KEY_FILE"] = str(tmp_path / "signing-key.pem")
    env["COLUMNS"] = "200"
    for name in (
        "broker",
        "mosquitto",
        "gateway",
        "signing",
        "device-management",
        "monitoring-api",
        "ingest-bridge",
        "stream-agents",
    ):
        env[f"IOTCTL_{name.upper().replace('-', '_')}_PORT"] = str(free_port())
    runner = Runner(env)
    yield runner
    # Whatever a test left behind is stopped.
    runner("down", timeout=60)


def status(iotctl: Runner) -> dict[str, dict[str, object]]:
    result = iotctl("status", "--json")
    assert result.returncode == 0, result.stderr
    return {row["component"]: row for row in json.loads(result.stdout)}


def test_up_detach_status_down(iotctl: Runner) -> None:
    wanted = ["broker", "gateway"] + (["signing"] if SIGNING_BUILT else [])
    up = iotctl("up", *wanted, "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Traceback" not in up.stdout + up.stderr
    broker, gateway = iotctl.ports["broker"], iotctl.ports["gateway"]
    assert f"kafka://127.0.0.1:{broker}" in up.stdout
    assert f"http://127.0.0.1:{gateway}" in up.stdout

    rows = status(iotctl)
    assert rows["broker"]["health"] == "healthy"
    assert rows["gateway"]["health"] == "healthy"
    assert isinstance(rows["broker"]["pid"], int)
    assert speaks_kafka("127.0.0.1", broker)

    if SIGNING_BUILT:
        assert rows["signing"]["health"] == "healthy"
        assert "admin@example.com" in up.stdout  # the demo credentials are printed
        # The gateway routes to the signing service that iotctl started, and the bootstrap
        # admin exists (created by `signing migrate`).
        jwks = httpx.get(f"http://127.0.0.1:{gateway}/.well-known/jwks.json", timeout=5)
        assert jwks.status_code == 200
        assert jwks.json()["keys"][0]["kid"]
        login = httpx.post(
            f"http://127.0.0.1:{gateway}/users/auth",
            json={"email": "admin@example.com", "password": "admin-password-change-me"},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        assert login.json()["token_type"] == "bearer"

    # A second `up` of the same components finds them running and leaves them alone.
    again = iotctl("up", "broker", "gateway", "--detach")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout

    down = iotctl("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    assert wait_until(lambda: closed(broker) and closed(gateway), 15)
    if SIGNING_BUILT:
        assert wait_until(lambda: closed(iotctl.ports["signing"]), 15)
    rows = status(iotctl)
    assert {rows[n]["health"] for n in ("broker", "gateway")} == {"stopped"}
    assert "no stack is running" in iotctl("down").stdout


def test_a_component_that_dies_is_restarted(iotctl: Runner) -> None:
    up = iotctl("up", "gateway", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    gateway = iotctl.ports["gateway"]
    first = status(iotctl)["gateway"]["pid"]
    assert isinstance(first, int)
    os.kill(first, signal.SIGKILL)
    assert wait_until(
        lambda: (
            status(iotctl)["gateway"]["pid"] not in (None, first)
            and status(iotctl)["gateway"]["health"] == "healthy"
        ),
        30,
    )
    assert httpx.get(f"http://127.0.0.1:{gateway}/gateway/health", timeout=5).status_code == 200
    log = (Path(iotctl.env["IOTCTL_RUN_DIR"]) / "logs" / "iotctl.log").read_text()
    assert "restarting in" in log
    assert iotctl("down").returncode == 0
    assert wait_until(lambda: closed(gateway), 15)


def _signal_storm(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Send ``sig`` every millisecond until ``proc`` exits.

    A repeat then lands in every window of the stop: before the first handler returns, while
    components stop, after the handlers would be restored, during interpreter shutdown.
    """
    while proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        time.sleep(0.001)


@pytest.mark.parametrize(
    ("sig", "repeated"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["ctrl-c", "sigterm", "ctrl-c-repeated"],
)
def test_foreground_stops_everything_on_signal(
    iotctl: Runner, sig: signal.Signals, repeated: bool
) -> None:
    proc = iotctl.popen("up", "broker", "gateway")
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C" in line:
            break
    out = "".join(lines)
    assert "Ctrl-C" in out, out
    gateway = iotctl.ports["gateway"]
    # The gateway's access log is echoed with the component's prefix.
    httpx.get(f"http://127.0.0.1:{gateway}/no-such-route", timeout=5)
    assert wait_until(lambda: any("no-such-route" in ln for ln in _more(proc, lines)), 10)
    echoed = next(ln for ln in lines if "no-such-route" in ln)
    assert echoed.startswith("gateway")
    assert "|" in echoed

    # A terminal's Ctrl-C reaches iotctl more than once (make and uv pass it on too): no
    # repeat, whenever it lands, may abandon the stop half-way or kill iotctl by signal.
    if repeated:
        storm = threading.Thread(target=_signal_storm, args=(proc, sig), daemon=True)
        storm.start()
    else:
        proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + rest
    assert "Traceback" not in rest
    assert closed(gateway)
    assert closed(iotctl.ports["broker"])
    assert "no stack is running" in iotctl("down").stdout


def _more(proc: object, lines: list[str]) -> list[str]:
    import select

    stdout = proc.stdout  # type: ignore[attr-defined]
    while select.select([stdout], [], [], 0.2)[0]:
        line = stdout.readline()
        if not line:
            break
        lines.append(line)
    return lines


def test_down_stops_a_foreground_stack_from_another_terminal(iotctl: Runner) -> None:
    proc = iotctl.popen("up", "broker")
    broker = iotctl.ports["broker"]
    try:
        assert wait_until(lambda: speaks_kafka("127.0.0.1", broker), 30)
        run_dir = Path(iotctl.env["IOTCTL_RUN_DIR"])
        assert wait_until(lambda: (run_dir / "stacks" / f"{proc.pid}.json").exists(), 10)
        down = iotctl("down")
        assert down.returncode == 0, down.stdout + down.stderr
        proc.wait(30)
        assert closed(broker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_own_mosquitto_refuses_strangers_and_keeps_device_clients_across_stacks(
    iotctl: Runner, mqtt_connect: Any
) -> None:
    from iot_common import dynsec
    from iotctl.mosquitto import Accounts, Mosquitto

    port = iotctl.ports["mosquitto"]
    up = iotctl("up", "mosquitto", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"mqtt://127.0.0.1:{port}" in up.stdout
    rows = status(iotctl)
    assert rows["mosquitto"]["health"] == "healthy"
    assert isinstance(rows["mosquitto"]["pid"], int)
    at = ("127.0.0.1", port)
    assert not mqtt_connect(address=at).accepted
    assert mqtt_connect(
        dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD, client_id="cli-b1", address=at
    ).accepted
    # A device client created at run time (as device-management does) outlives the stack.
    run = Path(iotctl.env["IOTCTL_RUN_DIR"])
    handle = Mosquitto(directory=run / "mosquitto", port=port, accounts=Accounts())
    device, token = "cli-device-1", "cli-device-token"
    handle.add_devices([(device, token)])
    assert mqtt_connect(device, token, client_id=device, address=at).accepted
    assert iotctl("down").returncode == 0
    assert wait_until(lambda: closed(port), 15)

    again = iotctl("up", "mosquitto", "--detach")
    assert again.returncode == 0, again.stdout + again.stderr
    assert mqtt_connect(device, token, client_id=device, address=at).accepted
    assert not mqtt_connect(device, "wrong", client_id=device, address=at).accepted
    assert iotctl("down").returncode == 0
    assert wait_until(lambda: closed(port), 15)


def test_missing_dependency_is_one_clear_line(iotctl: Runner) -> None:
    if not SIGNING_BUILT:
        pytest.skip("signing is not built yet")
    dead = free_port()
    iotctl.env["IOT_REDIS_URL"] = f"redis://127.0.0.1:{dead}/0"
    result = iotctl("up", "signing", "--detach")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"Redis is not reachable at 127.0.0.1:{dead}" in message
    assert "apt-get install redis-server" in message
    assert closed(iotctl.ports["signing"])


def test_unknown_component_is_a_clear_error(iotctl: Runner) -> None:
    result = iotctl("up", "kafka-ui")
    assert result.returncode == 1
    assert "unknown component kafka-ui" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_taken_by_something_else_fails_that_component(iotctl: Runner) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", iotctl.ports["broker"]))
        squatter.listen()
        result = iotctl("up", "broker", "--detach")
    assert result.returncode == 1
    assert "in use by something that is not Kafka" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_reuses_a_broker_that_already_runs(iotctl: Runner) -> None:
    broker = TansuBroker(port=iotctl.ports["broker"])
    broker.start()
    try:
        result = iotctl("up", "broker", "--detach")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reusing" in result.stdout
        iotctl("down")
        # Not ours: still running after `down`.
        assert speaks_kafka("127.0.0.1", broker.port)
    finally:
        broker.stop()


# The gateway in front of the real services (request ids, redirects, the dashboard built in one
# line, Socket.IO over WebSocket) is checked on the full stack of test_first_hour.py.
