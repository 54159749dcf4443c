"""Render the nginx gateway config from ``infra/nginx/`` for a local run with Debian's nginx."""

from __future__ import annotations

import os
import shutil
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path("infra") / "nginx" / "templates" / "gateway.conf.template"

#: Values the template needs, with their local defaults (the components' default ports).
DEFAULTS: dict[str, str] = {
    # A bare port listens on every interface (containers); iotctl binds to loopback.
    "GATEWAY_PORT": "8080",
    "SIGNING_UPSTREAM": "127.0.0.1:8001",
    "DEVICE_MANAGEMENT_UPSTREAM": "127.0.0.1:8002",
    "MONITORING_API_UPSTREAM": "127.0.0.1:8003",
    "INGEST_BRIDGE_UPSTREAM": "127.0.0.1:8004",
    "GATEWAY_ACCESS_LOG": "/dev/stdout",
    "GATEWAY_AUTH_RATE": "10r/m",
    "GATEWAY_AUTH_BURST": "10",
    "GATEWAY_REGISTER_RATE": "10r/m",
    "GATEWAY_REGISTER_BURST": "5",
    "GATEWAY_WS_PER_CLIENT": "20",
    "GATEWAY_WS_TOTAL": "2000",
}

# The main config for a local, unprivileged-paths nginx; the template is included in `http`.
_MAIN = """\
# Rendered by iotctl from {template}; do not edit (it is rewritten on every start).
worker_processes 1;
pid {run}/nginx.pid;
error_log {error_log} warn;
daemon off;

events {{
  worker_connections 1024;
}}

http {{
  include {mime_types};
  default_type application/octet-stream;
  sendfile on;
  tcp_nodelay on;
  client_body_temp_path {run}/tmp/client_body;
  proxy_temp_path {run}/tmp/proxy;
  fastcgi_temp_path {run}/tmp/fastcgi;
  uwsgi_temp_path {run}/tmp/uwsgi;
  scgi_temp_path {run}/tmp/scgi;
  include {run}/conf.d/*.conf;
}}
"""


class GatewayUnavailable(Exception):
    """nginx is missing or the template cannot be rendered."""


def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Fill ``${NAME}`` placeholders the way the nginx image's envsubst does; keep ``$vars``."""
    missing = [
        m.group("braced")
        for m in string.Template.pattern.finditer(text)
        if m.group("braced") and m.group("braced") not in values
    ]
    if missing:
        raise GatewayUnavailable(f"gateway template needs {', '.join(sorted(set(missing)))}")
    return string.Template(text).safe_substitute(values)


@dataclass
class RenderedGateway:
    prefix: Path
    config: Path
    port: int

    def command(self, nginx: str) -> list[str]:
        return [nginx, "-p", str(self.prefix), "-c", str(self.config)]


def render(
    root: Path,
    run: Path,
    *,
    overrides: Mapping[str, str] | None = None,
    error_log: str = "/dev/stderr",
) -> RenderedGateway:
    """Write ``run/nginx/nginx.conf`` and ``conf.d/gateway.conf`` for the local stack."""
    template = root / TEMPLATE
    if not template.is_file():
        raise GatewayUnavailable(f"gateway template {template} is missing")
    values = {**DEFAULTS, **{k: v for k, v in os.environ.items() if k in DEFAULTS}}
    values.update(overrides or {})
    prefix = run / "nginx"
    (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        tmp = prefix / "tmp" / sub
        tmp.mkdir(parents=True, exist_ok=True)
        # nginx's workers drop to an unprivileged user when started as root.
        tmp.chmod(0o1777)
    (prefix / "tmp").chmod(0o1777)
    (prefix / "conf.d" / "gateway.conf").write_text(
        render_template(template.read_text(encoding="utf-8"), values), encoding="utf-8"
    )
    mime = "/etc/nginx/mime.types"
    config = prefix / "nginx.conf"
    main = _MAIN.format(
        template=TEMPLATE,
        run=prefix,
        error_log=error_log,
        mime_types=mime if Path(mime).is_file() else f"{prefix}/conf.d/*.types",
    )
    config.write_text(main, encoding="utf-8")
    port = int(values["GATEWAY_PORT"].rsplit(":", 1)[-1])
    return RenderedGateway(prefix=prefix, config=config, port=port)
