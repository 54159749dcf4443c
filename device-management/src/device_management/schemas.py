"""Request and response bodies of the device API, with the input limits stated in the schema."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from device_management.events import CUSTOM_PREFIX
from iot_common.device_config import DeviceConfig

MAX_NAME_LENGTH = 128
MAX_TYPE_LENGTH = 64
#: Serialized size limits (UTF-8 JSON bytes).
MAX_CONFIG_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_PAYLOAD_DEPTH = 16
DEVICE_TYPE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,63}$"
_INT64 = 2**63


def printable(value: str | None) -> str | None:
    """Refuse what PostgreSQL cannot store or a UI cannot show: control characters, surrogates."""
    if value is None:
        return None
    for ch in value:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            raise ValueError("must not contain control characters")
    return value


DeviceName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[^\x00-\x1f\x7f]+$",
    ),
    AfterValidator(printable),
    Field(
        description=f"1–{MAX_NAME_LENGTH} printable characters, unique per owner.",
        examples=["boiler-room-3"],
    ),
]
DeviceType = Annotated[
    str,
    Field(
        pattern=DEVICE_TYPE_PATTERN,
        max_length=MAX_TYPE_LENGTH,
        description=f"1–{MAX_TYPE_LENGTH} characters: letters, digits, _ . : -",
        examples=["thermometer"],
    ),
]


def check_json_value(value: Any, path: str, *, max_depth: int) -> None:
    """Raise ``ValueError`` naming the path of anything JSONB or msgspec could not hold."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{where}: nested deeper than {max_depth} levels")
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not -_INT64 <= item < _INT64:
                raise ValueError(f"{where}: integer out of 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where}: must be a finite number")
        elif isinstance(item, str):
            _check_str(item, where)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_str(str(key), f"{where}.{key}")
                stack.append((sub, f"{where}.{key}", depth + 1))
        elif isinstance(item, list | tuple):
            for i, sub in enumerate(item):
                stack.append((sub, f"{where}.{i}", depth + 1))


def _check_str(value: str, where: str) -> None:
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError(f"{where}: NUL characters and lone surrogates are not allowed")


def check_json_object(value: dict[str, Any], path: str) -> None:
    """The bounds of the free-form objects users send: event payloads, config settings."""
    check_json_value(value, path, max_depth=MAX_PAYLOAD_DEPTH)
    if len(orjson.dumps(value)) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{path} exceeds {MAX_PAYLOAD_BYTES} bytes")


def _check_config(config: DeviceConfig) -> DeviceConfig:
    dumped = config.model_dump(mode="python")
    check_json_object(dumped.pop("settings"), "config.settings")
    check_json_value(dumped, "config", max_depth=8)
    if len(orjson.dumps(dumped)) > MAX_CONFIG_BYTES:
        raise ValueError(f"config exceeds {MAX_CONFIG_BYTES} bytes")
    return config


