"""Who may do what on MQTT: the platform's Mosquitto dynamic-security accounts, in one place.

Every MQTT connection is authenticated (the broker runs Mosquitto's dynamic-security plugin
with ``allow_anonymous false``):

- **a device**: username = its id, password = its device token, and its client id must be its
  id (a device cannot take over another client's session). It may publish
  ``{prefix}devices/<id>/telemetry`` and ``{prefix}devices/<id>/config/reported``, and receive
  ``{prefix}devices/<id>/config`` (its retained desired configuration); it may subscribe to
  config topics only, and the broker delivers it no other device's messages. Nothing else.
- **the ingest bridge** (service account): its shared subscription to every device's telemetry
  and reported configuration; it publishes nothing.
- **device-management** (service account, the dynamic-security admin): the
  ``$CONTROL/dynamic-security/v1`` topic, through which it creates, re-keys, disables and
  deletes device clients, and publishing (retained) ``{prefix}devices/<id>/config``.

Why a device's own topics come from an ``acl_file`` pattern (``%u``) and not from a role per
device: Mosquitto 2.0's plugin has no per-client substitution, so own-topic rules would need one
role per device, and the plugin rewrites its whole JSON file on every change — a second object
per device doubled the cost of each credential change (measured 500 ms against 222 ms per
change at 5,000 devices on the development machine). Device clients share one ``device`` role
that refuses every subscription except to config topics; the plugin *defers* everything its
roles do not decide, and Mosquitto's ``acl_file`` check then allows a device exactly its own
topics. Service-account roles end in explicit denials, so the pattern never applies to them.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

#: The control topic device-management publishes commands to, and where answers come back.
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

DEVICE_ROLE = "device"
BRIDGE_ROLE = "ingest-bridge"
ADMIN_ROLE = "device-management"

#: Service account usernames (the services' settings default to them).
BRIDGE_USERNAME = "ingest-bridge"
ADMIN_USERNAME = "device-management"
#: Local development passwords of the service accounts; services refuse them unless
#: ``IOT_ALLOW_DEV_DEFAULTS`` is set, and compose/Kubernetes take real ones from secrets.
DEV_BRIDGE_PASSWORD = "dev-mqtt-ingest-bridge"
DEV_ADMIN_PASSWORD = "dev-mqtt-device-management"

#: The bridge's shared-subscription group (bridges in one group split the load).
SHARE_GROUP = "ingest-bridge"

#: Mosquitto's own hashing for dynamic-security clients (PBKDF2-SHA512, 12-byte salt).
_ITERATIONS = 101
_SALT_BYTES = 12


def hash_password(password: str, *, salt: bytes | None = None) -> dict[str, Any]:
    """A client's password in the plugin's file format (what the broker itself stores)."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": _ITERATIONS,
    }


def _acl(acltype: str, topic: str, *, allow: bool = True, priority: int = 1) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow, "priority": priority}


def _deny_rest(*acltypes: str) -> list[dict[str, Any]]:
    # "#" in the plugin's subscription check matches every filter ($share/…, $SYS/…) too.
    return [_acl(t, "#", allow=False, priority=0) for t in acltypes]


def device_role(prefixes: Sequence[str] = ("",)) -> dict[str, Any]:
    """The role every device client has: subscriptions to config topics only."""
    acls = [_acl("subscribePattern", f"{p}devices/+/config") for p in prefixes]
    return {
        "rolename": DEVICE_ROLE,
        "textdescription": "devices: subscribe to config topics only; own topics via acl_file",
        "acls": [*acls, *_deny_rest("subscribePattern")],
    }


def bridge_role(prefixes: Sequence[str] = ("",), share_group: str = SHARE_GROUP) -> dict[str, Any]:
    """The bridge: its shared subscription to telemetry and reported configs, nothing else."""
    acls: list[dict[str, Any]] = []
    for p in prefixes:
        for kind in ("telemetry", "config/reported"):
            acls.append(_acl("subscribePattern", f"$share/{share_group}/{p}devices/+/{kind}"))
            acls.append(_acl("publishClientReceive", f"{p}devices/+/{kind}"))
    return {
        "rolename": BRIDGE_ROLE,
        "textdescription": "ingest-bridge: its shared subscription only",
        "acls": [
            *acls,
            *_deny_rest("subscribePattern", "publishClientReceive", "publishClientSend"),
        ],
    }


