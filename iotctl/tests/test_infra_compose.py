"""``docker-compose.yml`` and the service Dockerfiles, validated without a Docker engine."""

from __future__ import annotations

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
ONE_SHOT = {"signing-migrate", "device-management-migrate", "simulator"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_docker_compose_config_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (make test installs it)")
    for args in ([], ["--profile", "demo"]):
        result = subprocess.run(
            [tool, "-f", str(COMPOSE), *args, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr


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
    assert {"redpanda", "mongodb"} <= set(services["stream-agents"]["depends_on"])
    gateway_deps = set(services["gateway"]["depends_on"])
    assert {"signing", "device-management", "monitoring-api", "ingest-bridge"} <= gateway_deps


def test_stateful_services_use_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("redpanda", "mongodb", "postgres", "redis", "rabbitmq", "mosquitto"):
        mounts = compose["services"][name]["volumes"]
        named = [m.split(":")[0] for m in mounts if not m.startswith(".")]
        assert named, f"{name} keeps its data in no named volume"
        assert set(named) <= declared
    for svc in compose["services"].values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"bind mount {source} does not exist"
            else:
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
