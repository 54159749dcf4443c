"""Settings of the device-management service (env prefix ``DEVICE_MANAGEMENT_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from iot_common import dynsec, rabbitmq
from iot_common.device_config import MAX_DEVICE_REQUEST_BYTES
from iot_common.settings import DEFAULT_DATABASE_URL, ServiceSettings


class DeviceManagementSettings(ServiceSettings):
    """Every field is settable as ``DEVICE_MANAGEMENT_<FIELD>`` (or the shared ``IOT_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="DEVICE_MANAGEMENT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    access_log: bool = True
    #: May carry a password, hence secret (never logged).
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    db_pool_size: int = 10
    db_max_overflow: int = 10
    #: A device is ``offline`` once the bridge has not seen it for this long.
    offline_after_seconds: float = 60.0
    #: Lifetime of a device's entry in the ingest cache (it is rewritten on every change).
    cache_ttl_seconds: int = 3600
    #: Lifetime of a "no such device" entry, short so a typo'd id cannot linger.
    negative_cache_ttl_seconds: int = 30
    #: monitoring-api's config relay is bound by the same number (see its definition).
    max_body_bytes: int = MAX_DEVICE_REQUEST_BYTES
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

    # --- device accounts on the brokers (see broker_accounts.py) ---
    #: Keep devices' MQTT clients in Mosquitto's dynamic-security plugin (through its control
    #: topic, as the admin service account below).
    mqtt_provisioning: bool = False
    mqtt_admin_username: str = dynsec.ADMIN_USERNAME
    #: Also the key material that seals tokens waiting in ``t_broker_changes``.
    mqtt_admin_password: SecretStr = SecretStr(dynsec.DEV_ADMIN_PASSWORD)
    #: Longest wait for the next answer on the control topic (not for a whole batch).
    mqtt_control_timeout: float = 10.0
    #: Keep devices' RabbitMQ users (one per device, in the vhost of ``rabbitmq_url``) through
    #: the broker's management HTTP API, as the administrator account below.
    amqp_provisioning: bool = False
    rabbitmq_management_url: str = "http://127.0.0.1:15672"
    rabbitmq_admin_username: str = "guest"
    rabbitmq_admin_password: SecretStr = SecretStr("guest")
    rabbitmq_management_timeout: float = 10.0
    #: How long ``amqp-setup`` waits for the management API (a broker still starting).
    amqp_setup_wait_seconds: float = 120.0
    #: The service accounts ``device-management amqp-setup`` (re)writes: the bridge's, and
    #: this service's own publisher account (the user of ``rabbitmq_url``).
    amqp_bridge_username: str = rabbitmq.BRIDGE_USERNAME
    amqp_bridge_password: SecretStr = SecretStr(rabbitmq.DEV_BRIDGE_PASSWORD)
    amqp_publisher_username: str = rabbitmq.PUBLISHER_USERNAME
    amqp_publisher_password: SecretStr = SecretStr(rabbitmq.DEV_PUBLISHER_PASSWORD)
    #: The bridge's queues (its ``amqp_queue`` and ``device_events_queue``), all it may use.
    amqp_bridge_queues: list[str] = ["ingest-bridge.telemetry", "ingest-bridge.device-events"]
    broker_changes_batch_size: int = 200
    #: How long issuing a token waits for the brokers to accept it before answering anyway
    #: (``provisioned: false``; the change is applied as soon as the broker is back).
    credential_wait_seconds: float = 5.0

    @property
    def rabbitmq_vhost(self) -> str:
        """The virtual host devices publish in: the one device-management's own URL names."""
        return rabbitmq.vhost_of(self.rabbitmq_url.get_secret_value())


@lru_cache
def get_settings() -> DeviceManagementSettings:
    return DeviceManagementSettings()
