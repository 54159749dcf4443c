"""Device configuration schema: metric definitions, alert rules and the owner's settings.

Owned by device-management (validated on every write, 422 naming the field), read by the
stream agents (alert rules) and the simulator (fleet files), and delivered to the device
itself (:class:`DesiredConfig`, over MQTT or HTTP) which reports the version it applied
(:class:`ConfigReport`). Limits are part of the schema.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iot_common.events import SEVERITY_RANK

MAX_METRICS = 64
MAX_RULES = 64
#: The largest request body device-management accepts: the bound on a config as sent (its own
#: limits are on the config re-encoded compactly, so spaces and escapes make the text longer).
#: monitoring-api relays the dashboard's config edits with this bound too
#: (``monitoring_api.api.routes.session.CONFIG_RELAY_MAX_BYTES``).
MAX_DEVICE_REQUEST_BYTES = 256 * 1024
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"

MetricName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
RuleId = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.value]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricDefinition(_Strict):
    name: MetricName
    unit: str | None = Field(default=None, max_length=32)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _range(self) -> MetricDefinition:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class ThresholdRule(_Strict):
    """Fires when a window's ``aggregate`` is above/below ``value`` for N consecutive windows."""

    type: Literal["threshold"] = "threshold"
    id: RuleId
    metric: MetricName
    op: Literal["above", "below"]
    value: float
    aggregate: Literal["mean", "min", "max", "p50", "p95", "last"] = "mean"
    consecutive_windows: int = Field(default=1, ge=1, le=1000)
    window_seconds: int = Field(default=10, ge=1, le=86_400)
    severity: Severity = Severity.WARNING


class RateOfChangeRule(_Strict):
    """Fires when the mean changes by more than ``max_change_per_second`` between windows."""

    type: Literal["rate_of_change"] = "rate_of_change"
    id: RuleId
    metric: MetricName
    max_change_per_second: float = Field(gt=0)
    window_seconds: int = Field(default=10, ge=1, le=86_400)
    severity: Severity = Severity.WARNING


class SilentRule(_Strict):
    """Fires when the device sends nothing for ``seconds``."""

    type: Literal["silent"] = "silent"
    id: RuleId
    seconds: float = Field(gt=0, le=30 * 86_400)
    severity: Severity = Severity.WARNING


AlertRule = Annotated[ThresholdRule | RateOfChangeRule | SilentRule, Field(discriminator="type")]


class DeviceConfig(_Strict):
    metrics: list[MetricDefinition] = Field(default_factory=list, max_length=MAX_METRICS)
    rules: list[AlertRule] = Field(default_factory=list, max_length=MAX_RULES)
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "The owner's free-form settings for the device (a sampling interval, a firmware "
            "channel, a location…): any JSON object, delivered to the device as it is; the "
            "platform does not interpret it."
        ),
    )

    @model_validator(mode="after")
    def _unique(self) -> DeviceConfig:
        names = [m.name for m in self.metrics]
        if len(names) != len(set(names)):
            raise ValueError("metric names must be unique")
        ids = [r.id for r in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError("rule ids must be unique")
        return self


class DesiredConfig(BaseModel):
    """What a device receives: its configuration and the version that names it.

    The same JSON document on both transports: the retained message on
    :func:`config_topic` and the body of ``GET /ingest/{id}/config`` (whose ``ETag`` is
    :func:`config_etag` of the version).
    """

    model_config = ConfigDict(extra="ignore")

    device_id: str
    version: int = Field(ge=1, description="Bumped by every change of the configuration.")
    config: DeviceConfig


class ConfigReport(BaseModel):
    """What a device sends back once it applied a configuration."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1, strict=True, description="The version applied.")


def config_topic(device_id: str, prefix: str = "") -> str:
    """MQTT topic of the device's desired configuration (retained; only it may read it)."""
    return f"{prefix}devices/{device_id}/config"


def config_reported_topic(device_id: str, prefix: str = "") -> str:
    """MQTT topic the device publishes its :class:`ConfigReport` to."""
    return f"{prefix}devices/{device_id}/config/reported"


def config_etag(version: int) -> str:
    """The HTTP entity tag of a configuration version (strong: the bytes follow the version)."""
    return f'"config-{version}"'
