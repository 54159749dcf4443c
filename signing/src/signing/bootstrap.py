"""The bootstrap admin user, created from settings at start and by ``signing migrate``."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from signing import crud
from signing.config import SigningSettings
from signing.security import Passwords

log = logging.getLogger(__name__)


async def ensure_bootstrap_admin(
    settings: SigningSettings,
    sessions: async_sessionmaker[AsyncSession],
    passwords: Passwords,
) -> None:
    email = settings.bootstrap_admin_email.lower()
    async with sessions() as session:
        if await crud.get_user_by_email(session, email) is not None:
            return
        password_hash = await passwords.hash(settings.bootstrap_admin_password.get_secret_value())
        if await crud.ensure_admin(session, email=email, password_hash=password_hash):
            log.info("created bootstrap admin %s", email)
