"""Settings of the stream agents (env prefix ``AGENTS_``, or ``IOT_`` for shared fields)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from iot_common.events import DEFAULT_WINDOW_SIZES
from iot_common.settings import DEFAULT_DATABASE_URL, ServiceSettings

#: Rules every device of a type gets unless its own config has a rule with the same id.
DEFAULT_RULES: dict[str, list[dict[str, Any]]] = {
    "*": [{"type": "silent", "id": "silent", "seconds": 300, "severity": "warning"}],
}


class AgentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTS_", extra="ignore", env_file=None)

    app_id: str = "stream-agents"
    #: The monitoring store (``postgresql://…`` or ``mongodb://…``); may carry a password.
    monitoring_store_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        validation_alias=AliasChoices(
            "AGENTS_MONITORING_STORE_URL", "MONITORING_STORE_URL", "monitoring_store_url"
        ),
    )
    web_host: str = "0.0.0.0"
    web_port: int = 6066
    #: Partitions of the topics the agents create when missing.
    topic_partitions: int = 8
    #: Tumbling window sizes in seconds; each must divide the largest.
    window_sizes: list[int] = Field(default_factory=lambda: list(DEFAULT_WINDOW_SIZES))
    #: A reading is accepted if it reached the platform at most this long after its window end.
    allowed_lateness: float = 10.0
    #: How far out of ingest order the bridge may produce records before they count as late.
    reorder_slack: float = 10.0
    #: Seconds between window emissions (open-window updates, closing, commits).
    emit_interval: float = 1.0
    #: Open windows larger than the smallest size are re-published at most every window size
    #: × this (10 s for 1-minute windows); each update recomputes one from all its rows.
    open_update_fraction: float = Field(default=1 / 6, gt=0)
    #: A partition without records for this long closes its windows on the wall clock.
    idle_close_seconds: float = 2.0
    #: Raw samples written to the store in bulk; retention enforced by a timer.
    raw_samples: bool = True
    raw_retention_seconds: float = 7 * 86_400.0
    #: Refused messages are kept for their owners this long (``GET /monitoring/deadletters``).
    deadletter_retention_seconds: float = 7 * 86_400.0
    #: Records per fetch from the consumer.
    batch_max_records: int = 20_000
    batch_timeout: float = 0.2
    #: How long the broker may hold a fetch that found nothing. Tansu holds it this long even
    #: when records arrive meanwhile, so it bounds how long a new record can wait.
    fetch_max_wait_ms: int = 20
    #: Default alert rules per device type ("*" = every type), as device-config rule dicts.
    default_rules: dict[str, list[dict[str, Any]]] = Field(
        default_factory=lambda: dict(DEFAULT_RULES)
    )
    #: How often all workers reload rules from the store (rules for devices on partitions
    #: of another worker's device.events arrive that way).
    rules_reload_seconds: float = 15.0
    silent_check_seconds: float = 1.0
    #: After SIGTERM (any stop), the worker exits at the latest this many seconds later, even
    #: if part of its stop still waits (on a broker that is gone, say); under Kubernetes'
    #: 30-s grace period. What is durable stays so, nothing more is committed: a new worker
    #: replays from the committed offsets, as after a SIGKILL.
    shutdown_timeout: float = Field(default=20.0, gt=0)
    #: Faust rebalance/session timeouts: Tansu needs short ones or the first join waits ~30 s.
    broker_session_timeout: float = 6.0
    broker_rebalance_timeout: float = 6.0
    broker_heartbeat_interval: float = 1.0

    @field_validator("window_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        sizes = sorted(set(v))
        if not sizes or sizes[0] <= 0 or any(sizes[-1] % s for s in sizes):
            raise ValueError("window sizes must be positive and each divide the largest")
        return sizes


@lru_cache
def get_settings() -> AgentSettings:
    return AgentSettings()
