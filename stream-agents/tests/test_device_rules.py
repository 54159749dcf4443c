"""``device_rules_from``: the one place a device event becomes the rules the agents apply."""

from __future__ import annotations

from typing import Any

import pytest

from iot_common.events import DeviceEvent
from monitoring_store.base import DeviceRules
from stream_agents.device_rules import device_rules_from

CONFIG = {"alert_rules": [{"id": "hot", "type": "threshold", "metric": "temp", "max": 30}]}


def _event(event_type: str, device: dict[str, Any] | None, **kw: Any) -> DeviceEvent:
    return DeviceEvent(
        event_id="e", event_type=event_type, device_id="d-1", timestamp=0.0, device=device, **kw
    )


def test_created_and_updated_devices_carry_their_rules() -> None:
    device = {"owner_id": "u-1", "type": "sensor", "config": CONFIG, "config_version": 3}
    for event_type in ("device.created", "device.updated"):
        assert device_rules_from(_event(event_type, device)) == DeviceRules(
            device_id="d-1",
            owner_id="u-1",
            device_type="sensor",
            config=CONFIG,
            version=3,
            active=True,
        )
    deactivated = device_rules_from(_event("device.updated", {**device, "active": False}))
    assert deactivated is not None and not deactivated.active


def test_a_deleted_device_is_inactive_and_the_event_owner_is_the_fallback() -> None:
    rules = device_rules_from(_event("device.deleted", None, owner_id="u-2"))
    assert rules == DeviceRules(
        device_id="d-1", owner_id="u-2", device_type=None, config={}, version=0, active=False
    )


@pytest.mark.parametrize(
    ("event_type", "device"),
    [
        ("device.credentials_rotated", {"config": CONFIG}),
        ("device.event.door_opened", None),
        ("device.updated", None),  # a lifecycle event without the device says nothing new
        ("device.updated", {}),
    ],
)
def test_events_that_do_not_change_rules_give_none(
    event_type: str, device: dict[str, Any] | None
) -> None:
    assert device_rules_from(_event(event_type, device)) is None


def test_a_version_that_is_no_number_raises() -> None:
    """The caller hands that to the processing-error callback (test_errors_e2e)."""
    with pytest.raises(ValueError):
        device_rules_from(_event("device.updated", {"config_version": "seven"}))
