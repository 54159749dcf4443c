"""``device-management mqtt-config``: the init step of compose and Kubernetes, on the shipped
``infra/mosquitto/mosquitto.conf``, with a real Mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from device_management.__main__ import write_mqtt_config
from device_management.config import get_settings
from iot_common import dynsec
from iotctl.broker import free_port
from iotctl.mosquitto import mosquitto_binary, plugin_path
from iotctl.sandbox import _chown, _private_dir, _wait_port

CONF = Path(__file__).parents[2] / "infra" / "mosquitto" / "mosquitto.conf"


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "INGEST_BRIDGE_MQTT_PASSWORD": secrets.token_urlsafe(16),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def _broker(data: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on the shipped config, its /mosquitto/data here and a port of its own."""
    port = free_port()
    text = CONF.read_text()
    assert "allow_anonymous false" in text
    text = text.replace("/mosquitto/data", str(data))
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    text = text.replace("/usr/lib/mosquitto_dynamic_security.so", plugin_path())
    text = text.replace("persistence true", "persistence false")
    # Without the TLS listener (its certificate is the environment's; it has its own test in
    # iotctl/tests/test_mosquitto.py): the listener and its options end the file.
    assert "listener 8883" in text
    text = text.split("listener 8883", 1)[0]
    (data / "mosquitto.conf").write_text(text)
    if os.geteuid() == 0:  # Mosquitto drops to its own user: it must read and rewrite these
        _chown(data, "mosquitto")
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(data / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port, 10, proc)
    return proc, port


@pytest.fixture
def data_dir() -> Any:
    path = _private_dir("mqtt-config")  # not under pytest's tmp (0700 when run as root)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_init_step_gives_the_shipped_broker_its_accounts_and_keeps_devices(
    data_dir: Path, secrets_env: dict[str, str], mqtt_connect: Any
) -> None:
    tmp_path = data_dir
    write_mqtt_config(tmp_path)
    proc, port = _broker(tmp_path)
    address = ("127.0.0.1", port)
    try:
        assert not mqtt_connect(address=address).accepted  # anonymous
        bridge_pw = secrets_env["INGEST_BRIDGE_MQTT_PASSWORD"]
        assert not mqtt_connect(dynsec.BRIDGE_USERNAME, "guess", address=address).accepted
        bridge = mqtt_connect(dynsec.BRIDGE_USERNAME, bridge_pw, address=address)
        assert bridge.accepted
        assert bridge.subscribe("$share/ingest-bridge/devices/+/telemetry") == "Granted QoS 1"
        assert bridge.subscribe("devices/+/telemetry") == "Not authorized"
        admin_pw = secrets_env["DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD"]
        assert mqtt_connect(dynsec.ADMIN_USERNAME, admin_pw, address=address).accepted
    finally:
        proc.terminate()
        proc.wait(10)
    # A device created at run time (as the broker writes it) survives the next init run.
    config = json.loads((tmp_path / "dynamic-security.json").read_text())
    config["clients"].append(dynsec.device_client("dev-1", "tok-1"))
    (tmp_path / "dynamic-security.json").write_text(json.dumps(config))
    write_mqtt_config(tmp_path)
    proc, port = _broker(tmp_path)
    try:
        device = mqtt_connect("dev-1", "tok-1", address=("127.0.0.1", port))
        assert device.accepted
        assert device.publish("devices/dev-1/telemetry", b"{}") == "Success"
        assert device.publish("devices/dev-2/telemetry", b"{}") == "Not authorized"
    finally:
        with contextlib.suppress(Exception):
            proc.terminate()
            proc.wait(10)


def test_the_init_step_refuses_to_run_without_the_bridge_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INGEST_BRIDGE_MQTT_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="INGEST_BRIDGE_MQTT_PASSWORD"):
        write_mqtt_config(tmp_path)
    assert not (tmp_path / "dynamic-security.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")
def test_the_init_step_hands_the_data_directory_to_the_broker_s_user(
    secrets_env: dict[str, str], tmp_path: Path
) -> None:
    """Mosquitto writes its persistence file into the directory itself: a root-owned fresh
    volume left it failing every autosave ("Error: Permission denied")."""
    data = tmp_path / "data"
    data.mkdir()
    write_mqtt_config(data, owner="1883:1883")
    for path in (data, data / "dynamic-security.json", data / "acl"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1883, 1883), path
