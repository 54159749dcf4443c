"""Settings of the device-management service (env prefix ``DEVICE_MANAGEMENT_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from iot_common.settings import ServiceSettings


class DeviceManagementSettings(ServiceSettings):
    """Every field is settable as ``DEVICE_MANAGEMENT_<FIELD>`` (or the shared ``IOT_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="DEVICE_MANAGEMENT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    access_log: bool = True
    #: May carry a password, hence secret (never logged).
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/iot")
    db_pool_size: int = 10
    db_max_overflow: int = 10
    #: A device is ``offline`` once the bridge has not seen it for this long.
    offline_after_seconds: float = 60.0
    #: Lifetime of a device's entry in the ingest cache (it is rewritten on every change).
    cache_ttl_seconds: int = 3600
    #: Lifetime of a "no such device" entry, short so a typo'd id cannot linger.
    negative_cache_ttl_seconds: int = 30
    max_body_bytes: int = 256 * 1024
    #: Run the outbox relay in this process (one per replica is fine: they take turns).
    relay_enabled: bool = True
    outbox_batch_size: int = 200
    #: How often the relay looks for events committed by other replicas.
    outbox_poll_interval: float = 1.0
    relay_max_backoff_seconds: float = 5.0
    #: Published outbox rows are deleted after this long (the history stays in t_device_events).
    outbox_retention_hours: float = 24.0
    rabbitmq_connect_timeout: float = 5.0
    rabbitmq_publish_timeout: float = 10.0


@lru_cache
def get_settings() -> DeviceManagementSettings:
    return DeviceManagementSettings()
