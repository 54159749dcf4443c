"""Users: registration, login, token verification, listing, logout."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from prometheus_client import Counter
from redis.exceptions import RedisError

from iot_common.auth import Principal, publish_revocation
from iot_common.errors import (
    Conflict,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from signing import crud
from signing.api.deps import (
    AdminUser,
    BearerCredentials,
    ClientAddress,
    CurrentUser,
    OptionalUser,
    SessionDep,
    StateDep,
    verify_token,
)
from signing.schemas import (
    Credentials,
    ErrorResponse,
    TokenClaims,
    TokenResponse,
    UserCreate,
    UserPage,
    UserPublic,
    VerifyRequest,
)

log = logging.getLogger(__name__)

LOGINS = Counter("signing_logins_total", "Login attempts by outcome", ["outcome"])

router = APIRouter(prefix="/users", tags=["users"])

_WRONG_CREDENTIALS = "wrong email or password"


# FastAPI documents any HTTPBearer dependency as required; where a token is optional, the
# empty requirement ({}) added here says "or no authentication at all".
_AUTH_OPTIONAL: dict[str, Any] = {"security": [{}]}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


@router.post(
    "/add",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses=_errors(400, 401, 403, 409, 413, 422),
    summary="Create a user",
    openapi_extra=_AUTH_OPTIONAL,
    description=(
        "Anyone may register a **viewer** account (unless self-registration is switched off). "
        "Only an admin (Bearer token) may create operator or admin accounts. "
        "Emails are case-insensitive and unique (409 on a duplicate)."
    ),
)
async def add_user(
    body: UserCreate, state: StateDep, session: SessionDep, caller: OptionalUser
) -> UserPublic:
    is_admin = caller is not None and caller.is_admin
    if not is_admin:
        if body.role != "viewer":
            raise Forbidden("only an admin may create operator or admin users")
        if not state.settings.allow_self_registration:
            if caller is None:
                raise Unauthorized("self-registration is disabled; an admin must add users")
            raise Forbidden("self-registration is disabled; an admin must add users")
    s = state.settings
    if not s.password_min_length <= len(body.password) <= s.password_max_length:
        raise ValidationFailed(
            "request validation failed",
            details=[
                {
                    "field": "body.password",
                    "message": (
                        f"password must be {s.password_min_length} to "
                        f"{s.password_max_length} characters long"
                    ),
                    "type": "password_length",
                }
            ],
        )
    if await crud.get_user_by_email(session, body.email) is not None:
        raise Conflict("a user with this email already exists")
    password_hash = await state.passwords.hash(body.password)
    user = await crud.create_user(
        session, email=body.email, password_hash=password_hash, role=body.role
    )
    log.info("user %s created with role %s", user.id, user.role)
    return UserPublic.model_validate(user)


@router.post(
    "/auth",
    response_model=TokenResponse,
    responses=_errors(400, 401, 413, 422, 429),
    summary="Log in: exchange email and password for a token",
)
async def authenticate(
    body: Credentials, state: StateDep, session: SessionDep, address: ClientAddress
) -> TokenResponse:
    try:
        await state.limiter.check(address=address, email=body.email)
    except TooManyRequests as exc:
        LOGINS.labels("rate_limited").inc()
        log.warning("login refused by rate limit for address %s: %s", address, exc.message)
        raise
    except RedisError as exc:
        raise ServiceUnavailable("login temporarily unavailable") from exc
    user = await crud.get_user_by_email(session, body.email)
    ok = len(body.password) <= state.settings.password_max_length and await state.passwords.verify(
        user.password_hash if user else None, body.password
    )
    if user is None or not ok:
        LOGINS.labels("failed").inc()
        try:
            await state.limiter.failed(email=body.email)
        except RedisError:
            log.warning("could not count a failed login")
        raise Unauthorized(_WRONG_CREDENTIALS)
    if state.passwords.needs_rehash(user.password_hash):
        new_hash = await state.passwords.hash(body.password)
        await crud.update_password_hash(session, user.id, new_hash)
        log.info("password of user %s rehashed with current Argon2 parameters", user.id)
    issued = state.issuer.issue(user_id=str(user.id), email=user.email, role=user.role)
    LOGINS.labels("ok").inc()
    return TokenResponse(access_token=issued.token, expires_in=issued.expires_in)


@router.post(
    "/verify-token",
    response_model=TokenClaims,
    responses=_errors(400, 401, 413, 422),
    summary="Verify a token: its claims, or 401",
    openapi_extra=_AUTH_OPTIONAL,
    description=(
        'The token comes in the body (`{"token": …}`) or, without a body, as the '
        "`Authorization: Bearer` header. Expired, forged, revoked or malformed tokens get 401."
    ),
)
async def verify(
    state: StateDep,
    session: SessionDep,
    credentials: BearerCredentials,
    body: VerifyRequest | None = None,
) -> TokenClaims:
    if body is not None:
        token = body.token
    elif credentials is not None:
        token = credentials.credentials
    else:
        raise Unauthorized("no token given")
    principal = await verify_token(state, token, session)
    return _claims(principal)


def _claims(principal: Principal) -> TokenClaims:
    return TokenClaims(
        sub=principal.user_id,
        email=principal.email,
        role=principal.role,
        jti=principal.jti,
        exp=principal.exp,
    )


@router.get(
    "/",
    response_model=UserPage,
    responses=_errors(401, 403, 422),
    summary="List users (admin only), oldest first",
)
async def list_users(
    _admin: AdminUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> UserPage:
    users, total = await crud.list_users(session, limit=limit, offset=offset)
    return UserPage(
        items=[UserPublic.model_validate(u) for u in users], total=total, limit=limit, offset=offset
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_errors(401, 503),
    summary="Revoke the calling token everywhere",
    description=(
        "Records the token id in PostgreSQL and publishes it on the Redis revocation stream, "
        "so every service using iot_common refuses the token within a second."
    ),
)
async def logout(user: CurrentUser, state: StateDep, session: SessionDep) -> Response:
    expires_at = datetime.fromtimestamp(user.exp, tz=UTC)
    await crud.blacklist_token(session, jti=user.jti, user_id=user.user_id, expires_at=expires_at)
    try:
        await publish_revocation(
            state.redis, namespace=state.settings.redis_namespace, jti=user.jti, exp=user.exp
        )
    except RedisError as exc:
        # Recorded in PostgreSQL, but other services learn of revocations through Redis.
        log.error("could not publish revocation of %s: %s", user.jti, exc)
        raise ServiceUnavailable("token recorded as revoked, but not yet propagated") from exc
    log.info("token %s of user %s revoked", user.jti, user.user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