ValidConfig = Annotated[
    DeviceConfig,
    AfterValidator(_check_config),
    Field(
        description=(
            "Metric definitions and alert rules (at most 64 metrics and 64 rules, finite "
            f"numbers, at most {MAX_CONFIG_BYTES} bytes as JSON), interpreted by the platform; "
            "and `settings`, the owner's free-form JSON object for the device (at most "
            f"{MAX_PAYLOAD_BYTES} bytes, nested at most {MAX_PAYLOAD_DEPTH} levels), delivered "
            "to it as it is. Every change bumps `config_version`."
        )
    ),
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceCreate(_Input):
    name: DeviceName
    type: DeviceType
    config: ValidConfig = Field(default_factory=DeviceConfig)
    active: bool = True
    owner_id: uuid.UUID | None = Field(
        default=None, description="Owner of the new device; only admins may name someone else."
    )


class DeviceUpdate(_Input):
    """Fields to change; omitted fields keep their value. A config change bumps config_version."""

    name: DeviceName | None = None
    type: DeviceType | None = None
    config: ValidConfig | None = None
    active: bool | None = None


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    NEVER_SEEN = "never_seen"


class ConfigStatus(BaseModel):
    """Whether the device runs the configuration its owner set."""

    desired_version: int = Field(description="The current configuration's version.")
    reported_version: int | None = Field(
        description="The version the device last reported it applied (null: never reported)."
    )
    reported_at: datetime | None
    in_sync: bool = Field(description="The device reported the desired version.")


class DevicePublic(BaseModel):
    id: uuid.UUID
    name: str
    type: str
    config: DeviceConfig
    active: bool
    status: DeviceStatus
    last_seen: datetime | None
    owner_id: uuid.UUID
    config_version: int
    config_status: ConfigStatus
    has_credentials: bool
    created_at: datetime
    updated_at: datetime


class DeviceList(BaseModel):
    items: list[DevicePublic]
    total: int
    limit: int
    offset: int


class StatusPublic(BaseModel):
    device_id: uuid.UUID
    status: DeviceStatus
    last_seen: datetime | None
    offline_after_seconds: float


CUSTOM_EVENT_TYPE_PATTERN = r"^(device\.event\.)?[a-z0-9_][a-z0-9_\-]{0,63}$"


class CustomEventCreate(_Input):
    """A custom event; ``event_type`` is the field events are read back with."""

    event_type: str = Field(
        pattern=CUSTOM_EVENT_TYPE_PATTERN,
        max_length=len(CUSTOM_PREFIX) + 64,
        description=(
            "Event type: `door_opened`, or `device.event.door_opened` as events are read back "
            "(the same event). Published with routing key device.event.<type>."
        ),
        examples=["door_opened"],
    )
    type: str | None = Field(
        default=None,
        deprecated=True,
        pattern=CUSTOM_EVENT_TYPE_PATTERN,
        max_length=len(CUSTOM_PREFIX) + 64,
        description="Deprecated alias of `event_type` (its first name); send `event_type`.",
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            f"Any JSON object: at most {MAX_PAYLOAD_BYTES} bytes, nested at most "
            f"{MAX_PAYLOAD_DEPTH} levels, finite numbers, 64-bit integers."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_type(cls, data: Any) -> Any:
        # Clients written against the first version send `type`: it fills `event_type`.
        if isinstance(data, dict) and data.get("type") is not None:
            data = dict(data)
            legacy = data.pop("type")
            if data.setdefault("event_type", legacy) != legacy:
                raise ValueError("give event_type only: type is its deprecated alias")
        return data

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_object(value, "payload")
        return value

    @property
    def routing_type(self) -> str:
        """The full event type, as published and read back."""
        if self.event_type.startswith(CUSTOM_PREFIX):
            return self.event_type
        return CUSTOM_PREFIX + self.event_type


class EventPublic(BaseModel):
    id: uuid.UUID
    device_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    timestamp: datetime


class EventList(BaseModel):
    items: list[EventPublic]
    total: int
    limit: int
    offset: int


class DeviceCredentials(BaseModel):
    device_id: uuid.UUID
    token: str = Field(description="The device token; shown once, only its hash is stored.")
    token_type: str = "device"
    rotated_at: datetime
    provisioned: bool = Field(
        default=True,
        description="Whether the MQTT and AMQP brokers already accept the token (false: a "
        "broker is unreachable; the token works there as soon as it is back).",
    )


class InternalDevice(BaseModel):
    """What the ingest path needs to know about a device (cache-miss fallback)."""

    id: uuid.UUID
    active: bool
    owner_id: uuid.UUID
    token_hash: str
    config_version: int
    type: str


class Health(BaseModel):
    status: str
    service: str = "device-management"
    database: str
    redis: str
    rabbitmq: str
    outbox_pending: int | None = None


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    type: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    """The platform's one error shape (``iot_common.errors.error_body``)."""

    error: ErrorInfo
