"""Simulator settings: where the platform is (``SIMULATOR_*`` or the shared ``IOT_*`` env)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from iot_common.settings import ServiceSettings


class SimulatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore", env_file=None)

    #: The admin the simulator registers its devices as (``IOT_ADMIN_EMAIL``/``_PASSWORD``).
    admin_email: str = "admin@example.com"
    admin_password: SecretStr = SecretStr("admin-password-change-me")
    ingest_url: str = "http://127.0.0.1:8004"
    #: Seconds between two polls of an HTTP device's configuration (0: only at start).
    config_poll_interval: float = 30.0


@lru_cache
def get_settings() -> SimulatorSettings:
    return SimulatorSettings()
