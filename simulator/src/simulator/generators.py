"""Metric value generators, vectorised over many readings of many devices at once.

Each device type in each publishing process has one :class:`TypeGenerator`. It is called with
the readings to produce in send order (device, per-device step, timestamp) and returns a
``(n, metrics)`` value matrix and a presence mask (dropouts). Every random stream (noise,
walk increments, spikes, dropouts) has its own seeded generator per metric, consumed strictly
in send order, so the values depend only on the seed, the fleet and the process layout — not on
how the readings happen to be chunked by the pacer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from simulator.fleet import DeviceType, MetricSpec, RandomWalkGen, SineGen, StepsGen

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

_NOISE, _WALK, _SPIKE, _DROP = range(4)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *key]))


def reflect(x: F64, lo: float, hi: float) -> F64:
    """Fold an unbounded walk into [lo, hi] (a reflected random walk)."""
    width = hi - lo
    if width <= 0:
        return np.full_like(x, lo)
    y = np.mod(x - lo, 2 * width)
    return lo + np.where(y > width, 2 * width - y, y)


class MetricGenerator:
    """Values of one metric for the devices of one type handled by one process."""

    def __init__(
        self, spec: MetricSpec, *, seed: int, shard: int, type_index: int, metric_index: int
    ) -> None:
        self.spec = spec
        key = (type_index, metric_index)
        # Per-device constants depend only on the seed and the device, not on the shard.
        self._device_rng_key = (seed, *key)
        self._noise = _rng(seed, shard, *key, _NOISE)
        self._walk = _rng(seed, shard, *key, _WALK)
        self._spike = _rng(seed, shard, *key, _SPIKE)
        self._drop = _rng(seed, shard, *key, _DROP)
        self._phase: F64 = np.zeros(0)
        self._walk_state: dict[int, float] = {}

    def _phases(self, type_device_index: I64) -> F64:
        """A per-device phase in [0, 1), stable across runs and process layouts."""
        need = int(type_device_index.max()) + 1 if len(type_device_index) else 0
        if need > len(self._phase):
            seed, *key = self._device_rng_key
            self._phase = _rng(seed, *key, 99).random(max(need, 2 * len(self._phase)))
        return self._phase[type_device_index]

    def values(self, type_device_index: I64, ts: F64) -> tuple[F64, Bool]:
        spec = self.spec
        gen = spec.generator
        n = len(ts)
        if isinstance(gen, SineGen):
            phase = self._phases(type_device_index) * 2 * np.pi
            out = gen.offset + gen.amplitude * np.sin(2 * np.pi * ts / gen.period + phase)
        elif isinstance(gen, StepsGen):
            shift = self._phases(type_device_index) * gen.every * len(gen.levels)
            idx = np.floor((ts + shift) / gen.every).astype(np.int64) % len(gen.levels)
            out = np.asarray(gen.levels, dtype=np.float64)[idx]
        else:
            out = self._walk_values(gen, type_device_index)
        noise = gen.noise
        if noise > 0:
            out = out + self._noise.normal(0.0, noise, n)
        if spec.spikes.probability > 0:
            u = self._spike.random(n)
            sign = np.where(u < spec.spikes.probability / 2, -1.0, 1.0)
            out = out + np.where(u < spec.spikes.probability, sign * spec.spikes.magnitude, 0.0)
        if spec.min is not None or spec.max is not None:
            out = np.clip(out, spec.min, spec.max)
        out = np.round(out, spec.decimals)
        if spec.dropout > 0:
            present = self._drop.random(n) >= spec.dropout
        else:
            present = np.ones(n, dtype=np.bool_)
        return out, present

    def _walk_values(self, gen: RandomWalkGen, dev: I64) -> F64:
        assert self.spec.min is not None and self.spec.max is not None
        n = len(dev)
        inc = self._walk.normal(0.0, gen.step, n)
        # Cumulative sum per device, in send order (a stable sort keeps each device's order).
        order = np.argsort(dev, kind="stable")
        sdev = dev[order]
        sinc = inc[order]
        csum = np.cumsum(sinc)
        starts = np.flatnonzero(np.r_[True, sdev[1:] != sdev[:-1]])
        group_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        before = np.r_[0.0, csum][starts]  # cumulative sum before each group
        group_dev = sdev[starts]
        base = np.array([self._walk_state.get(int(d), gen.start) for d in group_dev])
        walked = np.empty(n)
        walked[order] = base[group_of] + csum - before[group_of]
        ends = np.r_[starts[1:], n] - 1
        for d, last in zip(group_dev.tolist(), (base + csum[ends] - before).tolist(), strict=True):
            self._walk_state[d] = last
        return reflect(walked, self.spec.min, self.spec.max)


class TypeGenerator:
    """All metrics of one device type for the devices one process publishes for."""

    def __init__(self, dtype: DeviceType, *, seed: int, shard: int, type_index: int) -> None:
        self.dtype = dtype
        self.metric_names = [m.name for m in dtype.metrics]
        self.metrics = [
            MetricGenerator(m, seed=seed, shard=shard, type_index=type_index, metric_index=i)
            for i, m in enumerate(dtype.metrics)
        ]

    def generate(self, type_device_index: I64, ts: F64) -> tuple[F64, Bool]:
        """Values ``(n, metrics)`` and presence ``(n, metrics)``; every reading keeps ≥ 1 metric."""
        n = len(ts)
        values = np.empty((n, len(self.metrics)))
        present = np.empty((n, len(self.metrics)), dtype=np.bool_)
        for i, gen in enumerate(self.metrics):
            values[:, i], present[:, i] = gen.values(type_device_index, ts)
        # A reading with every metric dropped would be refused (missing_metrics); keep the first.
        present[~present.any(axis=1), 0] = True
        return values, present
