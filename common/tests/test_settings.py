import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from iot_common.settings import ServiceSettings


class _DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")

    port: int = 1234


def test_defaults_work_without_environment(monkeypatch) -> None:
    for var in ("IOT_KAFKA_BOOTSTRAP", "IOT_TOPIC_PREFIX", "DEMO_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    s = _DemoSettings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topics.telemetry_raw == "telemetry.raw"


def test_shared_iot_variables_apply_to_every_service(monkeypatch) -> None:
    monkeypatch.setenv("IOT_KAFKA_BOOTSTRAP", "10.0.0.1:9093")
    monkeypatch.setenv("IOT_TOPIC_PREFIX", "run1.")
    s = _DemoSettings()
    assert s.kafka_bootstrap == "10.0.0.1:9093"
    assert s.topics.alerts == "run1.alerts"


def test_service_prefix_wins_over_shared(monkeypatch) -> None:
    monkeypatch.setenv("IOT_KAFKA_BOOTSTRAP", "shared:9092")
    monkeypatch.setenv("DEMO_KAFKA_BOOTSTRAP", "own:9092")
    monkeypatch.setenv("DEMO_PORT", "999")
    s = _DemoSettings()
    assert s.kafka_bootstrap == "own:9092"
    assert s.port == 999


def test_secrets_are_not_shown(monkeypatch) -> None:
    monkeypatch.setenv("IOT_RABBITMQ_URL", "amqp://user:hunter2@host/")
    s = _DemoSettings()
    assert "hunter2" not in repr(s)
    assert s.rabbitmq_url.get_secret_value().endswith("@host/")


class _SecretSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")

    admin_password: SecretStr = SecretStr("demo-default-password")
    database_url: str = "postgresql://app@127.0.0.1/app"


def _real_secrets(monkeypatch) -> None:
    monkeypatch.setenv("IOT_INTERNAL_TOKEN", "7d0c5e2b9a51f4e3")
    monkeypatch.setenv("IOT_RABBITMQ_URL", "amqp://iot:Zq8r1Xw@rabbitmq:5672/")
    monkeypatch.setenv("IOT_REDIS_URL", "redis://:Pw9e4sLk@redis:6379/0")
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "a real one, long enough")


def test_development_defaults_are_refused_without_the_dev_flag(monkeypatch) -> None:
    monkeypatch.delenv("IOT_ALLOW_DEV_DEFAULTS", raising=False)
    with pytest.raises(ValidationError) as info:
        _SecretSettings()
    message = str(info.value)
    # Every default in use is named, with the variable that replaces it.
    assert "internal_token (set IOT_INTERNAL_TOKEN): the development default" in message
    assert "admin_password (set DEMO_ADMIN_PASSWORD)" in message  # a subclass's own secret
    assert "rabbitmq_url" in message
    assert "redis_url (set IOT_REDIS_URL): Redis without a password" in message
    assert "IOT_ALLOW_DEV_DEFAULTS=true" in message
    # The secrets themselves are not shown.
    assert "dev-internal-token" not in message and "demo-default-password" not in message


def test_published_placeholders_are_refused_too(monkeypatch) -> None:
    monkeypatch.delenv("IOT_ALLOW_DEV_DEFAULTS", raising=False)
    _real_secrets(monkeypatch)
    assert list(_SecretSettings().dev_defaults_in_use()) == []
    for var, value in [
        ("IOT_INTERNAL_TOKEN", "CHANGE_ME"),  # the Kubernetes secret template's placeholder
        ("IOT_RABBITMQ_URL", "amqp://guest:guest@rabbitmq:5672/"),
        ("DEMO_DATABASE_URL", "postgresql://postgres:postgres@db/iot"),
        ("IOT_REDIS_URL", "redis://redis:6379/0"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(ValidationError, match="refusing to start"):
                _SecretSettings()


def test_dev_flag_lets_the_local_defaults_through(monkeypatch) -> None:
    monkeypatch.setenv("IOT_ALLOW_DEV_DEFAULTS", "true")
    s = _SecretSettings()
    assert s.internal_token.get_secret_value() == "dev-internal-token"
    assert len(list(s.dev_defaults_in_use())) >= 4
