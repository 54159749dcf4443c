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
