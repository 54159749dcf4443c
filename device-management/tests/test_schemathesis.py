"""Property-based run over the OpenAPI schema against a real HTTP server: no 5xx anywhere."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn

from device_management.main import create_app
from iot_common.auth import JWTVerifier
from iotctl.testinfra import free_port


async def test_no_server_errors(
    settings_factory: Any, signing_key: Any, redis: Any, make_user: Any, tmp_path: Path
) -> None:
    settings = settings_factory(relay_enabled=False)
    verifier = JWTVerifier(
        jwks_url=settings.jwks_url,
        redis=redis,
        namespace=settings.redis_namespace,
        issuer="iot-signing",
        audience="iot-platform",
        jwks_min_refresh=3600,
    )
    verifier.add_key("test-key-1", signing_key.public_key())
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, verifier=verifier),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        operator = make_user("operator")
        schemathesis = Path(sys.executable).with_name("schemathesis")
        proc = await asyncio.create_subprocess_exec(
            str(schemathesis),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--header",
            f"Authorization: Bearer {operator.token}",
            "--header",
            "X-Internal-Token: test-internal-token",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "20",
            # One worker: hypothesis' lambda-source parsing trips a CPython 3.11 AST bug
            # when several threads run it at once.
            "--workers",
            "1",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
    finally:
        server.should_exit = True
        await serving
