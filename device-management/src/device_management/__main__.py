"""``device-management [serve|migrate|amqp-setup|mqtt-config]``: run the service, apply its
database migrations, write the platform's RabbitMQ definitions (vhost, exchanges, service
accounts), or write the Mosquitto dynamic-security files (compose's and Kubernetes' init step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path

import httpx
import uvicorn

from device_management.config import DeviceManagementSettings, get_settings
from device_management.main import SERVICE, create_app
from device_management.migrations import upgrade_sync
from iot_common import dynsec, rabbitmq
from iot_common.logging import setup_logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="device-management", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    migrate = sub.add_parser("migrate", help="apply Alembic migrations (upgrade)")
    migrate.add_argument("revision", nargs="?", default="head")
    sub.add_parser(
        "amqp-setup",
        help="import the vhost, exchanges and service accounts into RabbitMQ (idempotent)",
    )
    mqtt = sub.add_parser(
        "mqtt-config",
        help="write Mosquitto's dynamic-security file and acl_file into DIR (keeps the devices)",
    )
    mqtt.add_argument("directory", type=Path)
    mqtt.add_argument("--owner", help="uid:gid to give the files (the broker rewrites them)")
    args = parser.parse_args(argv)

    settings = get_settings()
    setup_logging(SERVICE, level=settings.log_level, json=settings.log_json)
    if args.command == "migrate":
        upgrade_sync(settings.database_url.get_secret_value(), args.revision)
        log.info("database migrated to %s", args.revision)
        return
    if args.command == "mqtt-config":
        write_mqtt_config(args.directory, owner=args.owner)
        return
    if args.command == "amqp-setup":
        asyncio.run(amqp_setup(settings))
        return
    uvicorn.run(
        create_app(settings),
        host=getattr(args, "host", None) or settings.host,
        port=getattr(args, "port", None) or settings.port,
        log_config=None,
        access_log=settings.access_log,
    )


async def amqp_setup(settings: DeviceManagementSettings) -> None:
    """The platform's part of RabbitMQ's definitions, through the management API.

    A one-shot step that starts with the broker (compose's ``rabbitmq-setup``, the Kubernetes
    init container) may find the broker up but its management listener not yet: it waits for
    the API (``amqp_setup_wait_seconds``); a refusal (wrong administrator password, 4xx) fails
    at once with the broker's reason."""
    definitions = rabbitmq.definitions(
        vhost=settings.rabbitmq_vhost,
        telemetry_exchange=settings.telemetry_exchange,
        events_exchange=settings.device_events_exchange,
        bridge_queues=settings.amqp_bridge_queues,
        bridge_password=settings.amqp_bridge_password.get_secret_value(),
        publisher_password=settings.amqp_publisher_password.get_secret_value(),
        bridge_username=settings.amqp_bridge_username,
        publisher_username=settings.amqp_publisher_username,
    )
    deadline = time.monotonic() + settings.amqp_setup_wait_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            async with rabbitmq.Management(
                settings.rabbitmq_management_url,
                username=settings.rabbitmq_admin_username,
                password=settings.rabbitmq_admin_password.get_secret_value(),
                timeout=settings.rabbitmq_management_timeout,
            ) as api:
                await api.import_definitions(definitions)
            break
        except (httpx.TransportError, ConnectionError) as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"amqp-setup: RabbitMQ's management API at "
                    f"{settings.rabbitmq_management_url} did not answer within "
                    f"{settings.amqp_setup_wait_seconds:.0f} s: {exc!r}"
                ) from exc
            log.warning("RabbitMQ management API not answering yet (%r); retrying", exc)
            await asyncio.sleep(min(0.5 * attempt, 5.0))
    log.info(
        "RabbitMQ vhost %s: exchanges and service accounts %s, %s written",
        settings.rabbitmq_vhost,
        settings.amqp_bridge_username,
        settings.amqp_publisher_username,
    )


def write_mqtt_config(directory: Path, *, owner: str | None = None) -> None:
    """The broker's ``dynamic-security.json`` (roles, the admin account from this service's
    settings, the bridge's from ``INGEST_BRIDGE_MQTT_PASSWORD``, the variable the bridge
    reads; device clients already in the file are kept) and its ``acl``.

    The bridge's password is read here only, not kept in the service's settings: the service
    itself never needs it."""
    settings = get_settings()
    bridge_password = os.environ.get("INGEST_BRIDGE_MQTT_PASSWORD", "")
    if not bridge_password or (
        bridge_password == dynsec.DEV_BRIDGE_PASSWORD and not settings.allow_dev_defaults
    ):
        raise SystemExit("set INGEST_BRIDGE_MQTT_PASSWORD (the bridge's MQTT password)")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dynamic-security.json"
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    config = dynsec.merge_config(
        existing,
        admin_password=settings.mqtt_admin_password.get_secret_value(),
        bridge_password=bridge_password,
        admin_username=settings.mqtt_admin_username,
        prefixes=(settings.mqtt_topic_prefix,),
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config), encoding="utf-8")
    tmp.chmod(0o600)
    acl = directory / "acl"
    acl.write_text(dynsec.acl_file((settings.mqtt_topic_prefix,)), encoding="utf-8")
    if owner:
        # The directory too: the broker keeps its persistence file there and rewrites the
        # plugin's file through it (a fresh volume is root's; Mosquitto runs as its own user).
        uid, _, gid = owner.partition(":")
        for f in (tmp, acl, directory):
            os.chown(f, int(uid), int(gid or uid))
    tmp.replace(path)
    log.info("wrote %s and %s", path, acl)


if __name__ == "__main__":
    main()
