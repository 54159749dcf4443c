"""Device users on RabbitMQ, kept by device-management: token = AMQP password, own key only.

Every test runs the service's real AMQP provisioner against this session's private vhost on
the machine's RabbitMQ (management API), and connects as the device with aio-pika.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import ProbableAuthenticationError
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelPreconditionFailed,
    InvalidFrameError,
)

from iot_common.topics import DEVICE_EVENTS_EXCHANGE, TELEMETRY_EXCHANGE


@pytest.fixture
async def amqp_service(start_service: Callable[..., Any], rabbitmq_vhost: Any) -> Any:
    return await start_service(
        mqtt_provisioning=False,
        amqp_provisioning=True,
        rabbitmq_url=rabbitmq_vhost.publisher_url,
        device_events_exchange=DEVICE_EVENTS_EXCHANGE,
        rabbitmq_management_url=rabbitmq_vhost.management_url,
        rabbitmq_admin_username=rabbitmq_vhost.admin_username,
        rabbitmq_admin_password=rabbitmq_vhost.admin_password,
    )


@pytest.fixture
async def amqp_connect(rabbitmq_vhost: Any) -> AsyncIterator[Callable[..., Any]]:
    """Open AMQP connections into the session's vhost as a given user (closed afterwards)."""
    opened: list[AbstractConnection] = []

    async def connect(username: str | None, password: str | None) -> AbstractConnection:
        conn = await aio_pika.connect(rabbitmq_vhost.url(username, password), timeout=5)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        with contextlib.suppress(Exception):
            await conn.close()


async def _refused(connect: Callable[..., Any], username: str, password: str) -> bool:
    try:
        await connect(username, password)
    except (ProbableAuthenticationError, AMQPConnectionError, ConnectionError):
        # Bad password: ACCESS_REFUSED at login; no permission in the vhost: Connection.Close
        # instead of Connection.OpenOk (aiormq reports that as an invalid frame).
        return True
    except InvalidFrameError:
        return True
    return False


async def _publish(conn: AbstractConnection, key: str, *, user_id: str | None) -> None:
    channel = await conn.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(TELEMETRY_EXCHANGE, ensure=False)
    await exchange.publish(aio_pika.Message(b"{}", user_id=user_id), routing_key=key, timeout=5)
    await channel.close()


async def _device(service: Any, device_body: Any, user: Any) -> tuple[str, str]:
    c = service.client
    dev = (await c.post("/devices/", json=device_body(), headers=user.headers)).json()
    cred = await c.post(f"/devices/{dev['id']}/credentials", headers=user.headers)
    assert cred.status_code == 201
    assert cred.json()["provisioned"] is True
    return dev["id"], cred.json()["token"]


async def _closed(conn: AbstractConnection, timeout: float = 1.0) -> bool:
    """Whether the broker has closed ``conn`` within ``timeout`` seconds (aio-pika clears
    ``connected`` when the far side closes; ``is_closed`` only follows our own ``close()``)."""
    deadline = time.monotonic() + timeout
    while conn.connected.is_set():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_token_is_the_devices_amqp_password_for_its_own_routing_key_only(
    amqp_service: Any, device_body: Any, users: dict[str, Any], amqp_connect: Any
) -> None:
    did, token = await _device(amqp_service, device_body, users["alice"])
    other, other_token = await _device(amqp_service, device_body, users["bob"])

    assert await _refused(amqp_connect, "guest-nobody", "")
    assert await _refused(amqp_connect, did, "not-the-token")
    assert await _refused(amqp_connect, did, other_token)  # another device's token

    conn = await amqp_connect(did, token)
    await _publish(conn, f"device.{did}", user_id=did)  # its own: taken
    with pytest.raises(ChannelAccessRefused):
        await _publish(conn, f"device.{other}", user_id=did)  # another device's key
    with pytest.raises(ChannelPreconditionFailed):
        await _publish(conn, f"device.{did}", user_id=other)  # claiming to be another user
    channel = await conn.channel()
    with pytest.raises(ChannelAccessRefused):  # configure nothing: no queue of its own
        await channel.declare_queue("sniff", auto_delete=True)
    # Read nothing: a queue bound to telemetry (as the bridge's is) does not serve it.
    admin = await amqp_connect(None, None)
    tap = await (await admin.channel()).declare_queue(exclusive=True)
    await tap.bind(TELEMETRY_EXCHANGE, routing_key="device.*")
    channel = await conn.channel()
    with pytest.raises(ChannelAccessRefused):
        await (await channel.get_queue(tap.name, ensure=False)).get(fail=False)


