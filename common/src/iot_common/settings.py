"""Settings base shared by every service (pydantic-settings)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from iot_common.topics import DEVICE_EVENTS_EXCHANGE, TELEMETRY_EXCHANGE, Topics


class ServiceSettings(BaseSettings):
    """Fields every service has; each service subclasses with its own ``env_prefix``.

    Every field can also be set through ``IOT_<FIELD>``, shared by all services (the stack
    runner and the tests point every service at the same broker that way); the service's own
    prefix wins where both are set.
    """

    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore", env_file=None)

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
    #: Prefix of MQTT topics (``{prefix}devices/{id}/telemetry``); tests give each run its own.
    mqtt_topic_prefix: str = ""
    #: RabbitMQ exchange names (contract names by default; tests make them unique).
    telemetry_exchange: str = TELEMETRY_EXCHANGE
    device_events_exchange: str = DEVICE_EVENTS_EXCHANGE

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)

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
