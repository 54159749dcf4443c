"""Health, metrics, docs, start-up failures and the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from signing.main import create_app


async def test_health_reports_its_dependencies(client):
    resp = await client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ok",
        "service": "signing",
        "checks": {"postgres": "ok", "redis": "ok"},
    }


async def test_health_is_503_when_redis_is_down(serve):
    async with serve(redis_url="redis://127.0.0.1:1/0") as api:
        resp = await api.client.get("/health")
        assert resp.status_code == 503
        assert resp.json()["checks"] == {"postgres": "ok", "redis": "unreachable"}
        # Login needs the rate limiter: a clear 503, not a 500.
        login = await api.login(api.admin_email, api.admin_password)
        assert login.status_code == 503
        assert login.json()["error"]["code"] == "unavailable"


async def test_metrics_and_docs_are_served(client):
    await client.get("/health")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'http_requests_total{method="GET",route="/health",service="signing"' in metrics.text
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = (await client.get("/openapi.json")).json()
    assert set(schema["paths"]) >= {
        "/users/add",
        "/users/auth",
        "/users/verify-token",
        "/users/",
        "/users/logout",
        "/.well-known/jwks.json",
        "/health",
    }


async def test_request_id_is_echoed(client):
    resp = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    error = await client.post("/users/auth", json={}, headers={"X-Request-ID": "req-9"})
    assert error.json()["error"]["request_id"] == "req-9"


async def test_unknown_routes_and_methods_use_the_error_shape(client):
    resp = await client.get("/nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await client.delete("/users/add")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


async def test_start_on_an_unmigrated_database_says_what_to_do(make_settings, pg_database_factory):
    settings = make_settings(database_url=pg_database_factory("signing_empty"))
    app = create_app(settings)
    with pytest.raises(Exception, match="signing migrate"):
        async with LifespanManager(app):
            pass


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signing", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_migrate_creates_tables_and_the_bootstrap_admin(pg_database_factory):
    url = pg_database_factory("signing_cli")
    env = {
        "SIGNING_DATABASE_URL": url,
        "IOT_ADMIN_EMAIL": "Boss@Example.com",
        "IOT_ADMIN_PASSWORD": "boss-password",
        "SIGNING_ARGON2_MEMORY_COST_KIB": "1024",
        "SIGNING_ARGON2_TIME_COST": "1",
    }
    for _ in range(2):  # idempotent
        result = _run_cli("migrate", env=env)
        assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT email, role, is_admin FROM t_users")
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
    finally:
        await conn.close()
    assert [dict(r) for r in rows] == [
        {"email": "boss@example.com", "role": "admin", "is_admin": True}
    ]
    assert {"t_users", "t_blacklist_tokens", "t_signing_keys"} <= tables


async def test_rotate_key_command(pg_database_factory):
    url = pg_database_factory("signing_rotate_cli")
    env = {"SIGNING_DATABASE_URL": url, "SIGNING_KEY_FILE": "/nonexistent/key.pem"}
    assert _run_cli("migrate", env=env).returncode == 0  # also creates the first key
    result = _run_cli("rotate-key", env=env)
    assert result.returncode == 0, result.stderr
    assert "is published now and signs from" in result.stderr
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT kid, active_from, retired_at, created_at FROM t_signing_keys "
            "ORDER BY active_from"
        )
    finally:
        await conn.close()
    first, new = rows
    assert new["kid"] in result.stderr and first["kid"] in result.stderr
    # The new key signs after the publication lead; the first signs until then.
    assert new["retired_at"] is None
    assert (new["active_from"] - new["created_at"]).total_seconds() >= 59
    assert first["retired_at"] == new["active_from"]


def test_migrate_against_a_missing_database_is_one_clear_line():
    result = _run_cli(
        "migrate", env={"SIGNING_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nope"}
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "signing migrate failed: cannot use PostgreSQL at" in result.stderr


def test_serving_an_unmigrated_database_is_one_clear_line(pg_database_factory):
    url = pg_database_factory("signing_unmigrated")
    result = _run_cli("serve", "--port", "1", env={"SIGNING_DATABASE_URL": url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "run `signing migrate` first" in result.stderr


def test_the_served_process_answers(signing_process):
    resp = httpx.post(
        f"{signing_process.url}/users/auth",
        json={"email": "admin@example.com", "password": "admin-password-for-tests"},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert resp.status_code == 200, resp.text
    assert httpx.get(f"{signing_process.url}/health").json()["status"] == "ok"


def test_settings_from_the_environment(monkeypatch):
    from signing.config import SigningSettings

    monkeypatch.setenv("SIGNING_PRIVATE_KEY_PEM", "")  # compose's ${SIGNING_PRIVATE_KEY_PEM:-}
    monkeypatch.setenv("IOT_ADMIN_EMAIL", "ops@example.com")
    monkeypatch.setenv("IOT_ADMIN_PASSWORD", "from-the-shared-env")
    monkeypatch.setenv("SIGNING_PORT", "18001")
    settings = SigningSettings()
    assert settings.private_key_pem is None
    assert settings.bootstrap_admin_email == "ops@example.com"
    assert settings.bootstrap_admin_password.get_secret_value() == "from-the-shared-env"
    assert settings.port == 18001
    assert "from-the-shared-env" not in repr(settings)
    monkeypatch.setenv("SIGNING_BOOTSTRAP_ADMIN_EMAIL", "own@example.com")
    assert SigningSettings().bootstrap_admin_email == "own@example.com"  # own prefix wins


def test_models_match_the_migrations(signing_db):
    from alembic import command

    from signing.migrations import alembic_config

    command.check(alembic_config(signing_db))  # raises if autogenerate would add anything


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_development_secrets_are_refused_outside_development(command, pg_database_factory):
    url = pg_database_factory("signing_refused")
    env = {"SIGNING_DATABASE_URL": url, "IOT_ALLOW_DEV_DEFAULTS": "false"}
    result = _run_cli(command, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "refusing to start with development defaults" in result.stderr
    for setting in ("internal_token", "bootstrap_admin_password", "redis_url", "rabbitmq_url"):
        assert setting in result.stderr
    assert "admin-password-change-me" not in result.stderr  # named, never shown
