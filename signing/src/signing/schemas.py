"""Request and response bodies of the signing API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field

Role = Literal["admin", "operator", "viewer"]

#: Hard cap on any password the API accepts; the configured maximum is checked on top of it.
PASSWORD_HARD_MAX = 1024


def _utf8(value: str) -> str:
    # JSON allows lone surrogates ("\ud800"), which cannot be stored or hashed as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text") from exc
    return value


def _email(value: str) -> str:
    return value.lower()


Email = Annotated[EmailStr, Field(max_length=254), AfterValidator(_email)]
Password = Annotated[str, Field(min_length=1, max_length=PASSWORD_HARD_MAX), AfterValidator(_utf8)]


class UserCreate(BaseModel):
    """A new account; ``role`` other than viewer may only be set by an admin."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Password
    role: Role = "viewer"


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Password


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, Field(min_length=1, max_length=16_384), AfterValidator(_utf8)]


class TokenClaims(BaseModel):
    """The verified claims of a user token."""

    sub: str
    email: str
    role: Role
    jti: str
    exp: int


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    is_admin: bool
    created_at: datetime
    updated_at: datetime


class RegistrationAccepted(BaseModel):
    """The answer to a self-registration, the same whether or not the email was free."""

    status: Literal["accepted"] = "accepted"
    message: str = (
        "If this email was not registered yet, the account exists now: sign in with "
        "POST /users/auth. If it was, nothing changed."
    )


class UserPage(BaseModel):
    items: list[UserPublic]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    service: str = "signing"
    checks: dict[str, str]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, object]] | None = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """The one error shape of the platform."""

    error: ErrorDetail
