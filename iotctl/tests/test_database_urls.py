"""Every service's PostgreSQL/monitoring-store URL: one default, held as a secret.

The default lives in ``iot_common.settings.DEFAULT_DATABASE_URL``; each service declares its
URL as a ``SecretStr`` (it carries a password in a deployment), so the password never shows in
a repr, and the shared development-defaults rule refuses the passwordless local default
outside development for all of them alike (signing held a ``str`` before and started on it).
"""

from __future__ import annotations

import importlib
import os

import pytest
from pydantic import SecretStr

from iot_common.settings import DEFAULT_DATABASE_URL

#: service → (settings class, URL field, an environment variable that sets it)
URL_FIELDS = {
    "signing": ("signing.config:SigningSettings", "database_url", "SIGNING_DATABASE_URL"),
    "device-management": (
        "device_management.config:DeviceManagementSettings",
        "database_url",
        "DEVICE_MANAGEMENT_DATABASE_URL",
    ),
    "monitoring-api": (
        "monitoring_api.config:MonitoringApiSettings",
        "store_url",
        "MONITORING_STORE_URL",
    ),
    "stream-agents": (
        "stream_agents.config:AgentSettings",
        "monitoring_store_url",
        "MONITORING_STORE_URL",
    ),
}


def _settings_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith(("IOT_", "SIGNING_", "DEVICE_MANAGEMENT_", "MONITORING_", "AGENTS_")):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize("service", sorted(URL_FIELDS))
def test_every_service_defaults_to_the_one_local_database_url(
    clean_env: pytest.MonkeyPatch, service: str
) -> None:
    path, field, _ = URL_FIELDS[service]
    value = getattr(_settings_class(path)(allow_dev_defaults=True), field)
    assert isinstance(value, SecretStr)
    assert value.get_secret_value() == DEFAULT_DATABASE_URL


@pytest.mark.parametrize("service", sorted(URL_FIELDS))
def test_a_database_password_never_shows_in_the_settings(
    clean_env: pytest.MonkeyPatch, service: str
) -> None:
    path, field, env = URL_FIELDS[service]
    clean_env.setenv(env, "postgresql://iot:Wq7-hunter2@db.internal:5432/iot")
    settings = _settings_class(path)(allow_dev_defaults=True)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert getattr(settings, field).get_secret_value().endswith("@db.internal:5432/iot")


@pytest.mark.parametrize("service", sorted(URL_FIELDS))
def test_the_local_default_is_refused_outside_development(
    clean_env: pytest.MonkeyPatch, service: str
) -> None:
    path, field, env = URL_FIELDS[service]
    problems = list(_settings_class(path)(allow_dev_defaults=True).dev_defaults_in_use())
    assert any(p.startswith(f"{field} ") and "development default" in p for p in problems), problems
    clean_env.setenv(env, "postgresql://iot:Wq7-hunter2@db.internal:5432/iot")
    problems = list(_settings_class(path)(allow_dev_defaults=True).dev_defaults_in_use())
    assert not any(p.startswith(f"{field} ") for p in problems), problems
