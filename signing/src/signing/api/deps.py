"""Request dependencies: state, database session, the calling user."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from iot_common import redis_keys
from iot_common.auth import Principal
from iot_common.errors import Forbidden, Unauthorized
from signing import crud
from signing.state import AppState

log = logging.getLogger(__name__)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.signing
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]

# auto_error=False: a missing or non-Bearer header becomes our own 401, in the common shape.
_bearer = HTTPBearer(auto_error=False, description="A user token from POST /users/auth")


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def verify_token(state: AppState, token: str, session: AsyncSession) -> Principal:
    """Verify signature and claims locally, then check revocation at its source of truth."""
    principal = await state.verifier.verify(token)
    try:
        revoked = bool(
            await state.redis.exists(
                redis_keys.revoked_token(state.settings.redis_namespace, principal.jti)
            )
        )
    except RedisError:
        log.warning("redis unavailable for revocation check; asking PostgreSQL")
        revoked = await crud.is_blacklisted(session, principal.jti)
    if revoked:
        raise Unauthorized("token revoked")
    return principal


async def optional_user(
    state: StateDep,
    session: SessionDep,
    credentials: BearerCredentials,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal | None:
    if authorization is None:
        return None
    if credentials is None:
        raise Unauthorized("missing bearer token")
    return await verify_token(state, credentials.credentials, session)


OptionalUser = Annotated[Principal | None, Depends(optional_user)]


async def current_user(user: OptionalUser) -> Principal:
    if user is None:
        raise Unauthorized("missing bearer token")
    return user


CurrentUser = Annotated[Principal, Depends(current_user)]


async def admin_user(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise Forbidden("admin role required")
    return user


AdminUser = Annotated[Principal, Depends(admin_user)]


def client_address(request: Request) -> str:
    # uvicorn's proxy-headers support has already applied a trusted X-Forwarded-For here.
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]
