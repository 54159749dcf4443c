"""Settings base shared by every service (pydantic-settings)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Self
from urllib.parse import urlsplit

from pydantic import SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from iot_common.topics import DEVICE_EVENTS_EXCHANGE, TELEMETRY_EXCHANGE, Topics

#: Secret values this repository publishes somewhere (docs, templates, image defaults of the
#: brokers): whoever reads the repository knows them, so no deployment may use them.
PUBLISHED_SECRETS = frozenset(
    {
        "admin",
        "admin-password-change-me",
        "change-me",
        "change_me",
        "changeme",
        "dev-amqp-device-management",
        "dev-amqp-ingest-bridge",
        "dev-internal-token",
        "guest",
        "iot-dev-password",
        "password",
        "postgres",
        "secret",
    }
)

#: The platform's PostgreSQL on a developer's machine (trust authentication, database ``iot``):
#: the one default of every database and monitoring-store URL (services, ``iotctl``, tools).
#: Services hold such URLs as ``SecretStr``: a deployment's carries a password, which must not
#: show in a repr or a log, and a service refuses to start on this default outside development
#: (:meth:`ServiceSettings.dev_defaults_in_use`), wherever the URL is declared.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/iot"


class ServiceSettings(BaseSettings):
    """Fields every service has; each service subclasses with its own ``env_prefix``.

    Every field can also be set through ``IOT_<FIELD>``, shared by all services (the stack
    runner and the tests point every service at the same broker that way); the service's own
    prefix wins where both are set.
    """

    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore", env_file=None)

    #: Let the working local defaults of secrets through (``iotctl up`` and the tests set it).
    #: Without it a service refuses to start with any of them; see :meth:`dev_defaults_in_use`.
    allow_dev_defaults: bool = False
    log_level: str = "INFO"
    log_json: bool = False
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key this platform writes; tests give each run its own.
    redis_namespace: str = "iot"
    #: Prefix of every Kafka topic name; empty in a normal deployment.
    topic_prefix: str = ""
    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    #: Where services fetch signing's public keys.
    jwks_url: str = "http://127.0.0.1:8001/.well-known/jwks.json"
    jwt_issuer: str = "iot-signing"
    jwt_audience: str = "iot-platform"
    #: Shared secret for service-to-service calls (header ``X-Internal-Token``).
    internal_token: SecretStr = SecretStr("dev-internal-token")
    signing_url: str = "http://127.0.0.1:8001"
    device_management_url: str = "http://127.0.0.1:8002"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    #: The platform's own MQTT clients (bridge, device-management) speak TLS to the broker
    #: (port 8883 in compose/Kubernetes), verifying its certificate and host name.
    mqtt_tls: bool = False
    #: The CA bundle (PEM) that signs the broker's certificate; unset: the system's CAs.
    mqtt_tls_ca_file: str | None = None

    def mqtt_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the service's MQTT connection (None: plain TCP)."""
        if not self.mqtt_tls:
            return None
        context = ssl.create_default_context(cafile=self.mqtt_tls_ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    #: Prefix of MQTT topics (``{prefix}devices/{id}/telemetry``); tests give each run its own.
    mqtt_topic_prefix: str = ""
    #: RabbitMQ exchange names (contract names by default; tests make them unique).
    telemetry_exchange: str = TELEMETRY_EXCHANGE
    device_events_exchange: str = DEVICE_EVENTS_EXCHANGE

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)

    def dev_defaults_in_use(self) -> Iterator[str]:
        """Name each setting that still holds a development default, and how to replace it.

        One rule for every service, so a secret added to any settings class is covered without
        listing it anywhere: a secret equal to its declared default (the default is in this
        repository for anyone to read), any secret or URL password that the repository
        publishes (:data:`PUBLISHED_SECRETS`), and a Redis without a password (the ingest path
        trusts the device-token hashes cached there).
        """
        prefix = str(self.model_config.get("env_prefix", "IOT_"))
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            secret = value.get_secret_value() if isinstance(value, SecretStr) else None
            text = secret if secret is not None else value if isinstance(value, str) else None
            if text is None:
                continue
            shared = name in ServiceSettings.model_fields
            where = f"{name} (set {'IOT_' if shared else prefix}{name.upper()})"
            default = field.get_default(call_default_factory=True)
            if isinstance(default, SecretStr) and secret == default.get_secret_value():
                yield f"{where}: the development default"
            elif secret is not None and secret.strip().lower() in PUBLISHED_SECRETS:
                yield f"{where}: a published placeholder"
            elif "://" in text:
                parts = urlsplit(text)
                password = parts.password
                if password is not None and password.strip().lower() in PUBLISHED_SECRETS:
                    yield f"{where}: its URL carries a published password"
                elif parts.scheme in ("redis", "rediss") and not password:
                    yield f"{where}: Redis without a password (AUTH)"

    @model_validator(mode="after")
    def _refuse_dev_defaults(self) -> Self:
        if self.allow_dev_defaults:
            return self
        problems = list(self.dev_defaults_in_use())
        if problems:
            raise ValueError(
                "refusing to start with development defaults: "
                + "; ".join(problems)
                + ". Set real values, or IOT_ALLOW_DEV_DEFAULTS=true for a local development run"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared_env = EnvSettingsSource(settings_cls, env_prefix="IOT_", case_sensitive=False)
        return (init_settings, env_settings, shared_env, dotenv_settings, file_secret_settings)
