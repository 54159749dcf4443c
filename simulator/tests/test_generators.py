from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from simulator.fleet import DeviceType, Fleet, load_fleet
from simulator.generators import TypeGenerator, reflect


def _dtype(**metric: object) -> DeviceType:
    return DeviceType.model_validate({"name": "t", "count": 4, "metrics": [metric]})


def _inputs(n_devices: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    dev = np.tile(np.arange(n_devices), steps)
    ts = 1_700_000_000 + np.repeat(np.arange(steps), n_devices) * 0.1
    return dev.astype(np.int64), ts


@pytest.mark.parametrize(
    "metric",
    [
        {"name": "a", "generator": {"kind": "sine", "offset": 5, "amplitude": 2, "noise": 0.5}},
        {"name": "a", "min": 0, "max": 10, "generator": {"kind": "random_walk", "start": 5}},
        {"name": "a", "generator": {"kind": "steps", "levels": [1, 2, 3], "noise": 0.1}},
        {"name": "a", "spikes": {"probability": 0.1, "magnitude": 50}, "dropout": 0.2},
    ],
)
def test_same_seed_same_values_other_seed_other_values(metric: dict[str, object]) -> None:
    dtype = _dtype(**metric)
    dev, ts = _inputs(4, 200)
    a = TypeGenerator(dtype, seed=1, shard=0, type_index=0).generate(dev, ts)
    b = TypeGenerator(dtype, seed=1, shard=0, type_index=0).generate(dev, ts)
    c = TypeGenerator(dtype, seed=2, shard=0, type_index=0).generate(dev, ts)
    assert a[0].shape == (800, 1) and a[1].shape == (800, 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_values_do_not_depend_on_how_readings_are_chunked() -> None:
    dtype = _dtype(
        name="a", min=0, max=10, generator={"kind": "random_walk", "start": 5, "noise": 0.2}
    )
    dev, ts = _inputs(4, 300)
    whole = TypeGenerator(dtype, seed=9, shard=0, type_index=0).generate(dev, ts)[0]
    gen = TypeGenerator(dtype, seed=9, shard=0, type_index=0)
    parts = [gen.generate(dev[i : i + 37], ts[i : i + 37])[0] for i in range(0, len(ts), 37)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-9)


def test_random_walk_walks_per_device_and_stays_in_range() -> None:
    dtype = _dtype(name="a", min=0, max=10, generator={"kind": "random_walk", "start": 5})
    dev, ts = _inputs(4, 2000)
    values = TypeGenerator(dtype, seed=4, shard=0, type_index=0).generate(dev, ts)[0][:, 0]
    assert values.min() >= 0 and values.max() <= 10
    per_device = values.reshape(2000, 4).T
    # Successive readings of one device differ by one N(0, 1) step (folded at the edges).
    steps = np.abs(np.diff(per_device, axis=1))
    assert steps.mean() == pytest.approx(np.sqrt(2 / np.pi), rel=0.15)
    # Devices walk independently.
    assert not np.array_equal(per_device[0], per_device[1])


def test_sine_has_its_period_and_amplitude() -> None:
    dtype = _dtype(name="a", generator={"kind": "sine", "offset": 20, "amplitude": 5, "period": 10})
    dev = np.zeros(1000, dtype=np.int64)
    ts = 1_700_000_000 + np.arange(1000) * 0.01  # exactly one period
    values = TypeGenerator(dtype, seed=1, shard=0, type_index=0).generate(dev, ts)[0][:, 0]
    assert values.max() == pytest.approx(25, abs=0.01)
    assert values.min() == pytest.approx(15, abs=0.01)
    assert values.mean() == pytest.approx(20, abs=0.01)


def test_steps_hold_levels() -> None:
    dtype = _dtype(name="a", generator={"kind": "steps", "levels": [1, 5, 9], "every": 2})
    dev, ts = _inputs(3, 400)
    values = TypeGenerator(dtype, seed=1, shard=0, type_index=0).generate(dev, ts)[0][:, 0]
    assert set(np.unique(values)) == {1.0, 5.0, 9.0}
    one = values.reshape(400, 3)[:, 0]
    assert np.count_nonzero(np.diff(one)) <= 400 * 0.1 / 2 + 1  # changes every 2 s at most


def test_spikes_and_dropouts_at_their_rates() -> None:
    dtype = _dtype(
        name="a",
        generator={"kind": "sine", "offset": 0, "amplitude": 1},
        spikes={"probability": 0.05, "magnitude": 100},
        dropout=0.2,
    )
    dev, ts = _inputs(10, 2000)
    values, present = TypeGenerator(dtype, seed=1, shard=0, type_index=0).generate(dev, ts)
    spiky = np.abs(values[:, 0]) > 50
    assert spiky.mean() == pytest.approx(0.05, abs=0.01)
    # A single-metric type keeps its only metric (a reading is never empty).
    assert present.all()


def test_dropouts_never_empty_a_reading() -> None:
    dtype = DeviceType.model_validate(
        {
            "name": "t",
            "count": 2,
            "metrics": [{"name": "a", "dropout": 0.5}, {"name": "b", "dropout": 0.5}],
        }
    )
    dev, ts = _inputs(2, 2000)
    _, present = TypeGenerator(dtype, seed=1, shard=0, type_index=0).generate(dev, ts)
    assert present.any(axis=1).all()
    assert (~present).mean() == pytest.approx(0.375, abs=0.03)  # 0.5 minus the kept ones


def test_reflect_folds_into_range() -> None:
    x = np.array([-1.0, 0.0, 5.0, 11.0, 21.0, 25.0])
    np.testing.assert_allclose(reflect(x, 0, 10), [1, 0, 5, 9, 1, 5])


def test_fleet_validation_names_the_problem() -> None:
    bad = {
        "name": "f",
        "device_types": [
            {
                "name": "t",
                "count": 1,
                "metrics": [{"name": "a"}],
                "rules": [
                    {"type": "threshold", "id": "r", "metric": "b", "op": "above", "value": 1}
                ],
            }
        ],
    }
    with pytest.raises(ValidationError, match="unknown metric 'b'"):
        Fleet.model_validate(bad)
    with pytest.raises(ValidationError, match="random_walk metric needs min and max"):
        _dtype(name="a", generator={"kind": "random_walk"})


def test_example_fleets_load() -> None:
    from pathlib import Path

    fleets = sorted((Path(__file__).parents[1] / "fleets").glob("*.yaml"))
    assert fleets
    for path in fleets:
        fleet = load_fleet(path)
        assert fleet.device_count > 0
        for dtype in fleet.device_types:
            dtype.device_config()  # what device-management will validate
    demo = load_fleet(Path(__file__).parents[1] / "fleets" / "demo.yaml")
    assert any(t.rules for t in demo.device_types)
