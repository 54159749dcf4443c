"""Database operations on users and revoked tokens."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from iot_common.errors import Conflict
from signing.models import BlacklistToken, User


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email.lower()))


async def create_user(session: AsyncSession, *, email: str, password_hash: str, role: str) -> User:
    user = User(
        id=uuid.uuid4(),
        email=email.lower(),
        password_hash=password_hash,
        role=role,
        is_admin=role == "admin",
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict("a user with this email already exists") from exc
    await session.refresh(user)
    return user


async def create_user_if_absent(
    session: AsyncSession, *, email: str, password_hash: str, role: str
) -> bool:
    """Create the user unless the email exists (one statement either way); True if created."""
    stmt = (
        insert(User)
        .values(
            id=uuid.uuid4(),
            email=email.lower(),
            password_hash=password_hash,
            role=role,
            is_admin=role == "admin",
        )
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User.id)
    )
    created = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return created is not None


async def ensure_admin(session: AsyncSession, *, email: str, password_hash: str) -> bool:
    """Create the bootstrap admin unless that email exists; True when it was created."""
    return await create_user_if_absent(
        session, email=email, password_hash=password_hash, role="admin"
    )


async def update_password_hash(session: AsyncSession, user_id: uuid.UUID, new_hash: str) -> None:
    await session.execute(update(User).where(User.id == user_id).values(password_hash=new_hash))
    await session.commit()


async def list_users(
    session: AsyncSession, *, limit: int, offset: int
) -> tuple[Sequence[User], int]:
    total = await session.scalar(select(func.count()).select_from(User)) or 0
    rows = await session.scalars(
        select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    return rows.all(), total


async def blacklist_token(
    session: AsyncSession, *, jti: str, user_id: str | None, expires_at: datetime
) -> None:
    """Record a revoked jti (idempotent) and drop rows whose tokens have expired anyway."""
    uid: uuid.UUID | None
    try:
        uid = uuid.UUID(user_id) if user_id else None
    except ValueError:
        uid = None
    await session.execute(
        insert(BlacklistToken)
        .values(jti=jti, user_id=uid, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=[BlacklistToken.jti])
    )
    await session.execute(
        delete(BlacklistToken).where(BlacklistToken.expires_at < datetime.now(UTC))
    )
    await session.commit()


async def is_blacklisted(session: AsyncSession, jti: str) -> bool:
    found = await session.scalar(select(BlacklistToken.id).where(BlacklistToken.jti == jti))
    return found is not None


async def active_revocations(session: AsyncSession) -> list[tuple[str, float]]:
    """(jti, expiry as epoch seconds) of every revoked token that has not expired yet."""
    rows = await session.execute(
        select(BlacklistToken.jti, BlacklistToken.expires_at).where(
            BlacklistToken.expires_at > datetime.now(UTC)
        )
    )
    return [(jti, expires_at.timestamp()) for jti, expires_at in rows.all()]
