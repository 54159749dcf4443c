"""The API process's own log lines never hold a token a client put in a URL."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from typing import Any

import httpx
import pytest
import socketio

from iotctl.broker import free_port


async def test_socketio_query_tokens_never_reach_the_log(
    store_url: str, redis_url: str, redis_namespace: str, make_user: Any
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MONITORING_API_STORE_URL": store_url,
        "MONITORING_API_KAFKA_ENABLED": "false",
        "MONITORING_API_WEBHOOK_ENABLED": "false",
        "MONITORING_API_LOG_LEVEL": "INFO",
        "IOT_REDIS_URL": redis_url,
        "IOT_REDIS_NAMESPACE": redis_namespace,
        # Nothing listens there: the tokens below are refused, and still logged as requested.
        "IOT_JWKS_URL": f"http://127.0.0.1:{free_port()}/.well-known/jwks.json",
    }
    env.pop("MONITORING_STORE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitoring_api",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    secrets_sent = [make_user("operator").token, secrets.token_urlsafe(24)]
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(90):  # a cold start on a busy machine
            while b"Application startup complete" not in (lines[-1] if lines else b""):
                line = await proc.stdout.readline()
                if not line:
                    pytest.fail("monitoring-api exited: " + b"".join(lines).decode()[-3000:])
                lines.append(line)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            # Long-polling handshake, token in the query string.
            r = await http.get(
                "/ws/monitoring/",
                params={"EIO": "4", "transport": "polling", "token": secrets_sent[0]},
            )
            assert r.status_code == 200, r.text
        # WebSocket handshake, token in the query string.
        client = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                f"{base}?token={secrets_sent[1]}",
                socketio_path="/ws/monitoring",
                transports=["websocket"],
                wait_timeout=10,
            )
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    out = b"".join(lines) + rest
    log = out.decode(errors="replace")
    # The requests were logged (so the check below means something) ...
    assert "GET /ws/monitoring/?EIO=4&transport=polling&token=" in log, log[-2000:]
    assert '"WebSocket /ws/monitoring/?' in log, log[-2000:]
    # ... without the tokens.
    for token in secrets_sent:
        assert token not in log
