"""ORM models: users and revoked tokens (SQLAlchemy 2, async)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("admin", "operator", "viewer")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "t_users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="ck_t_users_role"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: Stored lower-cased, so uniqueness is case-insensitive.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    role: Mapped[str] = mapped_column(String(16), default="viewer", server_default="viewer")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class BlacklistToken(Base):
    """A revoked token, by ``jti``, kept until the token would have expired anyway."""

    __tablename__ = "t_blacklist_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    blacklisted_on: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class SigningKeyRecord(Base):
    """One RSA key of the key ring: it signs from ``active_from`` until ``retired_at``.

    Published in JWKS from creation (before it signs, so verifiers know it) until the longest
    token lifetime after ``retired_at`` (after which every token it signed has expired).
    """

    __tablename__ = "t_signing_keys"
    __table_args__ = (
        # At most one key is the newest (not yet followed by another).
        Index(
            "uq_t_signing_keys_newest",
            text("(retired_at IS NULL)"),
            unique=True,
            postgresql_where=text("retired_at IS NULL"),
        ),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: PKCS#8 PEM encrypted with the key passphrase (``SIGNING_KEY_PASSPHRASE``); dropped once
    #: the key no longer signs, so an old backup of the table cannot mint tokens.
    private_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    public_jwk: Mapped[dict[str, str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    active_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
