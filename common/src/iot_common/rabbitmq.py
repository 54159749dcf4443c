"""Who may do what on AMQP: the platform's RabbitMQ accounts and permissions, in one place.

Every AMQP connection is a RabbitMQ user of the platform's virtual host, with least privilege:

- **a device**: username = its id, password = its device token (as on HTTP and MQTT). It may
  write only to the telemetry exchange, and only with its own routing key ``device.<id>``
  (a topic permission, ``{username}`` expanded by the broker); it may configure nothing and
  read nothing. A message it publishes with a ``user_id`` property other than its own name is
  refused by the broker (RabbitMQ validates ``user_id`` against the connection's user; only an
  ``impersonator`` may set another, and no account of the platform has that tag).
- **the ingest bridge** (service account): configures, binds and consumes its own queues only;
  reads the telemetry and device-events exchanges; writes to no exchange.
- **device-management** (service account, publisher): configures and writes its device-events
  exchange only; reads nothing.
- **the operator / provisioning account** (``administrator`` tag, used only on the management
  HTTP API): device-management creates, re-keys, (un)grants and deletes device users with it.

Why the bridge checks ``user_id`` as well as the broker's topic permissions: the routing key is
what a publisher chooses, the ``user_id`` is what the broker proves. The bridge stores a reading
only when its ``user_id`` names a user that may write the device of the routing key; anything
else (no ``user_id``, another user's) is dead-lettered ``unauthorized`` — so a mis-granted
permission, a legacy publisher on a shared account, or a gateway writing for a device that is
not its own never becomes a stored reading.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

#: Routing keys of telemetry: ``device.<device id>``.
ROUTING_PREFIX = "device."

#: Service account usernames (the services' settings default to them).
BRIDGE_USERNAME = "ingest-bridge"
PUBLISHER_USERNAME = "device-management"
#: Local development passwords of the service accounts; services refuse them unless
#: ``IOT_ALLOW_DEV_DEFAULTS`` is set, and compose/Kubernetes take real ones from secrets.
DEV_BRIDGE_PASSWORD = "dev-amqp-ingest-bridge"
DEV_PUBLISHER_PASSWORD = "dev-amqp-device-management"

#: RabbitMQ's default password hashing (what the broker itself stores).
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"

#: A permission regex that matches no resource.
NOTHING = "^$"


def routing_key(device_id: str) -> str:
    return ROUTING_PREFIX + device_id


def device_from_routing_key(key: str) -> str | None:
    """``device.{device_id}`` → device id (None for any other key)."""
    if key.startswith(ROUTING_PREFIX) and len(key) > len(ROUTING_PREFIX):
        did = key[len(ROUTING_PREFIX) :]
        if "." not in did:
            return did
    return None


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """``rabbit_password_hashing_sha256``: base64(salt ‖ sha256(salt ‖ password))."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def vhost_of(url: str) -> str:
    """The virtual host an ``amqp://`` URL names (``/`` when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _only(names: Iterable[str]) -> str:
    names = sorted(set(names))
    return "^(" + "|".join(re.escape(n) for n in names) + ")$" if names else NOTHING


@dataclass(frozen=True, slots=True)
class Permissions:
    """A user's permissions in one virtual host (regexes over exchange and queue names)."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True, slots=True)
class TopicPermissions:
    """A user's routing keys on one topic exchange (``{username}`` is expanded by the broker)."""

    exchange: str
    write: str
    read: str


def device_permissions(telemetry_exchange: str) -> tuple[Permissions, TopicPermissions]:
    """A device: publish to the telemetry exchange with its own routing key, nothing else."""
    return (
        Permissions(configure=NOTHING, write=_only([telemetry_exchange]), read=NOTHING),
        TopicPermissions(
            exchange=telemetry_exchange,
            write="^" + re.escape(ROUTING_PREFIX) + "{username}$",
            read=NOTHING,
        ),
    )


def bridge_permissions(*, exchanges: Sequence[str], queues: Sequence[str]) -> Permissions:
    """The bridge: its own queues (declare, bind, consume), reading the exchanges they bind."""
    return Permissions(
        configure=_only(queues), write=_only(queues), read=_only([*exchanges, *queues])
    )


def publisher_permissions(events_exchange: str) -> Permissions:
    """device-management: declares and publishes to its device-events exchange only."""
    return Permissions(
        configure=_only([events_exchange]), write=_only([events_exchange]), read=NOTHING
    )


