"""Alert rule evaluation state across a crash, a replay and a rebalance (engine level)."""

from __future__ import annotations

from monitoring_store.base import DeviceRules
from stream_agents.alerts import AlertEngine, ClosedWindow

T0 = 1_800_000_000.0
RULES = {
    "rules": [
        {
            "type": "threshold",
            "id": "hot",
            "metric": "temp",
            "op": "above",
            "value": 30,
            "consecutive_windows": 3,
        },
        {"type": "rate_of_change", "id": "jump", "metric": "temp", "max_change_per_second": 2},
    ]
}


def engine() -> AlertEngine:
    e = AlertEngine()
    e.set_device(DeviceRules("d1", "owner", "sensor", RULES, 1), now=T0)
    return e


def win(i: int, mean: float) -> ClosedWindow:
    stats = {k: mean for k in ("mean", "min", "max", "p50", "p95", "last")}
    return ClosedWindow("d1", "temp", 10, T0 + 10 * i, stats)


def test_consecutive_windows_count_across_a_restart() -> None:
    stored = [win(0, 20), win(1, 35), win(2, 36)]
    e = engine()
    assert e.on_windows(stored) == []  # 2 hot windows of 3
    # Crash: a new engine knows nothing; without history the 3rd hot window would not fire.
    fresh = engine()
    assert fresh.history_queries() == [("d1", "temp", 10, 3)]
    fresh.seed(stored)
    changes = fresh.on_windows([win(3, 37)])
    assert [(a.rule_id, a.status, a.started_at) for a in changes] == [("hot", "active", T0 + 40)]
    # The same sequence without a crash fires the same alert (same deterministic id).
    assert [a.alert_id for a in e.on_windows([win(3, 37)])] == [changes[0].alert_id]


def test_replayed_windows_do_not_count_twice() -> None:
    e = engine()
    e.on_windows([win(0, 35)])
    e.seed([win(0, 35), win(1, 20)])  # history rebuilt after a rebalance: window 1 was cool
    e.last_evaluated.clear()  # the replay evaluates windows again
    assert e.on_windows([win(1, 20), win(2, 35), win(3, 35)]) == []
    assert [a.rule_id for a in e.on_windows([win(4, 35)])] == ["hot"]


def test_rate_of_change_uses_the_stored_previous_window() -> None:
    fresh = engine()
    fresh.seed([win(0, 20)])
    changes = fresh.on_windows([win(1, 50)])  # 30 in 10 s: 3/s > 2/s
    assert [(a.rule_id, a.value) for a in changes] == [("jump", 3.0)]
    # Without the stored window the first window after a restart has nothing to compare.
    assert engine().on_windows([win(1, 50)]) == []
