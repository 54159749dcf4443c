"""The console script: ``migrate`` builds the schema (idempotently), ``serve`` answers /health."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from device_management.migrations import upgrade
from iotctl.testinfra import free_port


def _cli() -> str:
    return str(Path(sys.executable).with_name("device-management"))


async def test_migrate_then_serve(pg_database_factory: Any, infra_env: dict[str, str]) -> None:
    url = pg_database_factory("dmcli")
    env = {**os.environ, **infra_env, "DEVICE_MANAGEMENT_DATABASE_URL": url}
    done = subprocess.run([_cli(), "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    await upgrade(url)  # a second run is a no-op
    conn = await asyncpg.connect(url)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"t_devices", "t_device_events", "t_outbox", "alembic_version"} <= tables
    finally:
        await conn.close()

    port = free_port()
    proc = subprocess.Popen(
        [_cli(), "serve", "--port", str(port)],
        env={**env, "DEVICE_MANAGEMENT_RELAY_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        status = None
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 60  # generous: a busy machine starts Python slowly
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = (await client.get(f"http://127.0.0.1:{port}/health")).status_code
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert status == 200
            r = await client.get(f"http://127.0.0.1:{port}/devices/")
            assert r.status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
