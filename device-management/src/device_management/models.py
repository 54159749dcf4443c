"""ORM models: devices, their event history, and the transactional outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSONB,
        datetime: DateTime(timezone=True),
    }


class Device(Base):
    __tablename__ = "t_devices"
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_devices_owner_name"),
        Index("ix_devices_owner_created", "owner_id", "created_at", "id"),
        Index("ix_devices_type", "type"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner_id: Mapped[uuid.UUID]
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    active: Mapped[bool]
    config_version: Mapped[int]
    #: The config version the device last reported it applied, and when.
    config_reported_version: Mapped[int | None]
    config_reported_at: Mapped[datetime | None]
    #: sha256 hex of the device token; the token itself is never stored.
    token_hash: Mapped[str | None] = mapped_column(String(64))
    credentials_rotated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DeviceEventRecord(Base):
    """One entry of a device's history: a lifecycle change or a custom event."""

    __tablename__ = "t_device_events"
    __table_args__ = (Index("ix_device_events_device_ts", "device_id", "timestamp"),)

    #: The event id, also the RabbitMQ ``message_id``.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    device_id: Mapped[uuid.UUID]
    owner_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]]
    timestamp: Mapped[datetime]


class OutboxMessage(Base):
    """An event committed with its change and waiting for the relay to publish it.

    ``id`` orders publication: a device's changes hold its row lock until commit, so the ids of
    one device's events follow its commit order.
    """

    __tablename__ = "t_outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unsent",
            "id",
            postgresql_where="sent_at IS NULL",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    device_id: Mapped[uuid.UUID]
    routing_key: Mapped[str] = mapped_column(String(160))
    #: The exact bytes published (the ``DeviceEvent`` JSON).
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)


class BrokerChange(Base):
    """A device credential change waiting to be applied to one broker's accounts.

    Written in the same transaction as the change (a new token, (de)activation, deletion), so
    a broker that is down misses nothing: its provisioner applies the rows in id order once the
    broker answers, and deletes each as soon as it is applied (with it the sealed token).
    """

    __tablename__ = "t_broker_changes"
    __table_args__ = (
        Index("ix_broker_changes_pending", "target", "id", postgresql_where="failed_at IS NULL"),
        Index("ix_broker_changes_device", "device_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    #: Which broker: ``mqtt`` (Mosquitto dynamic security) or ``amqp`` (RabbitMQ users).
    target: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[uuid.UUID]
    #: ``credential`` (a new token), ``active`` (enable/disable) or ``delete``.
    action: Mapped[str] = mapped_column(String(16))
    #: The new token, sealed (AES-GCM) for Mosquitto, which wants it in clear over its control
    #: topic; RabbitMQ gets a salted hash instead. NULL for the other actions.
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The device's active flag as of this change.
    active: Mapped[bool]
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    #: Set (and the secret wiped) when the broker refused the change outright.
    failed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
