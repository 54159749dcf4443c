"""The project's own Mosquitto: refuses strangers, keeps device clients across restarts."""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from typing import Any

from iot_common import dynsec
from iotctl.mosquitto import Accounts, Mosquitto


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
