"""The device changes the dashboard relays to device-management: its limits are the relay's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from device_management.config import DeviceManagementSettings
from device_management.schemas import MAX_PAYLOAD_BYTES
from iot_common.device_config import MAX_METRICS, MAX_RULES
from monitoring_api.api.routes.session import CONFIG_ENVELOPE, CONFIG_RELAY_MAX_BYTES
from monitoring_api.config import MonitoringApiSettings

#: The store plays no part here.
ON_POSTGRES = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


def largest_config() -> dict[str, Any]:
    """A config at device-management's own bounds: 64 metrics, 64 rules, and settings of
    just under 16 KiB (as UTF-8 JSON) of non-ASCII text, which a client that escapes it (as
    Python's ``json`` does) sends as three times as many bytes."""
    metrics = [
        {"name": f"m{i:02d}_" + "x" * 59, "unit": "°C" + "u" * 30, "min": -1e9, "max": 1e9}
        for i in range(MAX_METRICS)
    ]
    rules = [
        {
            "type": "threshold",
            "id": f"r{i:02d}_" + "y" * 59,
            "metric": metrics[i]["name"],
            "op": "above",
            "value": 123456.789,
            "aggregate": "p95",
            "consecutive_windows": 1000,
            "window_seconds": 86_400,
            "severity": "critical",
        }
        for i in range(MAX_RULES)
    ]
    # An emoji is 4 bytes of UTF-8 and 12 escaped (a surrogate pair).
    settings: dict[str, Any] = {"note": "🌡" * ((MAX_PAYLOAD_BYTES - 16) // 4)}
    assert len(json.dumps(settings, ensure_ascii=False).encode()) <= MAX_PAYLOAD_BYTES
    return {"settings": settings, "metrics": metrics, "rules": rules}


def test_the_relay_takes_what_device_management_takes() -> None:
    envelope = sum(map(len, CONFIG_ENVELOPE))
    assert CONFIG_RELAY_MAX_BYTES + envelope == DeviceManagementSettings().max_body_bytes
    # ... and more than every other route of this API (the limit it had before).
    assert MonitoringApiSettings().max_body_bytes < CONFIG_RELAY_MAX_BYTES


@ON_POSTGRES
async def test_the_largest_config_goes_through_and_one_byte_more_is_a_clear_413(
    app_factory: Any, registry: Any, make_user: Any
) -> None:
    alice = make_user("operator")
    dev = await registry.add(alice, name="big", metrics=["temp"])
    app = await app_factory(kafka_enabled=False)
    config = largest_config()
    text = json.dumps(config, indent=2).encode()  # escaped, indented: as Python clients send
    assert 64 * 1024 < len(text) <= CONFIG_RELAY_MAX_BYTES
    # Padded with spaces to exactly the relay's limit: still the same config.
    at_limit = text + b" " * (CONFIG_RELAY_MAX_BYTES - len(text))
    headers = {**alice.headers, "Content-Type": "application/json"}

    r = await app.client.put(f"/monitoring/devices/{dev}/config", content=at_limit, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["config_version"] == 2
    held = (await registry.http.get(f"/devices/{dev}", headers=alice.headers)).json()
    assert held["config"]["settings"] == config["settings"]
    assert len(held["config"]["rules"]) == MAX_RULES

    r = await app.client.put(
        f"/monitoring/devices/{dev}/config", content=at_limit + b" ", headers=headers
    )
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["message"] == f"request body exceeds {CONFIG_RELAY_MAX_BYTES} bytes"
    held = (await registry.http.get(f"/devices/{dev}", headers=alice.headers)).json()
    assert held["config_version"] == 2  # nothing changed

    # Every other route keeps this API's own limit.
    r = await app.client.post(
        "/monitoring/subscriptions", content=at_limit[: 64 * 1024 + 1], headers=headers
    )
    assert r.status_code == 413
