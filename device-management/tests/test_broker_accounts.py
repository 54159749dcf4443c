"""Device accounts on Mosquitto, kept by device-management: token = MQTT password, own topics only.

Every test talks to this session's Mosquitto (dynamic security, anonymous refused) through the
service's real provisioner, and connects as the device with paho.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from device_management.models import BrokerChange
from device_management.provisioner import COMMANDS_PER_MESSAGE, DynsecControl, fold
from iot_common import dynsec
from iotctl.mosquitto import Accounts, Mosquitto


async def _device(service: Any, device_body: Any, user: Any) -> tuple[str, str]:
    c = service.client
    dev = (await c.post("/devices/", json=device_body(), headers=user.headers)).json()
    cred = await c.post(f"/devices/{dev['id']}/credentials", headers=user.headers)
    assert cred.status_code == 201
    assert cred.json()["provisioned"] is True
    return dev["id"], cred.json()["token"]


async def _until(predicate: Any, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_token_is_the_devices_mqtt_password_for_its_own_topics_only(
    service: Any, device_body: Any, users: dict[str, Any], mqtt_connect: Any
) -> None:
    did, token = await _device(service, device_body, users["alice"])
    other, other_token = await _device(service, device_body, users["bob"])

    assert not mqtt_connect().accepted  # anonymous
    assert not mqtt_connect(did, "not-the-token").accepted
    assert not mqtt_connect(did, other_token).accepted  # another device's token
    assert not mqtt_connect(did, token, client_id="someone-else").accepted

    dev = mqtt_connect(did, token)
    assert dev.accepted
    assert dev.publish(f"devices/{did}/telemetry", b"{}") == "Success"
    assert dev.publish(f"devices/{other}/telemetry", b"{}") == "Not authorized"
    assert dev.publish(f"devices/{did}/config", b"{}") == "Not authorized"
    assert dev.subscribe("devices/+/telemetry") == "Not authorized"
    assert dev.subscribe("$share/ingest-bridge/devices/+/telemetry") == "Not authorized"
    assert dev.subscribe("#") == "Not authorized"
    assert dev.subscribe(f"devices/{did}/config") == "Granted QoS 1"
    # The other device's messages never reach it, even where a config filter was granted.
    assert dev.subscribe(f"devices/{other}/config") == "Granted QoS 1"
    spy = mqtt_connect(other, other_token)
    assert spy.publish(f"devices/{other}/telemetry", b"{}") == "Success"
    assert spy.subscribe(f"devices/{did}/config") == "Granted QoS 1"
    assert dev.publish(f"devices/{did}/config/reported", b"{}") == "Success"
    # The device receives its own retained config; the other device's never reaches it.
    await _until(lambda: bool(dev.messages), what="the device's own retained config")
    assert [t for t, _ in dev.messages] == [f"devices/{did}/config"]
    assert spy.messages == []


async def test_rotation_refuses_the_old_token_at_once_and_disconnects_it(
    service: Any, device_body: Any, users: dict[str, Any], mqtt_connect: Any
) -> None:
    alice = users["alice"]
    did, old = await _device(service, device_body, alice)
    connected = mqtt_connect(did, old)
    assert connected.accepted

    r = await service.client.post(f"/devices/{did}/credentials", headers=alice.headers)
    # The answer comes once the broker has the new password: from then on the old one is
    # refused, and the session opened with it is closed by the broker.
    assert r.json()["provisioned"] is True
    new = r.json()["token"]
    assert not mqtt_connect(did, old).accepted
    await _until(connected.disconnected.is_set, what="the old session to be closed")
    assert mqtt_connect(did, new).accepted


async def test_deactivation_and_deletion_close_the_connection_and_refuse_it(
    service: Any, device_body: Any, users: dict[str, Any], mqtt_connect: Any
) -> None:
    alice = users["alice"]
    c = service.client
    did, token = await _device(service, device_body, alice)
    conn = mqtt_connect(did, token)
    assert conn.accepted

    r = await c.put(f"/devices/{did}", json={"active": False}, headers=alice.headers)
    assert r.status_code == 200
    await _until(conn.disconnected.is_set, what="the deactivated device's disconnection")
    assert not mqtt_connect(did, token).accepted

    await c.put(f"/devices/{did}", json={"active": True}, headers=alice.headers)
    await _until(lambda: mqtt_connect(did, token).accepted, what="reactivation")
    conn = mqtt_connect(did, token)

    assert (await c.delete(f"/devices/{did}", headers=alice.headers)).status_code == 204
    await _until(conn.disconnected.is_set, what="the deleted device's disconnection")
    assert not mqtt_connect(did, token).accepted


async def test_a_broker_outage_loses_no_credential_change(
    start_service: Any, device_body: Any, users: dict[str, Any], mqtt_connect: Any
) -> None:
    """Changes made while Mosquitto is down are applied, in order, once it is back."""
    alice = users["alice"]
    broker = Mosquitto(persistence=False, accounts=Accounts())
    try:
        service = await start_service(
            mqtt_port=broker.port, credential_wait_seconds=0.2, relay_max_backoff_seconds=0.3
        )
        c = service.client
        # Registered and given a token during the outage; another one also deleted.
        kept = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
        r = await c.post(f"/devices/{kept['id']}/credentials", headers=alice.headers)
        assert r.status_code == 201 and r.json()["provisioned"] is False
        old = r.json()["token"]
        token = (await c.post(f"/devices/{kept['id']}/credentials", headers=alice.headers)).json()
        gone = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
        gone_token = (
            await c.post(f"/devices/{gone['id']}/credentials", headers=alice.headers)
        ).json()["token"]
        await c.delete(f"/devices/{gone['id']}", headers=alice.headers)

        broker.start()
        sessions = service.app.state.sessionmaker
        await _until_empty(sessions, timeout=15)
        assert mqtt_connect(kept["id"], token["token"], address=broker.address).accepted
        assert not mqtt_connect(kept["id"], old, address=broker.address).accepted
        assert not mqtt_connect(gone["id"], gone_token, address=broker.address).accepted
    finally:
        broker.cleanup()


async def _until_empty(sessions: async_sessionmaker[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with sessions() as session:
            left = (await session.execute(select(BrokerChange))).scalars().all()
        if not left:
            return
        assert time.monotonic() < deadline, [(r.action, r.attempts, r.last_error) for r in left]
        await asyncio.sleep(0.1)


async def test_provisioned_devices_keep_working_while_device_management_is_down(
    start_service: Any, device_body: Any, users: dict[str, Any], mqtt_connect: Any
) -> None:
    service = await start_service()
    did, token = await _device(service, device_body, users["alice"])
    conn = mqtt_connect(did, token)
    for provisioner in service.app.state.provisioners:  # its only link to the broker
        await provisioner.close()
    assert conn.publish(f"devices/{did}/telemetry", b"{}") == "Success"
    conn.close()
    again = mqtt_connect(did, token)  # a reconnect needs nothing from device-management
    assert again.accepted
    assert again.publish(f"devices/{did}/telemetry", b"{}") == "Success"


async def test_a_batch_slower_than_the_control_timeout_is_applied_while_answers_keep_coming(
    mqtt_connect: Any,
) -> None:
    """With thousands of devices on the broker each change costs the plugin a rewrite of its
    whole file, so a batch of registrations takes longer than the control timeout; it must be
    applied, not timed out and retried for ever (at 10,000 devices a batch of 200 took 12 s
    against the 10 s timeout). The timeout is calibrated on this broker: 4 messages' time."""
    preloaded = [(str(uuid.uuid4()), "preloaded") for _ in range(3000)]
    broker = Mosquitto(persistence=False, accounts=Accounts(), devices=preloaded)
    broker.start()

    def control(timeout: float) -> DynsecControl:
        return DynsecControl(
            host=broker.host,
            port=broker.port,
            username=dynsec.ADMIN_USERNAME,
            password=dynsec.DEV_ADMIN_PASSWORD,
            timeout=timeout,
        )

    def creates(n: int) -> list[tuple[str, str]]:
        return [(str(uuid.uuid4()), f"token-{i}") for i in range(n)]

    calibrate, batch = control(60), None
    try:
        await calibrate.connect()
        t0 = time.monotonic()
        first = creates(COMMANDS_PER_MESSAGE)
        await calibrate.send([dynsec.create_device_command(d, t) for d, t in first])
        one_message = time.monotonic() - t0
        batch = control(4 * one_message)
        await batch.connect()
        devices = creates(10 * COMMANDS_PER_MESSAGE)
        answers = await batch.send([dynsec.create_device_command(d, t) for d, t in devices])
        assert [a.get("error") for a in answers] == [None] * len(devices)
        did, token = devices[-1]
        assert mqtt_connect(did, token, address=broker.address).accepted
    finally:
        for c in (calibrate, batch):
            if c is not None:
                await c.close()
        broker.cleanup()


