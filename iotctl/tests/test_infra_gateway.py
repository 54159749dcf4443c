"""The nginx gateway from ``infra/nginx/`` for real: Debian's nginx in front of local upstreams.

Each upstream is a small echo service that says who it is and what it received, so the tests
see routing, request ids, limits and the WebSocket upgrade exactly as a service behind the
gateway would.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from iotctl import gateway
from iotctl.broker import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    gateway.nginx_binary() is None, reason="nginx is not installed (make test installs it)"
)


def echo_app(service: str) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        if request.url.path.endswith("/throttled"):
            return JSONResponse(
                {"error": "slow down"}, status_code=429, headers={"Retry-After": "7"}
            )
        return JSONResponse(
            {
                "service": service,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "request_id": request.headers.get("x-request-id"),
                "forwarded_for": request.headers.get("x-forwarded-for"),
                "body_bytes": len(body),
            },
            status_code=202 if request.url.path.startswith("/ingest/") else 200,
            headers={
                # Services echo the request id themselves; the gateway must not duplicate it.
                "X-Request-ID": request.headers.get("x-request-id", ""),
                # Whatever a service says about framing and scripts, the gateway's policy holds.
                "Content-Security-Policy": "default-src *",
                "X-Frame-Options": "ALLOWALL",
            },
        )

    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        async for message in socket.iter_text():
            await socket.send_text(f"{service}:{message}")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            WebSocketRoute("/ws/monitoring/", ws),
            WebSocketRoute("/ws/monitoring", ws),
            Route("/{path:path}", echo, methods=methods),
        ]
    )


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # run in a thread
        pass


@dataclass
class Gateway:
    url: str
    ws_url: str
    access_log: Path


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, int]]:
    servers, threads, ports = [], [], {}
    for service in ("signing", "device-management", "monitoring-api", "ingest-bridge"):
        port = free_port()
        config = uvicorn.Config(
            echo_app(service), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        server = _Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
        ports[service] = port
    deadline = time.monotonic() + 10
    while not all(s.started for s in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield ports
    for server in servers:
        server.should_exit = True
    for thread in threads:
        thread.join(5)


def start_nginx(run: Path, overrides: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    nginx = gateway.nginx_binary()
    assert nginx is not None
    rendered = gateway.render(ROOT, run, overrides=overrides, error_log=str(run / "error.log"))
    check = subprocess.run(
        [*rendered.command(nginx), "-t"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        rendered.command(nginx), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{rendered.port}/gateway/health").status_code == 200:
                return proc, rendered.port
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.terminate()
    raise AssertionError((run / "error.log").read_text())


def upstream_overrides(upstreams: dict[str, int], **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_PORT": str(free_port()),
        "SIGNING_UPSTREAM": f"127.0.0.1:{upstreams['signing']}",
        "DEVICE_MANAGEMENT_UPSTREAM": f"127.0.0.1:{upstreams['device-management']}",
        "MONITORING_API_UPSTREAM": f"127.0.0.1:{upstreams['monitoring-api']}",
        "INGEST_BRIDGE_UPSTREAM": f"127.0.0.1:{upstreams['ingest-bridge']}",
        **extra,
    }


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    run = tmp_path_factory.mktemp("gateway")
    access_log = run / "access.log"
    proc, port = start_nginx(
        run,
        {
            **upstream_overrides(upstreams),
            "GATEWAY_ACCESS_LOG": str(access_log),
            # One login a minute after a burst of 3: the 5th quick attempt must be refused.
            "GATEWAY_AUTH_RATE": "1r/m",
            "GATEWAY_AUTH_BURST": "3",
        },
    )
    yield Gateway(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", access_log)
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize(
    ("method", "path", "service"),
    [
        ("POST", "/users/add", "signing"),
        ("GET", "/users/?page=2", "signing"),
        ("POST", "/users/verify-token", "signing"),
        ("GET", "/.well-known/jwks.json", "signing"),
        ("GET", "/devices", "device-management"),
        ("PATCH", "/devices/3f1c/config", "device-management"),
        ("GET", "/monitoring/devices/d1/stats?metric=temp", "monitoring-api"),
        ("GET", "/dashboard", "monitoring-api"),
        ("GET", "/dashboard/assets/app.js", "monitoring-api"),
        ("POST", "/ingest/device-1", "ingest-bridge"),
    ],
)
def test_routes(gw: Gateway, method: str, path: str, service: str) -> None:
    body = b'{"ts": 1, "metrics": {"t": 1}}' if method in {"POST", "PATCH"} else None
    r = httpx.request(method, gw.url + path, content=body, timeout=5)
    assert r.status_code in (200, 202), r.text
    seen = r.json()
    assert seen["service"] == service
    assert seen["method"] == method
    expected_path, _, expected_query = path.partition("?")
    assert seen["path"] == expected_path
    assert seen["query"] == expected_query
    assert seen["forwarded_for"] == "127.0.0.1"


def test_unknown_path_is_a_json_404(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/admin/secret", timeout=5)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "not_found"


def test_request_id_passed_through(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/devices", headers={"X-Request-ID": "req-abc-123"}, timeout=5)
    assert r.json()["request_id"] == "req-abc-123"
    assert r.headers.get_list("x-request-id") == ["req-abc-123"]


def test_request_id_generated_when_absent(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/devices", timeout=5)
    rid = r.json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert r.headers.get_list("x-request-id") == [rid]
    other = httpx.get(gw.url + "/devices", timeout=5).json()["request_id"]
    assert other != rid


def test_access_log_is_json_lines_with_request_ids(gw: Gateway) -> None:
    httpx.get(gw.url + "/monitoring/x", headers={"X-Request-ID": "log-me-42"}, timeout=5)
    deadline = time.monotonic() + 5
    entry = None
    while entry is None and time.monotonic() < deadline:
        for line in gw.access_log.read_text().splitlines():
            record = json.loads(line)  # every line is one JSON object
            if record["request_id"] == "log-me-42":
                entry = record
        time.sleep(0.05)
    assert entry is not None
    assert entry["service"] == "gateway"
    assert entry["uri"] == "/monitoring/x"
    assert entry["status"] == 200
    assert entry["upstream_status"] == "200"


def test_body_limits(gw: Gateway) -> None:
    # Users API: 64 KiB, answered by the gateway without bothering signing.
    r = httpx.post(gw.url + "/users/add", content=b"x" * (70 * 1024), timeout=5)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert r.headers["x-request-id"] == r.json()["error"]["request_id"]
    # Ingest takes batches up to 1 MiB.
    ok = httpx.post(gw.url + "/ingest/d1", content=b"[" + b" " * (512 * 1024) + b"]", timeout=10)
    assert ok.status_code == 202
    assert ok.json()["body_bytes"] == 512 * 1024 + 2
    too_big = httpx.post(gw.url + "/ingest/d1", content=b"x" * (2 * 1024 * 1024), timeout=10)
    assert too_big.status_code == 413


def test_login_rate_limit_per_client(gw: Gateway) -> None:
    statuses = []
    for _ in range(8):
        r = httpx.post(
            gw.url + "/users/auth", json={"email": "a@example.com", "password": "x"}, timeout=5
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) > 0
    # burst 3 + the one the rate allows, then refused
    assert statuses[:4] == [200] * 4
    assert statuses[-1] == 429
    # Other routes are not limited by the login limit.
    assert httpx.post(gw.url + "/users/add", json={}, timeout=5).status_code == 200


def test_websocket_upgrade_to_monitoring_api(gw: Gateway) -> None:
    with connect(gw.ws_url + "/ws/monitoring/?EIO=4&transport=websocket", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "monitoring-api:hello"
        ws.send("again")
        assert ws.recv(timeout=5) == "monitoring-api:again"


def test_upstream_down_is_a_json_503(tmp_path: Path, upstreams: dict[str, int]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proc, port = start_nginx(
        tmp_path,
        {
            "GATEWAY_PORT": str(free_port()),
            "SIGNING_UPSTREAM": dead,
            "DEVICE_MANAGEMENT_UPSTREAM": dead,
            "MONITORING_API_UPSTREAM": dead,
            "INGEST_BRIDGE_UPSTREAM": dead,
            "GATEWAY_ACCESS_LOG": "/dev/null",
        },
    )
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/devices", timeout=5)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "service_unavailable"
        assert "retry-after" in r.headers
    finally:
        proc.terminate()
        proc.wait(10)


def test_config_renders_without_leftover_placeholders(tmp_path: Path) -> None:
    rendered = gateway.render(ROOT, tmp_path)
    text = (rendered.prefix / "conf.d" / "gateway.conf").read_text()
    assert "${" not in text
    assert shutil.which("nginx") or gateway.nginx_binary()


# ------------------------------------------------------------------------------ hardening


def csp_directives(header: str) -> dict[str, list[str]]:
    return {
        name: values
        for name, *values in (part.split() for part in header.split(";") if part.strip())
    }


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/devices", 200),
        ("GET", "/dashboard", 200),
        ("GET", "/no/such/route", 404),
        ("POST", "/users/add", 413),
        ("GET", "/gateway/health", 200),
    ],
)
def test_security_headers_on_every_answer(gw: Gateway, method: str, path: str, status: int) -> None:
    body = b"x" * (70 * 1024) if status == 413 else None
    r = httpx.request(method, gw.url + path, content=body, timeout=5)
    assert r.status_code == status
    assert r.headers.get_list("x-frame-options") == ["DENY"]
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]
    assert r.headers.get_list("referrer-policy") == ["no-referrer"]
    (csp,) = r.headers.get_list("content-security-policy")  # the gateway's, not the service's
    assert csp_directives(csp)["frame-ancestors"] == ["'none'"]
    if not path.startswith("/dashboard"):
        assert csp_directives(csp)["default-src"] == ["'none'"]
    # Plain HTTP: no HSTS (a browser would ignore it anyway).
    assert "strict-transport-security" not in r.headers


def test_dashboard_policy_allows_exactly_its_own_scripts_styles_and_connections(
    gw: Gateway,
) -> None:
    for path in ("/dashboard", "/dashboard/", "/dashboard/assets/index-4f2a.js"):
        (csp,) = httpx.get(gw.url + path, timeout=5).headers.get_list("content-security-policy")
        policy = csp_directives(csp)
        assert policy["default-src"] == ["'self'"]
        assert policy["script-src"] == ["'self'"]  # no inline script, no eval
        assert policy["style-src"] == ["'self'"]
        # API calls and the Socket.IO WebSocket go to this same origin ('self' covers ws/wss).
        assert policy["connect-src"] == ["'self'"]
        assert policy["object-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"]
    # The API's answers may load nothing at all.
    api = httpx.get(gw.url + "/monitoring/devices", timeout=5)
    assert csp_directives(api.headers["content-security-policy"])["default-src"] == ["'none'"]


def test_hsts_when_the_client_came_over_tls(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/devices", headers={"X-Forwarded-Proto": "https"}, timeout=5)
    (hsts,) = r.headers.get_list("strict-transport-security")
    assert "max-age=31536000" in hsts


def test_service_retry_after_passes_through_unchanged(gw: Gateway) -> None:
    assert "retry-after" not in httpx.get(gw.url + "/devices", timeout=5).headers
    # A service's own 429 keeps its own Retry-After (the gateway adds one to its own only).
    r = httpx.get(gw.url + "/devices/throttled", timeout=5)
    assert r.status_code == 429
    assert r.headers.get_list("retry-after") == ["7"]


def test_a_client_cannot_choose_the_address_the_services_see(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/users/x", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
    assert r.json()["forwarded_for"] == "127.0.0.1"


def test_tokens_in_the_query_never_reach_the_access_log(gw: Gateway) -> None:
    secrets_sent = ["eyJSECRETone", "eyJSECRETtwo", "eyJSECRETthree"]
    httpx.get(
        gw.url + f"/ws/monitoring/?EIO=4&transport=polling&token={secrets_sent[0]}",
        headers={"X-Request-ID": "redact-1"},
        timeout=5,
    )
    httpx.get(
        gw.url + f"/monitoring/x?access_token={secrets_sent[1]}&a=1&Token={secrets_sent[2]}",
        headers={"X-Request-ID": "redact-2"},
        timeout=5,
    )
    entries: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 5
    while len(entries) < 2 and time.monotonic() < deadline:
        text = gw.access_log.read_text()
        entries = {
            str(e["request_id"]): e
            for e in map(json.loads, text.splitlines())
            if e["request_id"] in ("redact-1", "redact-2")
        }
        time.sleep(0.05)
    assert set(entries) == {"redact-1", "redact-2"}
    for secret in secrets_sent:
        assert secret not in gw.access_log.read_text()
    # What else the request said stays readable.
    assert entries["redact-1"]["uri"] == "/ws/monitoring/?EIO=4&transport=polling&token=[redacted]"
    assert str(entries["redact-2"]["uri"]).startswith("/monitoring/x")


@contextlib.contextmanager
def gateway_with(tmp_path: Path, upstreams: dict[str, int], **settings: str) -> Iterator[int]:
    """A gateway of this test alone with some template values changed; yields its port."""
    proc, port = start_nginx(
        tmp_path, upstream_overrides(upstreams, GATEWAY_ACCESS_LOG="/dev/null", **settings)
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _ws_from(address: str, url: str) -> object:
    """A WebSocket to ``url`` whose connection comes from ``address`` (a loopback address)."""
    host, port = url.removeprefix("ws://").split("/", 1)[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=5, source_address=(address, 0))
    return connect(url, sock=sock, open_timeout=5)


def test_websocket_connections_are_limited_per_client_and_in_all(
    tmp_path: Path, upstreams: dict[str, int]
) -> None:
    opened: list[Any] = []
    with gateway_with(tmp_path, upstreams, GATEWAY_WS_PER_CLIENT="3", GATEWAY_WS_TOTAL="5") as port:
        url = f"ws://127.0.0.1:{port}/ws/monitoring/?EIO=4&transport=websocket"
        try:
            opened += [_ws_from("127.0.0.1", url) for _ in range(3)]
            with pytest.raises(InvalidStatus) as refused:
                _ws_from("127.0.0.1", url)
            assert refused.value.response.status_code == 429
            # Another client still gets in, up to the total.
            opened += [_ws_from("127.0.0.2", url) for _ in range(2)]
            with pytest.raises(InvalidStatus):
                _ws_from("127.0.0.3", url)
            # The open ones work; closing one makes room again.
            opened[0].send("still here")
            assert opened[0].recv(timeout=5) == "monitoring-api:still here"
            opened.pop(0).close()
            deadline = time.monotonic() + 5
            while True:
                try:
                    opened.append(_ws_from("127.0.0.3", url))
                    break
                except InvalidStatus:
                    assert time.monotonic() < deadline, "a closed connection did not free its place"
                    time.sleep(0.05)
        finally:
            for ws in opened:
                ws.close()


def test_self_registration_is_rate_limited_per_client(
    tmp_path: Path, upstreams: dict[str, int]
) -> None:
    with gateway_with(
        tmp_path, upstreams, GATEWAY_REGISTER_RATE="1r/m", GATEWAY_REGISTER_BURST="2"
    ) as port:
        url = f"http://127.0.0.1:{port}"
        statuses = [
            httpx.post(url + "/users/add", json={}, timeout=5).status_code for _ in range(5)
        ]
        assert statuses[:3] == [200] * 3
        assert statuses[-1] == 429
        limited = httpx.post(url + "/users/add", json={}, timeout=5)
        assert limited.json()["error"]["code"] == "rate_limited"
        assert limited.headers.get_list("retry-after") == ["10"]
        assert limited.headers.get_list("x-frame-options") == ["DENY"]
        # Signing in and the rest of the users API are not held back by it.
        assert httpx.post(url + "/users/auth", json={}, timeout=5).status_code == 200
        assert httpx.get(url + "/users/", timeout=5).status_code == 200
