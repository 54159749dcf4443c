"""Settings of the signing service (env prefix ``SIGNING_``, or ``IOT_`` for shared fields)."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from iot_common.auth import MAX_TOKEN_LIFETIME_SECONDS
from iot_common.settings import DEFAULT_DATABASE_URL, ServiceSettings

DEFAULT_KEY_FILE = Path("~/.local/share/iot-platform/signing-key.pem")


class SigningSettings(ServiceSettings):
    """Everything signing reads from its environment; every field has a working local default."""

    model_config = SettingsConfigDict(env_prefix="SIGNING_", extra="ignore", env_file=None)

    host: str = "127.0.0.1"
    port: int = 8001
    #: Exactly the proxies whose X-Forwarded-For names the client (rate limits count by it):
    #: the gateway and the monitoring API's sign-in relay. Never ``*``, which would let any
    #: client choose the address its attempts are counted against.
    #: Comma-separated addresses or networks, as uvicorn takes them.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    database_pool_size: int = 10

    #: The signing keys live in PostgreSQL (``t_signing_keys``), their private parts encrypted
    #: with this passphrase, so every replica signs with the same key and ``signing rotate-key``
    #: rotates for all of them.
    key_passphrase: SecretStr = SecretStr("dev-signing-key-passphrase")
    #: Optional RSA private key (PEM) to sign with, for operators who keep keys in a secret
    #: manager: the first start that sees a new one makes it the current key (the previous key
    #: stays published, so nobody is logged out). Unset: keys are generated in the database.
    private_key_pem: SecretStr | None = None
    #: A key file of an earlier version, taken into the key ring once if it exists.
    key_file: Path = DEFAULT_KEY_FILE
    #: ``kid`` of ``private_key_pem``; by default its RFC 7638 thumbprint.
    key_id: str | None = None
    #: How often each process re-reads the key ring (a rotation reaches every replica).
    key_reload_seconds: float = Field(default=15.0, gt=0)
    #: A rotated-in key is published this long before it signs, so that every replica and
    #: verifier knows it first; longer than ``key_reload_seconds``.
    key_publish_lead_seconds: float = Field(default=60.0, ge=0)
    token_ttl_seconds: int = Field(default=3600, ge=60, le=MAX_TOKEN_LIFETIME_SECONDS)
    #: How often signing checks that Redis still holds the revocations (a Redis restarted
    #: without its data has none) and re-publishes them from PostgreSQL if not.
    revocation_check_seconds: float = Field(default=30.0, gt=0)

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

    #: At most this many Argon2 computations at once (logins and registrations together);
    #: more wait, up to ``argon2_max_waiting``, and beyond that get 503 at once.
    argon2_max_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    argon2_max_waiting: int = Field(default=32, ge=0)
    #: Registrations use at most this many of those slots (and queue at most
    #: ``register_max_waiting``), so a flood of sign-ups cannot take the CPU from sign-ins.
    register_max_concurrency: int = Field(default=1, ge=1)
    register_max_waiting: int = Field(default=4, ge=0)
    #: Self-registrations allowed per client address per window.
    register_limit_per_address: int = Field(default=10, ge=1)
    register_limit_window_seconds: int = Field(default=3600, ge=1)

    #: Login attempts allowed per client address per window, over all accounts (spraying).
    login_limit_per_address: int = Field(default=30, ge=1)
    login_limit_window_seconds: int = Field(default=300, ge=1)
    #: Failed logins one address may make for one account before it has to wait; each further
    #: failure doubles the wait, from ``login_delay_base_seconds`` up to the maximum. Nobody can
    #: lock the owner out: other addresses are not slowed, and a success clears the count.
    login_free_failures: int = Field(default=5, ge=1)
    login_delay_base_seconds: float = Field(default=1.0, gt=0)
    login_delay_max_seconds: float = Field(default=900.0, gt=0)

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

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _exact_proxies(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if entry == "*":
                raise ValueError("'*' trusts every client's X-Forwarded-For; name the proxies")
            if entry:
                ipaddress.ip_network(entry, strict=False)  # ValueError names a typo
        return value

    @model_validator(mode="after")
    def _lengths_consistent(self) -> SigningSettings:
        if self.password_min_length > self.password_max_length:
            raise ValueError("password_min_length must not exceed password_max_length")
        return self


@lru_cache
def get_settings() -> SigningSettings:
    return SigningSettings()
