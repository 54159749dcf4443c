"""Settings of the monitoring API (env prefix ``MONITORING_API_``; ``IOT_*`` shared)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from iot_common.events import DEFAULT_WINDOW_SIZES
from iot_common.settings import DEFAULT_DATABASE_URL, ServiceSettings
from monitoring_api.proxies import parse_trusted

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
    #: The monitoring store (``postgresql://…`` or ``mongodb://…``); may carry a password.
    store_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        validation_alias=AliasChoices(
            "MONITORING_STORE_URL", "MONITORING_API_STORE_URL", "IOT_MONITORING_STORE_URL"
        ),
    )
    max_body_bytes: int = 64 * 1024
    #: Proxies (addresses or networks) whose ``X-Forwarded-For`` names the client: exactly the
    #: gateway. ``make run``'s gateway listens on loopback; compose/k8s set the gateway's.
    #: Never ``*``: any client could then choose the address signing's login limits see.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

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
    #: Window sizes (seconds) the stream agents compute and store; a bucket is built from the
    #: coarsest that divides it. ``IOT_WINDOW_SIZES`` sets the agents' and this at once.
    window_sizes: list[int] = Field(default_factory=lambda: list(DEFAULT_WINDOW_SIZES))

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
    #: Total seconds one delivery may take: connecting, sending and reading the answer.
    webhook_timeout: float = 10.0
    #: Bytes of a receiver's answer read at most (its status is what counts).
    webhook_max_response_bytes: int = 64 * 1024
    #: Deliveries in flight at once, and at most this many for any one subscription owner
    #: (a receiver that never answers holds that many, never the others' turn).
    webhook_concurrency: int = Field(default=64, ge=1)
    webhook_per_owner: int = Field(default=4, ge=1)
    webhook_poll_interval: float = 1.0
    webhook_enabled: bool = True
    #: Private networks webhooks may reach (e.g. ``["10.20.0.0/16"]`` for an on-premises
    #: receiver); empty: public addresses only. Loopback, link-local and the rest are refused
    #: unless listed here — an operator's decision, never a subscriber's.
    webhook_allow_private_networks: list[str] = []

    #: The built dashboard (``npm run build`` in ``monitoring-api/frontend``).
    dashboard_dir: Path = STATIC_DIR

    def max_range(self, interval: str) -> int:
        """Seconds of history one query may span at ``interval`` (``raw`` or a bucket size)."""
        return {
            "raw": self.max_range_raw,
            "10s": self.max_range_10s,
            "1m": self.max_range_1m,
            "5m": self.max_range_5m,
            "1h": self.max_range_1h,
            "1d": self.max_range_1d,
        }[interval]

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, v: list[str]) -> list[str]:
        parse_trusted(v)
        return v

    @field_validator("webhook_allow_private_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v

    @field_validator("window_sizes")
    @classmethod
    def _window_sizes(cls, v: list[int]) -> list[int]:
        if not v or min(v) <= 0:
            raise ValueError("window sizes must be positive")
        return sorted(set(v))


@lru_cache
def get_settings() -> MonitoringApiSettings:
    return MonitoringApiSettings()