async def test_rotation_refuses_the_old_token_at_once_and_closes_its_connection(
    amqp_service: Any, device_body: Any, users: dict[str, Any], amqp_connect: Any
) -> None:
    alice = users["alice"]
    did, old = await _device(amqp_service, device_body, alice)
    conn = await amqp_connect(did, old)

    started = time.monotonic()
    r = await amqp_service.client.post(f"/devices/{did}/credentials", headers=alice.headers)
    assert r.json()["provisioned"] is True
    assert await _closed(conn, timeout=1.0)
    assert await _refused(amqp_connect, did, old)
    assert time.monotonic() - started < 1.0 + 5.0  # the API answer itself waits for the broker
    fresh = await amqp_connect(did, r.json()["token"])
    await _publish(fresh, f"device.{did}", user_id=did)


async def test_deactivation_and_deletion_close_the_connection_and_refuse_it(
    amqp_service: Any, device_body: Any, users: dict[str, Any], amqp_connect: Any
) -> None:
    alice = users["alice"]
    c = amqp_service.client
    did, token = await _device(amqp_service, device_body, alice)
    conn = await amqp_connect(did, token)

    r = await c.put(f"/devices/{did}", json={"active": False}, headers=alice.headers)
    assert r.status_code == 200
    assert await _closed(conn)
    assert await _refused(amqp_connect, did, token)

    await c.put(f"/devices/{did}", json={"active": True}, headers=alice.headers)
    conn = await amqp_connect(did, token)  # the wait in the API answer covers the grant
    await _publish(conn, f"device.{did}", user_id=did)

    assert (await c.delete(f"/devices/{did}", headers=alice.headers)).status_code == 204
    assert await _closed(conn)
    assert await _refused(amqp_connect, did, token)


async def test_a_device_deactivated_before_its_first_token_gets_no_access(
    amqp_service: Any, device_body: Any, users: dict[str, Any], amqp_connect: Any
) -> None:
    alice = users["alice"]
    c = amqp_service.client
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    await c.put(f"/devices/{dev['id']}", json={"active": False}, headers=alice.headers)
    cred = await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)
    assert cred.status_code == 201 and cred.json()["provisioned"] is True
    assert await _refused(amqp_connect, dev["id"], cred.json()["token"])
    await c.delete(f"/devices/{dev['id']}", headers=alice.headers)


async def test_a_rabbitmq_outage_loses_no_credential_change(
    start_service: Any,
    rabbitmq_vhost: Any,
    device_body: Any,
    users: dict[str, Any],
    amqp_connect: Any,
) -> None:
    """Changes made while the management API is unreachable are applied once it is back."""
    from iotctl.tcp_proxy import TcpProxy

    alice = users["alice"]
    _, _, port = rabbitmq_vhost.management_url.rpartition(":")
    proxy = TcpProxy("127.0.0.1", int(port))
    await proxy.start()  # only to own a port; the outage starts right away
    await proxy.stop()
    service = await start_service(
        mqtt_provisioning=False,
        amqp_provisioning=True,
        rabbitmq_url=rabbitmq_vhost.publisher_url,
        device_events_exchange=DEVICE_EVENTS_EXCHANGE,
        rabbitmq_management_url=proxy.via(rabbitmq_vhost.management_url),
        rabbitmq_admin_username=rabbitmq_vhost.admin_username,
        rabbitmq_admin_password=rabbitmq_vhost.admin_password,
        credential_wait_seconds=0.2,
        relay_max_backoff_seconds=0.3,
    )
    c = service.client
    dev = (await c.post("/devices/", json=device_body(), headers=alice.headers)).json()
    r = await c.post(f"/devices/{dev['id']}/credentials", headers=alice.headers)
    assert r.status_code == 201 and r.json()["provisioned"] is False
    token = r.json()["token"]
    assert await _refused(amqp_connect, dev["id"], token)

    await proxy.start()
    try:
        deadline = time.monotonic() + 15
        while await _refused(amqp_connect, dev["id"], token):
            assert time.monotonic() < deadline, "the change never reached RabbitMQ"
            await asyncio.sleep(0.1)
    finally:
        await proxy.stop()
        await c.delete(f"/devices/{dev['id']}", headers=alice.headers)


