"""Settings of the monitoring API (env prefix ``MONITORING_API_``; ``IOT_*`` shared)."""

from __future__ import annotations

import os
import secrets
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from iot_common.settings import ServiceSettings

DEFAULT_STORE_URL = "postgresql://postgres@127.0.0.1:5432/iot"
STATIC_DIR = Path(__file__).parent / "static" / "dashboard"


def _instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class MonitoringApiSettings(ServiceSettings):
    """Everything the monitoring API can be told; each field has a working local default."""

    model_config = SettingsConfigDict(
        env_prefix="MONITORING_API_", extra="ignore", env_file=None, populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8003
    #: uvicorn worker processes (see ``monitoring-api --help``).
    workers: int = Field(default=1, ge=1, le=64)
    #: The monitoring store (``postgresql://…`` or ``mongodb://…``).
    store_url: str = Field(
        default=DEFAULT_STORE_URL,
        validation_alias=AliasChoices(
            "MONITORING_STORE_URL", "MONITORING_API_STORE_URL", "IOT_MONITORING_STORE_URL"
        ),
    )
    max_body_bytes: int = 64 * 1024

    #: Identifies this process; its Kafka consumer group is derived from it, so every instance
    #: receives every record and pushes it to its own Socket.IO clients.
    instance_id: str = Field(default_factory=_instance_id)
    consumer_group_prefix: str = "monitoring-api"
    #: Turn off to run without Kafka (no live pushes, no webhook fan-out).
    kafka_enabled: bool = True

    # -- query limits -------------------------------------------------------------------------
    max_page_size: int = 1000
    max_raw_samples: int = 10_000
    #: Seconds of history one query may span at each resolution.
    max_range_raw: int = 6 * 3600
    max_range_10s: int = 2 * 86_400
    max_range_1m: int = 14 * 86_400
    max_range_5m: int = 62 * 86_400
    max_range_1h: int = 400 * 86_400
    max_range_1d: int = 3660 * 86_400

    #: Seconds an ownership answer from device-management is reused.
    device_cache_ttl: float = 15.0
    device_management_timeout: float = 5.0

    # -- live pushes ----------------------------------------------------------------------------
    fleet_push_interval: float = 5.0
    #: How often connected clients' tokens are re-checked (expired/revoked → disconnected).
    session_sweep_interval: float = 15.0
    #: Origins allowed to open Socket.IO connections besides the API's own (e.g. a dev server).
    socketio_cors_origins: list[str] = []

    # -- webhooks -------------------------------------------------------------------------------
    webhook_max_attempts: int = 6
    webhook_backoff_base: float = 2.0
    webhook_backoff_max: float = 600.0
    webhook_timeout: float = 10.0
    webhook_poll_interval: float = 1.0
    webhook_batch: int = 50
    webhook_enabled: bool = True
    #: Allow webhook URLs pointing at loopback/private addresses (local development, tests).
    webhook_allow_private: bool = True

    #: The built dashboard (``npm run build`` in ``monitoring-api/frontend``).
    dashboard_dir: Path = STATIC_DIR


@lru_cache
def get_settings() -> MonitoringApiSettings:
    return MonitoringApiSettings()