def admin_role(prefixes: Sequence[str] = ("",)) -> dict[str, Any]:
    """device-management: the dynamic-security control topic and devices' desired configs."""
    control = "$CONTROL/dynamic-security/#"
    acls = [
        _acl("publishClientSend", control),
        _acl("publishClientReceive", control),
        _acl("subscribePattern", control),
        *(_acl("publishClientSend", f"{p}devices/+/config") for p in prefixes),
    ]
    return {
        "rolename": ADMIN_ROLE,
        "textdescription": "device-management: manages device clients, publishes configs",
        "acls": [
            *acls,
            *_deny_rest("subscribePattern", "publishClientReceive", "publishClientSend"),
        ],
    }


def acl_file(prefixes: Sequence[str] = ("",)) -> str:
    """The broker's ``acl_file``: each device its own topics (``%u`` = username = device id)."""
    lines = [
        "# Devices: their own topics only (%u is the username, which is the device id).",
        "# Service accounts are decided by their dynamic-security roles before this applies.",
    ]
    for p in prefixes:
        lines += [
            f"pattern write {p}devices/%u/telemetry",
            f"pattern write {p}devices/%u/config/reported",
            f"pattern read {p}devices/%u/config",
        ]
    return "\n".join(lines) + "\n"


def _client(username: str, password: str, role: str, **extra: Any) -> dict[str, Any]:
    return {"username": username, "roles": [{"rolename": role}], **extra, **hash_password(password)}


def device_client(device_id: str, password: str) -> dict[str, Any]:
    """A device client in the plugin's file format (for brokers provisioned before start)."""
    return _client(device_id, password, DEVICE_ROLE, clientid=device_id)


def merge_config(
    existing: dict[str, Any] | None,
    *,
    admin_password: str,
    bridge_password: str,
    prefixes: Sequence[str] = ("",),
    share_group: str = SHARE_GROUP,
    admin_username: str = ADMIN_USERNAME,
    bridge_username: str = BRIDGE_USERNAME,
    devices: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The plugin's configuration file with the platform's roles and service accounts.

    Device clients already in ``existing`` are kept (the broker created them at run time);
    the service accounts and roles are (re)written, so changing a service password in the
    environment takes effect at the broker's next start. ``devices`` adds (id, token) clients.
    """
    config = dict(existing or {})
    roles = [device_role(prefixes), bridge_role(prefixes, share_group), admin_role(prefixes)]
    ours = {r["rolename"] for r in roles}
    config["roles"] = [r for r in config.get("roles", []) if r.get("rolename") not in ours] + roles
    accounts = [
        _client(admin_username, admin_password, ADMIN_ROLE),
        _client(bridge_username, bridge_password, BRIDGE_ROLE),
        *(device_client(d, t) for d, t in devices),
    ]
    names = {c["username"] for c in accounts}
    kept = [c for c in config.get("clients", []) if c.get("username") not in names]
    config["clients"] = kept + accounts
    config.setdefault("groups", [])
    # Deny by default: what no role allows is deferred to the acl_file (devices' own topics)
    # and refused when that does not allow it either.
    config["defaultACLAccess"] = {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    return config


# --- control commands (what device-management sends on CONTROL_TOPIC) ---------------------


def create_device_command(device_id: str, password: str) -> dict[str, Any]:
    return {
        "command": "createClient",
        "username": device_id,
        "password": password,
        "clientid": device_id,
        "roles": [{"rolename": DEVICE_ROLE}],
    }


def set_password_command(device_id: str, password: str) -> dict[str, Any]:
    return {"command": "setClientPassword", "username": device_id, "password": password}


def enable_command(device_id: str, enabled: bool) -> dict[str, Any]:
    return {"command": "enableClient" if enabled else "disableClient", "username": device_id}


def delete_command(device_id: str) -> dict[str, Any]:
    return {"command": "deleteClient", "username": device_id}


#: Answers that mean the broker already is in the state a command asked for.
ALREADY_EXISTS = "Client already exists"
NOT_FOUND = "Client not found"
