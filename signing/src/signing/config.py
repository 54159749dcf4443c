"""Settings of the signing service (env prefix ``SIGNING_``, or ``IOT_`` for shared fields)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from iot_common.settings import ServiceSettings

DEFAULT_KEY_FILE = Path("~/.local/share/iot-platform/signing-key.pem")


class SigningSettings(ServiceSettings):
    """Everything signing reads from its environment; every field has a working local default."""

    model_config = SettingsConfigDict(env_prefix="SIGNING_", extra="ignore", env_file=None)

    host: str = "127.0.0.1"
    port: int = 8001
    #: Proxies whose X-Forwarded-For is trusted for the client address (rate limits), e.g. the
    #: gateway's address or "*" where signing is reachable only through it; unset: uvicorn's
    #: default (``FORWARDED_ALLOW_IPS`` or 127.0.0.1).
    forwarded_allow_ips: str | None = None
    database_url: str = "postgresql://postgres@127.0.0.1:5432/iot"
    database_pool_size: int = 10

    #: PEM of the RSA private key; when unset, ``key_file`` is read (and created on first start).
    private_key_pem: SecretStr | None = None
    #: Where a generated key is kept: outside the repository, readable by this user only.
    key_file: Path = DEFAULT_KEY_FILE
    #: ``kid`` of the signing key; by default its RFC 7638 thumbprint (stable across restarts).
    key_id: str | None = None
    token_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)

    bootstrap_admin_email: str = Field(
        default="admin@example.com",
        validation_alias=AliasChoices(
            "bootstrap_admin_email",
            "signing_bootstrap_admin_email",
            "iot_bootstrap_admin_email",
            "iot_admin_email",
        ),
    )
    bootstrap_admin_password: SecretStr = Field(
        default=SecretStr("admin-password-change-me"),
        validation_alias=AliasChoices(
            "bootstrap_admin_password",
            "signing_bootstrap_admin_password",
            "iot_bootstrap_admin_password",
            "iot_admin_password",
        ),
    )
    #: Anyone may register a viewer account through ``POST /users/add``; only admins pick roles.
    allow_self_registration: bool = True

    password_min_length: int = Field(default=8, ge=1)
    password_max_length: int = Field(default=128, le=1024)
    #: Argon2id parameters; changing them makes the next login of each user rehash.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    #: Login attempts allowed per client address per window (every attempt counts).
    login_limit_per_address: int = Field(default=30, ge=1)
    #: Failed logins allowed per email per window.
    login_limit_per_email: int = Field(default=10, ge=1)
    login_limit_window_seconds: int = Field(default=300, ge=1)

    max_body_bytes: int = 64 * 1024

    @field_validator("private_key_pem", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        # Compose passes ``${SIGNING_PRIVATE_KEY_PEM:-}``: an empty value means "not given".
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @model_validator(mode="after")
    def _lengths_consistent(self) -> SigningSettings:
        if self.password_min_length > self.password_max_length:
            raise ValueError("password_min_length must not exceed password_max_length")
        return self


@lru_cache
def get_settings() -> SigningSettings:
    return SigningSettings()