async def test_amqp_setup_writes_least_privilege_service_accounts(
    settings_factory: Callable[..., Any], rabbitmq_vhost: Any, run_id: str
) -> None:
    """`device-management amqp-setup` on an empty vhost: the bridge may consume its queue and
    publish nothing; the publisher may publish device events and read nothing."""
    from device_management.__main__ import amqp_setup
    from iot_common.rabbitmq import Management

    vhost = f"iot-setup-{run_id}"
    bridge, publisher = f"ib-setup-{run_id}", f"dm-setup-{run_id}"
    settings = settings_factory(
        rabbitmq_url=f"amqp://{publisher}:pub-pw@127.0.0.1:5672/{vhost}",
        device_events_exchange=DEVICE_EVENTS_EXCHANGE,
        rabbitmq_management_url=rabbitmq_vhost.management_url,
        rabbitmq_admin_username=rabbitmq_vhost.admin_username,
        rabbitmq_admin_password=rabbitmq_vhost.admin_password,
        amqp_bridge_username=bridge,
        amqp_bridge_password="bridge-pw",
        amqp_publisher_username=publisher,
        amqp_publisher_password="pub-pw",
    )
    api = Management(
        rabbitmq_vhost.management_url,
        username=rabbitmq_vhost.admin_username,
        password=rabbitmq_vhost.admin_password,
    )
    try:
        await amqp_setup(settings)
        await amqp_setup(settings)  # idempotent
        b = await aio_pika.connect(f"amqp://{bridge}:bridge-pw@127.0.0.1:5672/{vhost}")
        channel = await b.channel()
        queue = await channel.declare_queue("ingest-bridge.telemetry", durable=True)
        await queue.bind(TELEMETRY_EXCHANGE, routing_key="device.*")
        with pytest.raises(ChannelAccessRefused):
            await _publish(b, "device.x", user_id=None)
        channel = await b.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue("someone-elses", auto_delete=True)
        await b.close()
        p = await aio_pika.connect(f"amqp://{publisher}:pub-pw@127.0.0.1:5672/{vhost}")
        channel = await p.channel(publisher_confirms=True)
        events = await channel.declare_exchange(
            DEVICE_EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await events.publish(aio_pika.Message(b"{}"), routing_key="device.created", timeout=5)
        with pytest.raises(ChannelAccessRefused):
            await _publish(p, "device.x", user_id=None)
        channel = await p.channel()
        with pytest.raises(ChannelAccessRefused):
            await (await channel.get_queue("ingest-bridge.telemetry", ensure=False)).get()
        await p.close()
    finally:
        await api.delete_vhost(vhost)
        await api.delete_users([bridge, publisher])
        await api.aclose()


async def test_amqp_setup_waits_for_a_management_api_still_starting(
    settings_factory: Callable[..., Any], rabbitmq_vhost: Any, run_id: str
) -> None:
    """The broker answers AMQP before its management listener is up: the one-shot step waits
    for the API instead of failing the stack's start; a wrong password fails at once."""
    from device_management.__main__ import amqp_setup
    from iot_common.rabbitmq import Management, ManagementError
    from iotctl.tcp_proxy import TcpProxy

    _, _, port = rabbitmq_vhost.management_url.rpartition(":")
    proxy = TcpProxy("127.0.0.1", int(port))
    await proxy.start()  # only to own a port: the API is "not up yet"
    await proxy.stop()
    vhost = f"iot-wait-{run_id}"
    bridge, publisher = f"ib-wait-{run_id}", f"dm-wait-{run_id}"
    fields = dict(
        rabbitmq_url=f"amqp://{publisher}:pub-pw@127.0.0.1:5672/{vhost}",
        rabbitmq_management_url=proxy.via(rabbitmq_vhost.management_url),
        rabbitmq_admin_username=rabbitmq_vhost.admin_username,
        rabbitmq_admin_password=rabbitmq_vhost.admin_password,
        amqp_bridge_username=bridge,
        amqp_bridge_password="bridge-pw",
        amqp_publisher_username=publisher,
        amqp_publisher_password="pub-pw",
        amqp_setup_wait_seconds=30.0,
    )
    api = Management(
        rabbitmq_vhost.management_url,
        username=rabbitmq_vhost.admin_username,
        password=rabbitmq_vhost.admin_password,
    )
    try:
        setup = asyncio.create_task(amqp_setup(settings_factory(**fields)))
        await asyncio.sleep(1.5)
        assert not setup.done()
        await proxy.start()
        await asyncio.wait_for(setup, 20)
        assert await api.user_exists(bridge) and await api.user_exists(publisher)

        with pytest.raises(ManagementError):
            await amqp_setup(settings_factory(**{**fields, "rabbitmq_admin_password": "wrong"}))
        await proxy.stop()
        with pytest.raises(SystemExit, match="did not answer within"):
            await amqp_setup(settings_factory(**{**fields, "amqp_setup_wait_seconds": 0.5}))
    finally:
        await proxy.stop()
        await api.delete_vhost(vhost)
        await api.delete_users([bridge, publisher])
        await api.aclose()