def definitions(
    *,
    vhost: str,
    telemetry_exchange: str,
    events_exchange: str,
    bridge_queues: Sequence[str],
    bridge_password: str,
    publisher_password: str,
    bridge_username: str = BRIDGE_USERNAME,
    publisher_username: str = PUBLISHER_USERNAME,
) -> dict[str, Any]:
    """The platform's part of the broker's definitions: vhost, exchanges, service accounts.

    Imported through the management API (``POST /api/definitions``, which adds to what the
    broker has and overwrites the accounts it names), so re-running it after a password change
    in the environment re-keys the service accounts; device users are not touched.
    """
    accounts = [
        (
            bridge_username,
            bridge_password,
            bridge_permissions(
                exchanges=[telemetry_exchange, events_exchange], queues=bridge_queues
            ),
        ),
        (publisher_username, publisher_password, publisher_permissions(events_exchange)),
    ]
    return {
        "vhosts": [{"name": vhost}],
        "users": [
            {
                "name": name,
                "password_hash": password_hash(password),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": "",
            }
            for name, password, _ in accounts
        ],
        "permissions": [
            {"user": name, "vhost": vhost, **asdict(perms)} for name, _, perms in accounts
        ],
        "exchanges": [
            {
                "name": name,
                "vhost": vhost,
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for name in (telemetry_exchange, events_exchange)
        ],
    }


def device_definitions(
    vhost: str, telemetry_exchange: str, users: Iterable[tuple[str, str, bool]]
) -> dict[str, Any]:
    """Device users (name, password hash, granted) in definitions form, for one bulk import."""
    perms, topic = device_permissions(telemetry_exchange)
    out: dict[str, list[dict[str, Any]]] = {"users": [], "permissions": [], "topic_permissions": []}
    for name, hashed, granted in users:
        out["users"].append(
            {
                "name": name,
                "password_hash": hashed,
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": "",
            }
        )
        if granted:
            out["permissions"].append({"user": name, "vhost": vhost, **asdict(perms)})
            out["topic_permissions"].append({"user": name, "vhost": vhost, **asdict(topic)})
    return out


class ManagementError(Exception):
    """The management API refused a request (not an outage)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Management:
    """A small client of RabbitMQ's management HTTP API (what device-management and the setup
    of a local stack or a test session use to keep accounts)."""

    def __init__(
        self,
        url: str,
        *,
        username: str,
        password: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/api",
            auth=(username, password),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Management:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self, method: str, path: str, *, json: Any = None, missing_ok: bool = False
    ) -> httpx.Response:
        response = await self._http.request(method, path, json=json)
        if response.status_code == 404 and missing_ok:
            return response
        if response.status_code >= 500:
            # The broker (or a proxy in front of it) is not answering: an outage, retried.
            raise ConnectionError(f"RabbitMQ management {method} {path}: {response.status_code}")
        if response.status_code >= 400:
            try:
                reason = str(response.json().get("reason", response.text))
            except ValueError:
                reason = response.text
            raise ManagementError(response.status_code, reason[:300])
        return response

    @staticmethod
    def _q(name: str) -> str:
        return quote(name, safe="")

    async def import_definitions(self, definitions: dict[str, Any]) -> None:
        await self._call("POST", "/definitions", json=definitions)

    async def put_vhost(self, vhost: str) -> None:
        await self._call("PUT", f"/vhosts/{self._q(vhost)}")

    async def delete_vhost(self, vhost: str) -> None:
        await self._call("DELETE", f"/vhosts/{self._q(vhost)}", missing_ok=True)

    async def vhost_users(self, vhost: str) -> list[str]:
        """Users with permissions in ``vhost``."""
        response = await self._call("GET", f"/vhosts/{self._q(vhost)}/permissions")
        return [str(p["user"]) for p in response.json()]

    async def user_exists(self, name: str) -> bool:
        response = await self._call("GET", f"/users/{self._q(name)}", missing_ok=True)
        return response.status_code != 404

    async def delete_users(self, names: Sequence[str]) -> None:
        """Delete users (absent ones are skipped); the broker closes their connections."""
        if names:
            await self._call("POST", "/users/bulk-delete", json={"users": list(names)})

    async def grant(
        self, vhost: str, user: str, perms: Permissions, topic: TopicPermissions | None = None
    ) -> None:
        await self._call(
            "PUT", f"/permissions/{self._q(vhost)}/{self._q(user)}", json=asdict(perms)
        )
        if topic is not None:
            await self._call(
                "PUT", f"/topic-permissions/{self._q(vhost)}/{self._q(user)}", json=asdict(topic)
            )

    async def revoke(self, vhost: str, user: str) -> None:
        """Take away the user's permissions in ``vhost`` (it can no longer open it)."""
        for kind in ("permissions", "topic-permissions"):
            await self._call("DELETE", f"/{kind}/{self._q(vhost)}/{self._q(user)}", missing_ok=True)

    async def close_connections(self, user: str) -> None:
        """Close every connection the user has open (a changed password or permission does not
        reach connections already open: the broker checks them at connect time and caches)."""
        await self._call("DELETE", f"/connections/username/{self._q(user)}", missing_ok=True)
