"""What the app builds in its lifespan and the request handlers share."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from iot_common.auth import JWTVerifier
from signing.config import SigningSettings
from signing.keys import KeyRing
from signing.ratelimit import FixedWindowLimit, LoginLimiter
from signing.security import Passwords, TokenIssuer


@dataclass(slots=True)
class AppState:
    settings: SigningSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    passwords: Passwords
    keys: KeyRing
    issuer: TokenIssuer
    verifier: JWTVerifier
    limiter: LoginLimiter
    registrations: FixedWindowLimit
