"""Which components ``iotctl up`` starts, and what it says about ones it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotctl.components import COMPONENTS, ORDER, Component, landed, resolve
from iotctl.stack import unavailable


def names(comps: list[Component]) -> list[str]:
    return [c.name for c in comps]


def test_all_components_by_default_in_start_order() -> None:
    assert names(resolve([])) == list(ORDER)
    assert ORDER == (
        "broker",
        "mosquitto",
        "signing",
        "device-management",
        "ingest-bridge",
        "stream-agents",
        "monitoring-api",
        "gateway",
        "simulator",
    )


def test_dependencies_are_added_before_what_needs_them() -> None:
    assert names(resolve(["signing"])) == ["signing"]
    assert names(resolve(["stream-agents"])) == ["broker", "stream-agents"]
    assert names(resolve(["monitoring-api"])) == ["broker", "signing", "monitoring-api"]
    # Whatever talks MQTT gets the platform's own Mosquitto, as Kafka users get the broker.
    assert names(resolve(["device-management"])) == ["mosquitto", "signing", "device-management"]
    assert names(resolve(["simulator"])) == [
        "broker",
        "mosquitto",
        "signing",
        "device-management",
        "ingest-bridge",
        "simulator",
    ]


def test_unknown_component_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown component nope"):
        resolve(["nope"])


def test_port_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTCTL_DEVICE_MANAGEMENT_PORT", "18002")
    comp = COMPONENTS["device-management"]
    assert comp.port == 18002
    assert comp.health_url == "http://127.0.0.1:18002/health"


def test_component_without_code_is_skipped_with_a_reason(tmp_path: Path) -> None:
    ghost = Component("ghost", "service", default_port=9999, package="no_such_package_here")
    assert not landed(ghost)
    reason = unavailable(ghost, tmp_path)
    assert reason is not None
    assert "not built yet" in reason