def test_a_batch_folds_to_each_devices_final_state() -> None:
    def row(i: int, did: uuid.UUID, action: str, active: bool = True) -> BrokerChange:
        secret = f"t{i}".encode() if action == "credential" else None
        return BrokerChange(id=i, device_id=did, action=action, active=active, secret=secret)

    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    plans = {
        p.device_id: p
        for p in fold(
            [
                row(1, a, "credential"),
                row(2, b, "credential"),
                row(3, a, "credential"),
                row(4, a, "active", active=False),
                row(5, b, "delete", active=True),
                row(6, c, "active", active=False),
            ]
        )
    }
    assert (plans[a].kind, plans[a].active, plans[a].secret, plans[a].rows) == (
        "credential",
        False,
        b"t3",
        [1, 3, 4],
    )
    assert (plans[b].kind, plans[b].rows) == ("delete", [2, 5])
    assert (plans[c].kind, plans[c].active) == ("active", False)


async def test_device_accounts_are_kept_over_tls_when_the_broker_speaks_it(
    start_service: Any, device_body: Any, users: dict[str, Any], mqtt_connect: Any
) -> None:
    """``IOT_MQTT_TLS`` + ``IOT_MQTT_TLS_CA_FILE``: device-management's control connection is
    TLS to the broker's 8883-style listener (the prod overlay's setting)."""
    broker = Mosquitto(persistence=False, accounts=Accounts(), tls=True)
    broker.start()
    try:
        service = await start_service(
            mqtt_port=broker.tls_port, mqtt_tls=True, mqtt_tls_ca_file=str(broker.tls_ca_path)
        )
        did, token = await _device(service, device_body, users["alice"])
        assert mqtt_connect(did, token, address=broker.address).accepted
    finally:
        broker.cleanup()
