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
    RegistrationAccepted,
    TokenClaims,
    TokenResponse,
    UserCreate,
    UserPage,
    UserPublic,
    VerifyRequest,
)
from signing.state import AppState

log = logging.getLogger(__name__)

LOGINS = Counter("signing_logins_total", "Login attempts by outcome", ["outcome"])
REGISTRATIONS = Counter(
    "signing_self_registrations_total", "Self-registrations by outcome", ["outcome"]
)

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
    response_model=UserPublic | RegistrationAccepted,
    responses={
        201: {"model": UserPublic, "description": "Created by an admin"},
        202: {"model": RegistrationAccepted, "description": "Self-registration accepted"},
        **_errors(400, 401, 403, 409, 413, 422, 429, 503),
    },
    summary="Create a user",
    openapi_extra=_AUTH_OPTIONAL,
    description=(
        "Anyone may register a **viewer** account (unless self-registration is switched off): "
        "the answer is 202 with the same body whether or not the email was already "
        "registered, so it cannot be used to find out who has an account; self-registrations "
        "are limited per client address. Only an admin (Bearer token) may create operator or "
        "admin accounts; an admin gets 201 with the user, or 409 on a duplicate "
        "(emails are case-insensitive)."
    ),
)
async def add_user(
    body: UserCreate,
    state: StateDep,
    session: SessionDep,
    caller: OptionalUser,
    address: ClientAddress,
    response: Response,
) -> UserPublic | RegistrationAccepted:
    is_admin = caller is not None and caller.is_admin
    if not is_admin:
        if body.role != "viewer":
            raise Forbidden("only an admin may create operator or admin users")
        if not state.settings.allow_self_registration:
            if caller is None:
                raise Unauthorized("self-registration is disabled; an admin must add users")
            raise Forbidden("self-registration is disabled; an admin must add users")
        await _count_registration(state, address)
    _check_password_length(state, body.password)
    password_hash = await state.passwords.hash(body.password, registration=not is_admin)
    if caller is not None and is_admin:
        user = await crud.create_user(
            session, email=body.email, password_hash=password_hash, role=body.role
        )
        log.info("user %s created with role %s by admin %s", user.id, user.role, caller.user_id)
        return UserPublic.model_validate(user)
    # Hashed and inserted (or not) alike for a new and a taken email: the same answer after
    # the same work, so neither the status, the body nor the time says which emails exist.
    created = await crud.create_user_if_absent(
        session, email=body.email, password_hash=password_hash, role="viewer"
    )
    REGISTRATIONS.labels("created" if created else "email_taken").inc()
    response.status_code = status.HTTP_202_ACCEPTED
    return RegistrationAccepted()


async def _count_registration(state: AppState, address: str) -> None:
    try:
        await state.registrations.hit(
            address, message="too many registrations from this address; try again later"
        )
    except TooManyRequests:
        REGISTRATIONS.labels("rate_limited").inc()
        raise
    except RedisError as exc:
        raise ServiceUnavailable("registration temporarily unavailable") from exc


def _check_password_length(state: AppState, password: str) -> None:
    s = state.settings
    if not s.password_min_length <= len(password) <= s.password_max_length:
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
        raise Unauthorized(_WRONG_CREDENTIALS)
    try:
        await state.limiter.succeeded(address=address, email=body.email)
    except RedisError:
        log.warning("could not clear the failed-login count of a successful login")
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
