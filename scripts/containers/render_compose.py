"""Render the compose configuration `make containers` runs: the merged config of
docker-compose.yml and docker-compose.containers.yml (from `docker-compose config`) with every
published port moved to a free port on 127.0.0.1, so the stack collides with nothing on this
shared machine (its own Mosquitto on 1883, other runs' gateways) and is reached on loopback only.

    docker-compose ... config | python3 render_compose.py OUT.yml PORTS.json
PORTS.json maps "service:container_port" to the host port.
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
from collections.abc import Callable
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_port(spec: Any) -> int:
    """The container side of a compose port ("8080:8080", "127.0.0.1:1883:1883/tcp", 1883, or
    the long form {target: 8080, published: ...})."""
    if isinstance(spec, dict):
        return int(spec["target"])
    text = str(spec).split("/", 1)[0]
    return int(text.rsplit(":", 1)[-1])


def loopback_ports(
    config: dict[str, Any], pick: Callable[[], int] = free_port
) -> tuple[dict[str, Any], dict[str, int]]:
    """Every published port of every service, re-published on 127.0.0.1 at a port from
    ``pick``; returns the new config and the map "service:container_port" -> host port."""
    ports: dict[str, int] = {}
    for name, service in config.get("services", {}).items():
        specs = service.get("ports")
        if not specs:
            continue
        new = []
        for spec in specs:
            target = container_port(spec)
            host = pick()
            ports[f"{name}:{target}"] = host
            new.append(f"127.0.0.1:{host}:{target}")
        service["ports"] = new
    return config, ports


def shell_healthchecks(config: dict[str, Any]) -> dict[str, Any]:
    """Each exec-form health check ["CMD", ...] as the same command in shell form.

    podman 4.3's Docker-compatible API splits every argument of an exec-form test at its spaces
    (["CMD", "python", "-c", "import os; ..."] runs `python -c import`), so such a check never
    passes; ["CMD-SHELL", "<quoted command>"] runs the same argv through /bin/sh."""
    for service in config.get("services", {}).values():
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            service["healthcheck"]["test"] = ["CMD-SHELL", shlex.join(test[1:])]
    return config


def main() -> None:
    out, ports_out = sys.argv[1], sys.argv[2]
    config, ports = loopback_ports(shell_healthchecks(yaml.safe_load(sys.stdin)))
    with open(out, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    with open(ports_out, "w", encoding="utf-8") as fh:
        json.dump(ports, fh, indent=2)


if __name__ == "__main__":
    main()
