"""Fleet files: which virtual devices to run, what they measure and which faults to inject.

A fleet is YAML (see ``simulator/fleets/demo.yaml``)::

    name: demo
    seed: 7
    device_types:
      - name: thermostat
        count: 10
        metrics:
          - name: temperature
            unit: C
            min: -20
            max: 60
            generator: {kind: sine, offset: 21, amplitude: 3, period: 300, noise: 0.2}
        rules:              # iot_common.device_config alert rules, set on every device
          - {type: threshold, id: too_hot, metric: temperature, op: above, value: 30}
    faults:                 # probability per message
      out_of_order: 0.001
      duplicate: 0.001
      late: 0.0005
      malformed: 0.0005
      unknown_device: 0.0005
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from iot_common.device_config import NAME_PATTERN, AlertRule, DeviceConfig, MetricDefinition


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SineGen(_Strict):
    """``offset + amplitude·sin(2π·ts/period + phase) + N(0, noise)``; each device gets a phase."""

    kind: Literal["sine"] = "sine"
    offset: float = 0.0
    amplitude: float = 1.0
    period: float = Field(default=60.0, gt=0)
    noise: float = Field(default=0.0, ge=0)


class RandomWalkGen(_Strict):
    """A random walk from ``start`` with N(0, step) increments, reflected into [min, max]."""

    kind: Literal["random_walk"] = "random_walk"
    start: float = 0.0
    step: float = Field(default=1.0, ge=0)
    noise: float = Field(default=0.0, ge=0)


class StepsGen(_Strict):
    """Cycles through ``levels``, holding each for ``every`` seconds (devices are staggered)."""

    kind: Literal["steps"] = "steps"
    levels: list[float] = Field(min_length=1)
    every: float = Field(default=30.0, gt=0)
    noise: float = Field(default=0.0, ge=0)


Generator = Annotated[SineGen | RandomWalkGen | StepsGen, Field(discriminator="kind")]


class Spikes(_Strict):
    """Adds ``±magnitude`` to a reading with ``probability``."""

    probability: float = Field(default=0.0, ge=0, le=1)
    magnitude: float = 0.0


class MetricSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    generator: Generator = Field(default_factory=SineGen)
    spikes: Spikes = Field(default_factory=Spikes)
    #: Probability that the metric is missing from a reading (a sensor dropout).
    dropout: float = Field(default=0.0, ge=0, le=1)
    #: Decimal places the value is rounded to before sending.
    decimals: int = Field(default=3, ge=0, le=12)

    @model_validator(mode="after")
    def _range(self) -> MetricSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        if isinstance(self.generator, RandomWalkGen) and (self.min is None or self.max is None):
            raise ValueError("a random_walk metric needs min and max (the walk is reflected)")
        return self

    def definition(self) -> MetricDefinition:
        return MetricDefinition(name=self.name, unit=self.unit, min=self.min, max=self.max)


class DeviceType(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    count: int = Field(ge=1, le=1_000_000)
    metrics: list[MetricSpec] = Field(min_length=1, max_length=64)
    rules: list[AlertRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_config(self) -> DeviceType:
        self.device_config()  # metric/rule uniqueness and limits, as device-management checks
        known = {m.name for m in self.metrics}
        for rule in self.rules:
            metric = getattr(rule, "metric", None)
            if metric is not None and metric not in known:
                raise ValueError(f"rule {rule.id!r} refers to unknown metric {metric!r}")
        return self

    def device_config(self) -> DeviceConfig:
        return DeviceConfig(metrics=[m.definition() for m in self.metrics], rules=self.rules)


class Faults(_Strict):
    """Fault injection probabilities, per message sent."""

    #: The message is held back and sent after the device's next message.
    out_of_order: float = Field(default=0.0, ge=0, le=1)
    #: The message is sent twice (the store must keep it once).
    duplicate: float = Field(default=0.0, ge=0, le=1)
    #: The readings' timestamps are moved ``late_seconds`` into the past.
    late: float = Field(default=0.0, ge=0, le=1)
    late_seconds: float = Field(default=3600.0, gt=0)
    #: An extra, malformed message (not JSON, bad schema, non-numeric or no metrics).
    malformed: float = Field(default=0.0, ge=0, le=1)
    #: An extra, valid message for a device id nobody registered.
    unknown_device: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _exclusive(self) -> Faults:
        if self.out_of_order + self.duplicate + self.late > 1:
            raise ValueError("out_of_order + duplicate + late must not exceed 1")
        return self


class Fleet(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    seed: int = 0
    device_types: list[DeviceType] = Field(min_length=1)
    faults: Faults = Field(default_factory=Faults)

    @model_validator(mode="after")
    def _unique_types(self) -> Fleet:
        names = [t.name for t in self.device_types]
        if len(names) != len(set(names)):
            raise ValueError("device type names must be unique")
        return self

    @property
    def device_count(self) -> int:
        return sum(t.count for t in self.device_types)


def load_fleet(path: Path | str) -> Fleet:
    """Read and validate a fleet file."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return Fleet.model_validate(data)


__all__ = [
    "DeviceType",
    "Faults",
    "Fleet",
    "MetricSpec",
    "RandomWalkGen",
    "SineGen",
    "Spikes",
    "StepsGen",
    "load_fleet",
]
