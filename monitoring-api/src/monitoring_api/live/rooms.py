"""Socket.IO rooms: the one rule for their names and for who may join which.

Rooms (all on the default namespace):

- ``device:{device_id}`` — ``window`` updates and ``device`` events of one device; joining
  requires device-management to show the device to the caller.
- ``fleet:{owner}`` (``fleet:*`` for admins) — periodic ``fleet`` figures and ``device`` events
  of the caller's devices.
- ``alerts:{owner}:{min_severity}`` (``alerts:*:…`` for admins) — ``alert`` changes at or above
  the chosen severity; a client is in at most one of these.

A client asks with one of ``{"device_id": …}``, ``{"room": "fleet"}`` or
``{"alerts_min_severity": …}``; :func:`parse_join` turns that into a typed request once, and
everything after works on the type.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from iot_common.auth import Principal
from iot_common.events import SEVERITY_RANK
from monitoring_api.devices import DeviceDirectory
from monitoring_api.errors import JoinRefused

#: The owner key of admins: their rooms receive every owner's pushes.
EVERY_OWNER = "*"
_ALERTS_PREFIX = "alerts:"
_FLEET_PREFIX = "fleet:"
_EXPECTED = "expected one of device_id, room, alerts_min_severity"


def owner_key(principal: Principal) -> str:
    return EVERY_OWNER if principal.is_admin else principal.user_id


def device_room(device_id: str) -> str:
    return f"device:{device_id}"


def fleet_room(owner: str) -> str:
    return f"{_FLEET_PREFIX}{owner}"


def alert_room(owner: str, min_severity: str) -> str:
    return f"{_ALERTS_PREFIX}{owner}:{min_severity}"


def is_alert_room(room: str) -> bool:
    return room.startswith(_ALERTS_PREFIX)


def is_every_owner_room(room: str) -> bool:
    """A fleet room whose figures cover every device (an admin's)."""
    return room == fleet_room(EVERY_OWNER)


def alert_change_rooms(owner: str | None, severity: str) -> list[str]:
    """Every alert room an alert change of ``severity`` on ``owner``'s device is pushed to."""
    rank = SEVERITY_RANK.get(severity, 0)
    owners = (EVERY_OWNER, owner) if owner else (EVERY_OWNER,)
    return [alert_room(o, s) for s, r in SEVERITY_RANK.items() if r <= rank for o in owners]


def device_event_rooms(device_id: str, owner: str | None) -> list[str]:
    """Where a device's lifecycle event goes: its own room and the fleet rooms covering it."""
    rooms = [device_room(device_id), fleet_room(EVERY_OWNER)]
    if owner:
        rooms.append(fleet_room(owner))
    return rooms


# -- join requests --------------------------------------------------------------------------
_SEVERITIES = list(SEVERITY_RANK)
_BAD_SEVERITY = f"severity must be {', '.join(_SEVERITIES[:-1])} or {_SEVERITIES[-1]}"


class JoinDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device_id: uuid.UUID


class JoinFleet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    room: Literal["fleet"]


class JoinAlerts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    alerts_min_severity: str

    def __post_init__(self) -> None:
        if self.alerts_min_severity not in SEVERITY_RANK:
            raise ValueError(_BAD_SEVERITY)


JoinRequest = JoinDevice | JoinFleet | JoinAlerts

#: The payload's one key names the request type; the message is what a bad value gets.
_REQUESTS: dict[str, tuple[type[JoinRequest], str]] = {
    "device_id": (JoinDevice, "device_id is not a device id"),
    "room": (JoinFleet, "unknown room"),
    "alerts_min_severity": (JoinAlerts, _BAD_SEVERITY),
}


def parse_join(data: Any) -> JoinRequest:
    """The typed request a ``join``/``leave`` payload asks for (JoinRefused if none)."""
    if not isinstance(data, dict) or len(data) != 1:
        raise JoinRefused(_EXPECTED)
    (key,) = data
    kind = _REQUESTS.get(key) if isinstance(key, str) else None
    if kind is None:
        raise JoinRefused(_EXPECTED)
    cls, bad_value = kind
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError:
        raise JoinRefused(bad_value) from None


@dataclass(frozen=True, slots=True)
class Member:
    """The verified caller of a Socket.IO session and the token device-management sees."""

    principal: Principal
    token: str

    @property
    def owner(self) -> str:
        return owner_key(self.principal)


def room_of(request: JoinRequest, member: Member) -> str:
    """The room a request names for this caller (leaving needs no more than this)."""
    match request:
        case JoinDevice(device_id=device_id):
            return device_room(str(device_id))
        case JoinFleet():
            return fleet_room(member.owner)
        case JoinAlerts(alerts_min_severity=severity):
            return alert_room(member.owner, severity)


async def may_join(request: JoinRequest, member: Member, *, directory: DeviceDirectory) -> str:
    """The room to enter; JoinRefused when the caller may not (a device they cannot see).

    Fleet and alert rooms are per owner, so naming one is permission enough; a device room
    needs device-management to show the device to the caller (404 there = "not found" here,
    as device-management itself answers).
    """
    room = room_of(request, member)
    if (
        isinstance(request, JoinDevice)
        and await directory.get_device(member.token, str(request.device_id)) is None
    ):
        raise JoinRefused("device not found")
    return room
