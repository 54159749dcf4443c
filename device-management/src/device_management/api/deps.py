"""Request dependencies: database session, the calling user, app collaborators."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from device_management.broker_accounts import BrokerAccounts
from device_management.cache import DeviceCache
from device_management.config import DeviceManagementSettings
from device_management.outbox import OutboxRelay
from iot_common.auth import JWTVerifier, Principal
from iot_common.errors import Forbidden, ServiceUnavailable, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="User token issued by the signing service")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    maker = cast(async_sessionmaker[AsyncSession], request.app.state.sessionmaker)
    async with maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    maker = cast(async_sessionmaker[AsyncSession], request.app.state.read_sessionmaker)
    async with maker() as session:
        yield session


#: Autocommit session for endpoints that read with a single query.
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]


# Dependencies are ``async def`` so FastAPI calls them inline instead of in its thread pool.
async def get_settings_dep(request: Request) -> DeviceManagementSettings:
    return cast(DeviceManagementSettings, request.app.state.settings)


SettingsDep = Annotated[DeviceManagementSettings, Depends(get_settings_dep)]


async def get_cache(request: Request) -> DeviceCache:
    return cast(DeviceCache, request.app.state.cache)


CacheDep = Annotated[DeviceCache, Depends(get_cache)]


async def get_relay(request: Request) -> OutboxRelay | None:
    return cast(OutboxRelay | None, request.app.state.relay)


RelayDep = Annotated[OutboxRelay | None, Depends(get_relay)]


async def get_accounts(request: Request) -> BrokerAccounts:
    return cast(BrokerAccounts, request.app.state.accounts)


#: The devices' broker accounts (credential changes for MQTT and AMQP).
AccountsDep = Annotated[BrokerAccounts, Depends(get_accounts)]


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The verified caller; revoked, expired or foreign tokens are a 401."""
    if credentials is None:
        raise Unauthorized("missing bearer token")
    verifier = cast(JWTVerifier | None, request.app.state.verifier)
    if verifier is None:
        raise ServiceUnavailable("token verification is not ready")
    principal = await verifier.verify(credentials.credentials)
    try:
        uuid.UUID(principal.user_id)
    except ValueError as exc:
        raise Unauthorized("token subject is not a user id") from exc
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


async def writer(user: CurrentUser) -> Principal:
    """The caller, if allowed to change devices (admins and operators; viewers read only)."""
    if not user.can_write:
        raise Forbidden("viewers have read-only access")
    return user


WriterUser = Annotated[Principal, Depends(writer)]
