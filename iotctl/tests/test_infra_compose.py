"""``docker-compose.yml`` and the service Dockerfiles, validated without a Docker engine."""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {
    # folder: default port (None: no HTTP endpoint)
    "signing": 8001,
    "device-management": 8002,
    "monitoring-api": 8003,
    "ingest-bridge": 8004,
    "stream-agents": 6066,
    "simulator": None,
}
INFRA = {"redpanda", "redpanda-console", "mongodb", "postgres", "redis", "rabbitmq", "mosquitto"}
ONE_SHOT = {
    "rabbitmq-setup",
    "signing-migrate",
    "device-management-migrate",
    "monitoring-store-migrate",
    "mosquitto-init",
    "simulator",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


#: What `.env` must provide; compose refuses to start while any one is missing or empty.
SECRETS = (
    "POSTGRES_PASSWORD",
    "MONGO_PASSWORD",
    "RABBITMQ_PASSWORD",
    "REDIS_PASSWORD",
    "IOT_INTERNAL_TOKEN",
    "IOT_ADMIN_PASSWORD",
    "SIGNING_KEY_PASSPHRASE",
    "GRAFANA_ADMIN_PASSWORD",
    "MQTT_ADMIN_PASSWORD",
    "MQTT_BRIDGE_PASSWORD",
)


def docker_compose() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (make test installs it)")
    return tool


def compose_config(
    env_file: Path, *files: Path, profile: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with exactly ``env_file``'s variables (no ./.env, no shell's)."""
    args = [a for f in (files or (COMPOSE,)) for a in ("-f", str(f))]
    args += ["--profile", profile] if profile else []
    return subprocess.run(
        [docker_compose(), *args, "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        check=False,
    )


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `.env` as `scripts/generate-env.sh` writes it: every secret fresh and random."""
    where = tmp_path_factory.mktemp("compose-env")
    subprocess.run(["bash", str(ROOT / "scripts" / "generate-env.sh"), str(where)], check=True)
    return where / ".env"


def env_values(env_file: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in env_file.read_text().splitlines())
    return {k: v for k, sep, v in pairs if sep and not k.startswith("#")}


def test_docker_compose_config_accepts_the_file(env_file: Path) -> None:
    for profile in (None, "demo"):
        result = compose_config(env_file, profile=profile)
        assert result.returncode == 0, result.stderr
    values = env_values(env_file)
    assert all(values[name] for name in SECRETS)
    assert len({values[name] for name in SECRETS}) == len(SECRETS)  # each its own


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_a_secret(
    env_file: Path, missing: str, tmp_path: Path
) -> None:
    values = {**env_values(env_file), missing: ""}  # as `cp .env.example .env` leaves it
    partial = tmp_path / ".env"
    partial.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = compose_config(partial)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_env_example_commits_no_working_secret() -> None:
    values = env_values(ROOT / ".env.example")
    for name in SECRETS:
        assert values[name] == "", f"{name} has a value in .env.example"


def rendered(env_file: Path) -> dict[str, Any]:
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


SETTINGS = {
    "signing": "signing.config:SigningSettings",
    "device-management": "device_management.config:DeviceManagementSettings",
    "ingest-bridge": "ingest_bridge.config:IngestBridgeSettings",
    "stream-agents": "stream_agents.config:AgentSettings",
    "monitoring-api": "monitoring_api.config:MonitoringApiSettings",
}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_services_accept_compose_s_settings_and_refuse_development_defaults(
    env_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    """What compose hands a service passes the services' rule; the repository's defaults fail."""
    module, _, name = SETTINGS[service].partition(":")
    settings_class = getattr(importlib.import_module(module), name)
    for key in list(os.environ):
        if key.startswith(("IOT_", "SIGNING_", "DEVICE_MANAGEMENT_", "MONITORING_")):
            monkeypatch.delenv(key)

    def problems(env_file: Path) -> list[str]:
        env = rendered(env_file)["services"][service]["environment"]
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, str(value))
            return list(settings_class(allow_dev_defaults=True).dev_defaults_in_use())

    assert problems(env_file) == []
    # Someone filled .env with the old development values: compose starts, the services do not.
    defaults = tmp_path / ".env"
    defaults.write_text(
        env_file.read_text()
        + "IOT_INTERNAL_TOKEN=dev-internal-token\nRABBITMQ_PASSWORD=guest\n"
        # The services' own AMQP accounts, with the passwords a local run uses.
        + "AMQP_BRIDGE_PASSWORD=dev-amqp-ingest-bridge\n"
        + "AMQP_PUBLISHER_PASSWORD=dev-amqp-device-management\n"
    )
    found = problems(defaults)
    assert any(p.startswith("internal_token") for p in found), found
    assert any(p.startswith("rabbitmq_url") for p in found), found


def test_every_container_of_a_service_image_gets_settings_its_service_accepts(
    env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-shot steps (migrations, account set-up) run the service's settings too."""
    for key in list(os.environ):
        if key.startswith(("IOT_", "SIGNING_", "DEVICE_MANAGEMENT_", "MONITORING_", "INGEST_")):
            monkeypatch.delenv(key)
    services = rendered(env_file)["services"]
    checked = []
    for name, service in sorted(services.items()):
        image = str(service.get("image", "")).removeprefix("iot/").partition(":")[0]
        if image not in SETTINGS:
            continue
        module, _, cls = SETTINGS[image].partition(":")
        settings_class = getattr(importlib.import_module(module), cls)
        with monkeypatch.context() as m:
            for key, value in (service.get("environment") or {}).items():
                m.setenv(key, str(value))
            found = list(settings_class(allow_dev_defaults=True).dev_defaults_in_use())
        assert found == [], f"{name} ({image} image): {found}"
        checked.append(name)
    assert {"mosquitto-init", "device-management-migrate", "rabbitmq-setup"} <= set(checked)


def port_of(entry: str | dict[str, Any]) -> tuple[str | None, str]:
    """(host address, published port) of a rendered port, short ("ip:pub:target") or long."""
    if isinstance(entry, dict):
        return entry.get("host_ip"), str(entry.get("published"))
    parts = entry.split(":")
    return (parts[0] if len(parts) == 3 else None), parts[-2]


def test_infrastructure_ports_are_not_published(env_file: Path) -> None:
    services = rendered(env_file)["services"]
    published = {
        name: [port_of(p)[1] for p in svc.get("ports", [])]
        for name, svc in services.items()
        if svc.get("ports")
    }
    # Devices (MQTT), users (the gateway) and operators (Grafana, with its password) only.
    assert published == {
        "gateway": ["8080"],
        "mosquitto": ["1883", "8883"],  # MQTT, and MQTT over TLS
        "grafana": ["3000"],
    }


def test_infrastructure_ports_are_opt_in_and_on_loopback(env_file: Path) -> None:
    result = compose_config(env_file, COMPOSE, ROOT / "docker-compose.ports.yml")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    opted = {
        name: {port_of(p) for p in services[name]["ports"]}
        for name in ("redpanda", "redpanda-console", "rabbitmq", "prometheus", "redis")
    }
    for name, ports in opted.items():
        assert ports and all(host == "127.0.0.1" for host, _ in ports), (name, ports)


def test_redis_requires_a_password(env_file: Path) -> None:
    services = rendered(env_file)["services"]
    password = env_values(env_file)["REDIS_PASSWORD"]
    redis = services["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert redis["environment"]["REDIS_PASSWORD"] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password  # the health check authenticates
    for name in ("signing", "device-management", "ingest-bridge", "monitoring-api"):
        assert services[name]["environment"]["IOT_REDIS_URL"].startswith(f"redis://:{password}@")


def test_signing_trusts_exactly_the_gateway_and_the_sign_in_relay(env_file: Path) -> None:
    services = rendered(env_file)["services"]
    fixed = {
        name: services[name]["networks"]["default"]["ipv4_address"]
        for name in ("gateway", "monitoring-api")
    }
    trusted = services["signing"]["environment"]["SIGNING_FORWARDED_ALLOW_IPS"].split(",")
    assert sorted(trusted) == sorted(fixed.values())
    relay = json.loads(services["monitoring-api"]["environment"]["MONITORING_API_TRUSTED_PROXIES"])
    assert relay == [fixed["gateway"]]
    # Fixed addresses sit outside the range other containers get theirs from.
    (pool,) = rendered(env_file)["networks"]["default"]["ipam"]["config"]
    dynamic = ipaddress.ip_network(pool["ip_range"])
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(pool["subnet"]) for a in trusted)
    assert not any(ipaddress.ip_address(a) in dynamic for a in trusted)


def test_matches_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    # Debian's docker-compose ships the compose specification's JSON schema.
    schema_path = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
    if not schema_path.is_file():
        pytest.skip("no copy of the compose specification schema on this machine")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(compose, schema)


def test_has_the_whole_platform(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    expected = INFRA | set(SERVICES) | {"gateway", "prometheus", "grafana"}
    assert expected <= services, expected - services
    assert compose["services"]["simulator"]["profiles"] == ["demo"]
    for name, svc in compose["services"].items():
        if name != "simulator":
            assert "profiles" not in svc, f"{name} should start without a profile"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name in ONE_SHOT or name == "redpanda-console":
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must name conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if dep in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, dep)
            else:
                assert condition == "service_healthy", (name, dep)
                assert services[dep].get("healthcheck"), f"{dep} must have a healthcheck"
    # The services start only after their migrations and their infrastructure.
    assert "signing-migrate" in services["signing"]["depends_on"]
    assert "device-management-migrate" in services["device-management"]["depends_on"]
    for store_user in ("stream-agents", "monitoring-api"):
        assert "monitoring-store-migrate" in services[store_user]["depends_on"]
    assert {"redpanda", "mongodb"} <= set(services["stream-agents"]["depends_on"])
    gateway_deps = set(services["gateway"]["depends_on"])
    assert {"signing", "device-management", "monitoring-api", "ingest-bridge"} <= gateway_deps


def test_stateful_services_use_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("redpanda", "mongodb", "postgres", "redis", "rabbitmq", "mosquitto"):
        mounts = compose["services"][name]["volumes"]
        # Bind mounts: ./files of the repository, ${VAR} directories from the environment.
        named = [m.split(":")[0] for m in mounts if not m.startswith((".", "$"))]
        assert named, f"{name} keeps its data in no named volume"
        assert set(named) <= declared
    for svc in compose["services"].values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"bind mount {source} does not exist"
            elif not source.startswith("$"):  # a directory the environment names
                assert source in declared, f"volume {source} is not declared"


def test_monitoring_store_is_mongodb(compose: dict[str, Any]) -> None:
    for name in ("stream-agents", "monitoring-api"):
        env = compose["services"][name]["environment"]
        assert env["MONITORING_STORE_URL"].startswith("mongodb://")
        assert "@mongodb:27017" in env["MONITORING_STORE_URL"]


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    secretish = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|PRIVATE_KEY", re.I)
    text = COMPOSE.read_text()
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if secretish.search(key):
                assert isinstance(value, str) and value.startswith("${"), (
                    f"{name}: {key} must be interpolated from the environment"
                )
    # Credentials inside URLs are interpolated too.
    for url in re.findall(r"(?:amqp|mongodb|postgresql)://[^\s]+", text):
        userinfo = url.split("://", 1)[1].split("@", 1)[0]
        assert "${" in userinfo or "@" not in url, url


def test_gateway_uses_the_same_nginx_template_as_iotctl(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert "./infra/nginx/templates:/etc/nginx/templates:ro" in gateway["volumes"]
    template = (ROOT / "infra/nginx/templates/gateway.conf.template").read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    assert needed <= set(gateway["environment"]), needed - set(gateway["environment"])
    pattern = re.compile(gateway["environment"]["NGINX_ENVSUBST_FILTER"].replace("$$", "$"))
    assert all(pattern.search(name) for name in needed)
    assert gateway["ports"] == ["8080:8080"]


def test_services_are_built_from_their_dockerfiles(compose: dict[str, Any]) -> None:
    for folder in SERVICES:
        build = compose["services"][folder]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == f"{folder}/Dockerfile"


# ---------------------------------------------------------------------------- Dockerfiles


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file():
        return str(local)
    return shutil.which("hadolint")


@pytest.mark.parametrize("folder", sorted(SERVICES))
def test_dockerfile_passes_hadolint(folder: str) -> None:
    tool = hadolint_binary()
    if tool is None:
        pytest.skip("hadolint is not installed (it is in the workspace's dev group)")
    result = subprocess.run(
        [tool, "--no-color", str(ROOT / folder / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("folder", sorted(SERVICES))
def test_dockerfile_has_the_required_instructions(folder: str) -> None:
    steps = instructions(ROOT / folder / "Dockerfile")
    kinds = [k for k, _ in steps]
    froms = [i for i, k in enumerate(kinds) if k == "FROM"]
    assert len(froms) >= 2, "multi-stage: build and runtime images"
    final = steps[froms[-1] :]

    # Dependencies first from the lock, then the source.
    text = [f"{k} {a}" for k, a in steps]
    lock_copy = next(i for i, t in enumerate(text) if t.startswith("COPY") and "uv.lock" in t)
    deps_sync = next(i for i, t in enumerate(text) if "--no-install-workspace" in t)
    src_copy = next(i for i, t in enumerate(text) if t.startswith(f"COPY {folder}/ "))
    assert lock_copy < deps_sync < src_copy
    assert "--frozen" in text[deps_sync]
    assert any("uv sync --frozen" in t and "--no-dev" in t for t in text[src_copy:])

    # Non-root at run time.
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime image must switch to an unprivileged user"
    assert users[-1].split(":")[0] not in {"0", "root"}

    # Health check (the simulator is a job without an endpoint and says so).
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert health, "HEALTHCHECK missing"
    port = SERVICES[folder]
    if port is None:
        assert health[-1].strip() == "NONE"
    else:
        assert f"127.0.0.1:{port}/health" in health[-1]
        assert [a for k, a in final if k == "EXPOSE"] == [str(port)]

    # The entry point is the service's console script.
    scripts = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["scripts"]
    entry = json.loads(next(a for k, a in final if k == "ENTRYPOINT"))
    assert entry[0] in scripts

    # No secret baked into the image.
    for kind, args in steps:
        if kind in {"ENV", "ARG"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY", args, re.I), args


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "**/node_modules", ".run", "**/*.pem", "**/.env"):
        assert entry in ignored


@pytest.mark.parametrize("folder", ["signing", "stream-agents"])
def test_dockerfile_build_stage_installs_the_service(folder: str, tmp_path: Path) -> None:
    """Replay the build stage's COPY and `uv sync` steps without Docker, from the lock."""
    # `uv run` names itself in $UV; `make test` runs pytest through it.
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    steps = instructions(ROOT / folder / "Dockerfile")
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    build = steps[froms[-2] + 1 : froms[-1]]  # the stage before the runtime image
    workdir = tmp_path / "src"
    workdir.mkdir()
    venv = tmp_path / "venv"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))},
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "hardlink",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    ran = 0
    for kind, args in build:
        if kind == "COPY" and not args.startswith("--from"):
            *sources, dest = args.split()
            for source in sources:
                src = ROOT / source
                target = workdir / dest / (src.name if dest.endswith("/") and src.is_file() else "")
                if src.is_dir():
                    shutil.copytree(
                        src,
                        workdir / dest,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("tests", "node_modules", "__pycache__"),
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, target)
        elif kind == "RUN":
            command = [w for w in args.split() if not w.startswith("--mount")]
            assert command[:2] == ["uv", "sync"], command
            result = subprocess.run(
                [uv, *command[1:]], cwd=workdir, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr[-2000:]
            ran += 1
    assert ran == 2, "dependencies, then the packages"
    script = venv / "bin" / folder
    assert script.exists()
    # Installed as a regular package (not editable): the code lives in the venv.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            f"import {folder.replace('-', '_')} as m; print(m.__file__)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(venv) in probe.stdout


def test_mosquitto_refuses_anonymous_clients_and_gets_its_accounts_first(
    compose: dict[str, Any],
) -> None:
    """Compose's broker runs the shipped dynamic-security config (tested with a real broker in
    device-management/tests/test_mqtt_config.py), written by the init step before it starts."""
    services = compose["services"]
    conf = (ROOT / "infra" / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "mosquitto_dynamic_security.so" in conf and "max_packet_size 262144" in conf
    init = services["mosquitto-init"]
    assert init["command"][0] == "mqtt-config"
    assert {"DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD", "INGEST_BRIDGE_MQTT_PASSWORD"} <= set(
        init["environment"]
    )
    deps = services["mosquitto"]["depends_on"]
    assert deps["mosquitto-init"]["condition"] == "service_completed_successfully"
    assert "INGEST_BRIDGE_MQTT_PASSWORD" in services["ingest-bridge"]["environment"]


def test_mosquitto_serves_tls_on_8883_with_the_certificate_from_the_environment(
    env_file: Path, tmp_path: Path
) -> None:
    """The broker's TLS listener takes its certificate and key from MQTT_TLS_DIR (a live TLS
    client against the shipped config: iotctl/tests/test_mosquitto.py); compose refuses to
    start without it."""
    conf = (ROOT / "infra" / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 8883 0.0.0.0" in conf and "certfile /mosquitto/tls/tls.crt" in conf
    mosquitto = rendered(env_file)["services"]["mosquitto"]
    (tls,) = [v for v in mosquitto["volumes"] if ":/run/mqtt-tls:" in v]
    assert tls == f"{ROOT}/infra/mosquitto/tls:/run/mqtt-tls:ro"
    assert "/run/mqtt-tls/tls.key /mosquitto/tls/" in mosquitto["command"][-1]
    assert env_values(env_file)["MQTT_TLS_DIR"] == "./infra/mosquitto/tls"
    assert (env_file.parent / "infra" / "mosquitto" / "tls" / "tls.key").stat().st_mode & 0o077 == 0
    values = {**env_values(env_file), "MQTT_TLS_DIR": ""}
    partial = tmp_path / ".env"
    partial.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = compose_config(partial)
    assert result.returncode != 0 and "set MQTT_TLS_DIR in .env" in result.stderr


def test_device_management_provisions_every_device_on_both_brokers(
    env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker refuses anonymous clients, so a device registered through compose can
    connect only if device-management creates its MQTT client and RabbitMQ user."""
    from device_management.config import DeviceManagementSettings

    for key in list(os.environ):
        if key.startswith(("IOT_", "DEVICE_MANAGEMENT_")):
            monkeypatch.delenv(key)
    env = rendered(env_file)["services"]["device-management"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = DeviceManagementSettings()
    assert settings.mqtt_provisioning and settings.amqp_provisioning


def test_platform_containers_run_hardened_as_in_kubernetes(compose: dict[str, Any]) -> None:
    """Every container of the platform's images: read-only root (scratch in /tmp only), no
    capability, no privilege escalation — what the k8s manifests set — except the one step
    that must hand Mosquitto's fresh volume to its user (root, chown)."""
    for name, service in compose["services"].items():
        if not str(service.get("image", "")).startswith("iot/") or name == "mosquitto-init":
            continue
        assert service.get("read_only") is True, name
        assert [t.split(":")[0] for t in service.get("tmpfs", [])] == ["/tmp"], name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
