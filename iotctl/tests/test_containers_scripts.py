"""The pure parts of `make containers` (scripts/containers/), offline and quick; the real run is
`make containers` itself."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "containers"


def _render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_compose", SCRIPTS / "render_compose.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_published_port_moves_to_loopback_on_a_port_of_its_own() -> None:
    render = _render()
    config = {
        "services": {
            "gateway": {"image": "nginx", "ports": ["8080:8080"]},
            "mosquitto": {"ports": ["1883:1883/tcp", {"target": 9001, "published": 9001}]},
            "redis": {"ports": ["127.0.0.1:6379:6379"]},
            "signing": {"image": "iot/signing"},
        }
    }
    picked = iter([40001, 40002, 40003, 40004])
    out, ports = render.loopback_ports(config, pick=lambda: next(picked))
    assert out["services"]["gateway"]["ports"] == ["127.0.0.1:40001:8080"]
    assert out["services"]["mosquitto"]["ports"] == [
        "127.0.0.1:40002:1883",
        "127.0.0.1:40003:9001",
    ]
    assert out["services"]["redis"]["ports"] == ["127.0.0.1:40004:6379"]
    assert "ports" not in out["services"]["signing"]
    assert ports == {
        "gateway:8080": 40001,
        "mosquitto:1883": 40002,
        "mosquitto:9001": 40003,
        "redis:6379": 40004,
    }


def test_the_real_compose_files_publish_nothing_off_loopback_once_rendered() -> None:
    """The compose file publishes 8080, 1883 and 3000 on every interface (what users want);
    the rendered run here publishes on 127.0.0.1 only, on free ports."""
    render = _render()
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    published = [s for s in config["services"].values() if s.get("ports")]
    assert published, "the compose file publishes the gateway and MQTT"
    out, ports = render.loopback_ports(config)
    for service in out["services"].values():
        for spec in service.get("ports", []):
            assert spec.startswith("127.0.0.1:"), spec
    assert "gateway:8080" in ports and "mosquitto:1883" in ports
    assert len(set(ports.values())) == len(ports)


def test_exec_form_health_checks_become_the_same_command_in_shell_form() -> None:
    """podman's compat API splits exec-form arguments at spaces; the shell form keeps them."""
    render = _render()
    config = {
        "services": {
            "signing": {
                "healthcheck": {
                    "test": [
                        "CMD",
                        "python",
                        "-c",
                        "import urllib.request; urllib.request.urlopen('x')",
                    ]
                }
            },
            "redis": {"healthcheck": {"test": ["CMD-SHELL", "redis-cli ping"]}},
            "none": {"image": "x"},
        }
    }
    out = render.shell_healthchecks(config)["services"]
    assert out["signing"]["healthcheck"]["test"] == [
        "CMD-SHELL",
        "python -c 'import urllib.request; urllib.request.urlopen('\"'\"'x'\"'\"')'",
    ]
    assert out["redis"]["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping"]
    import shlex

    assert shlex.split(out["signing"]["healthcheck"]["test"][1]) == [
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('x')",
    ]


def test_the_override_swaps_every_image_that_cannot_be_pulled_here() -> None:
    """Every infrastructure service of docker-compose.yml that names a registry image is either
    given a locally made image or put in a profile that `make containers` never starts."""
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    override = yaml.safe_load((ROOT / "docker-compose.containers.yml").read_text())["services"]
    for name, service in base.items():
        if "build" in service:
            continue  # ours: built from the real Dockerfiles (mosquitto-init included)
        swap = override.get(name)
        assert swap, f"{name} ({service['image']}) has no swap in docker-compose.containers.yml"
        assert swap.get("image", "").startswith("localhost/") or swap.get("profiles"), name
    assert set(override) <= set(base), "the override names a service compose does not have"


def test_shell_scripts_parse() -> None:
    for script in sorted(SCRIPTS.glob("**/*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert sys.executable


def test_every_file_the_scripts_use_from_the_repository_is_committed() -> None:
    """Each ``$HERE/...`` path the scripts name exists in git (a `build/` line in .gitignore
    once kept the build-time uv and npm configuration out of the repository)."""
    import re

    tracked = set(
        subprocess.run(
            ["git", "ls-files", "scripts/containers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )
    named = set()
    for script in SCRIPTS.glob("*.sh"):
        for rel in re.findall(r"\$HERE/([\w./-]+)", script.read_text()):
            if not rel.startswith(".."):
                named.add(f"scripts/containers/{rel}")
    assert "scripts/containers/build/uv.toml" in named
    missing = sorted(
        n
        for n in named
        if n not in tracked and not any(t.startswith(n.rstrip("/") + "/") for t in tracked)
    )
    assert missing == []
