"""The project's own Mosquitto: refuses strangers, keeps device clients across restarts."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from iot_common import dynsec
from iotctl.broker import free_port
from iotctl.mosquitto import Accounts, Mosquitto, mosquitto_binary, plugin_path
from iotctl.sandbox import _chown, _private_dir, _wait_port

ROOT = Path(__file__).resolve().parents[2]


def test_strangers_are_refused_and_device_clients_survive_a_restart(mqtt_connect: Any) -> None:
    broker = Mosquitto(accounts=Accounts())
    try:
        broker.start()
        at = broker.address
        assert not mqtt_connect(address=at).accepted
        assert mqtt_connect(
            dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD, client_id="b1", address=at
        ).accepted
        device, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
        broker.add_devices([(device, token)])
        assert mqtt_connect(device, token, address=at).accepted

        # A new bridge password (from the environment) takes effect at the next start; the
        # device client created at run time is still there.
        broker.stop()
        broker.accounts = dataclasses.replace(Accounts(), bridge_password="rotated-bridge-pw")
        broker.start()
        assert mqtt_connect(device, token, address=at).accepted
        assert not mqtt_connect(
            dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD, client_id="b2", address=at
        ).accepted
        assert mqtt_connect(
            dynsec.BRIDGE_USERNAME, "rotated-bridge-pw", client_id="b3", address=at
        ).accepted
    finally:
        broker.cleanup()


def test_without_accounts_it_is_the_anonymous_baseline(mqtt_connect: Any) -> None:
    broker = Mosquitto(accounts=None, persistence=False)
    try:
        broker.start()
        conn = mqtt_connect(address=broker.address)
        assert conn.accepted
        assert conn.publish("devices/anyone/telemetry", b"{}") == "Success"
    finally:
        broker.cleanup()


def _tls_login(port: int, ca: Path | None, username: str | None, password: str | None) -> str:
    """Connect over TLS (trusting ``ca``, else the system's CAs); the CONNACK's reason."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    answer: list[Any] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=secrets.token_hex(6), protocol=mqtt.MQTTv5
    )
    client.tls_set(ca_certs=str(ca) if ca else None)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda _c, _u, _f, rc, _p: answer.append(rc)
    try:
        client.connect("127.0.0.1", port, keepalive=5)
        deadline = time.monotonic() + 10
        while not answer and time.monotonic() < deadline:
            client.loop(0.1)
    finally:
        client.disconnect()
    return str(answer[0]) if answer else "no CONNACK"


def test_the_shipped_config_serves_mqtt_over_tls_to_accounts_only() -> None:
    """compose's and Kubernetes' mosquitto.conf (its paths and ports moved here): a client that
    trusts the broker's certificate connects over TLS with an account, a stranger is refused
    there as on 1883, and a client that does not trust the certificate fails the handshake."""
    directory = _private_dir("mosquitto-tls")
    data, tls = directory / "data", directory / "tls"
    data.mkdir()
    tls.mkdir()
    openssl = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
    openssl += " -subj /CN=mosquitto -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
    subprocess.run(
        ["openssl", *openssl.split(), "-keyout", tls / "tls.key", "-out", tls / "tls.crt"],
        check=True,
        capture_output=True,
    )
    plain, secure = free_port(), free_port()
    conf = (ROOT / "infra" / "mosquitto" / "mosquitto.conf").read_text()
    for shipped, here in (
        ("listener 1883 0.0.0.0", f"listener {plain} 127.0.0.1"),
        ("listener 8883 0.0.0.0", f"listener {secure} 127.0.0.1"),
        ("/usr/lib/mosquitto_dynamic_security.so", plugin_path()),
        ("/mosquitto/data/", f"{data}/"),
        ("/mosquitto/tls/", f"{tls}/"),
    ):
        assert shipped in conf
        conf = conf.replace(shipped, here)
    (directory / "mosquitto.conf").write_text(conf)
    accounts = dynsec.merge_config(
        None,
        admin_password=dynsec.DEV_ADMIN_PASSWORD,
        bridge_password=dynsec.DEV_BRIDGE_PASSWORD,
    )
    (data / "dynamic-security.json").write_text(json.dumps(accounts))
    (data / "acl").write_text(dynsec.acl_file())
    if os.geteuid() == 0:
        _chown(directory, "mosquitto")  # it reads the key after dropping to its own user
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(directory / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(secure, 10, proc)
        ca = tls / "tls.crt"
        bridge = (dynsec.BRIDGE_USERNAME, dynsec.DEV_BRIDGE_PASSWORD)
        assert _tls_login(secure, ca, *bridge) == "Success"
        assert _tls_login(secure, ca, None, None) != "Success"
        assert _tls_login(secure, ca, dynsec.BRIDGE_USERNAME, "wrong") != "Success"
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_login(secure, None, *bridge)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
