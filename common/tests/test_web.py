import json
import logging

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from iot_common.errors import Conflict, TooManyRequests
from iot_common.logging import JsonFormatter, request_id_var
from iot_common.web import BodyLimit, install_common


class Item(BaseModel):
    name: str
    size: int


def _app() -> FastAPI:
    app = FastAPI()
    install_common(app, service="demo", max_body_bytes=1024)

    @app.post("/items")
    async def create(item: Item) -> dict[str, str]:
        if item.name == "dup":
            raise Conflict("item exists")
        if item.name == "slow":
            raise TooManyRequests("slow down", retry_after=7)
        if item.name == "boom":
            raise RuntimeError("bug")
        return {"request_id": request_id_var.get() or ""}

    return app


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_request_id_is_echoed_and_visible_to_handlers(client) -> None:
    r = await client.post("/items", json={"name": "a", "size": 1}, headers={"X-Request-ID": "abc"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc"
    assert r.json()["request_id"] == "abc"


async def test_request_id_generated_when_absent(client) -> None:
    r = await client.post("/items", json={"name": "a", "size": 1})
    assert len(r.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b'{"name": "a"}', 422, "validation_error"),
        (b'{"name": "a", "size": "big"}', 422, "validation_error"),
        (b'{"name": "dup", "size": 1}', 409, "conflict"),
    ],
)
async def test_errors_share_one_shape(client, body: bytes, status: int, code: str) -> None:
    r = await client.post("/items", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"]
    assert err["request_id"] == r.headers["x-request-id"]


async def test_validation_error_names_the_field(client) -> None:
    r = await client.post("/items", json={"name": "a", "size": "big"})
    fields = [d["field"] for d in r.json()["error"]["details"]]
    assert "body.size" in fields


async def test_rate_limit_carries_retry_after(client) -> None:
    r = await client.post("/items", json={"name": "slow", "size": 1})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"


async def test_oversized_body_is_413_before_parsing(client) -> None:
    r = await client.post(
        "/items", content=b"x" * 2000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_a_body_without_a_usable_length_is_limited_as_it_streams_in(client) -> None:
    async def chunks(n: int):
        for _ in range(n):
            yield b" " * 256

    # Chunked: no Content-Length to refuse up front; the limit is counted as the body arrives.
    r = await client.post("/items", content=chunks(8), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    # A Content-Length that is not a number is no reason to refuse, nor to skip the limit.
    headers = {"content-type": "application/json", "content-length": "many"}
    small = json.dumps({"name": "a", "size": 1}).encode()
    assert (await client.post("/items", content=small, headers=headers)).status_code == 200
    r = await client.post("/items", content=b" " * 2000, headers=headers)
    assert r.status_code == 413


async def test_a_route_with_its_own_body_limit() -> None:
    app = FastAPI()
    install_common(
        app,
        service="demo",
        max_body_bytes=1024,
        body_limits=[BodyLimit("PUT", r"/items/[^/]+/blob", 4096)],
    )

    @app.put("/items/{name}/blob")
    async def blob(name: str, body: dict[str, str]) -> dict[str, int]:
        return {"keys": len(body)}

    @app.put("/items/{name}")
    async def other(name: str, body: dict[str, str]) -> dict[str, int]:
        return {"keys": len(body)}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    json_type = {"content-type": "application/json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=json_type) as c:
        at_limit = b'{"a":"' + b"x" * (4096 - 8) + b'"}'
        assert len(at_limit) == 4096
        r = await c.put("/items/a/blob", content=at_limit)
        assert r.status_code == 200, r.text
        r = await c.put("/items/a/blob", content=at_limit + b" ")
        assert r.status_code == 413
        assert r.json()["error"]["message"] == "request body exceeds 4096 bytes"
        # Every other route keeps the service's limit, a longer path too.
        assert (await c.put("/items/a", content=at_limit)).status_code == 413
        assert (await c.put("/items/a/blob/x", content=at_limit)).status_code == 413
        r = await c.post("/items/a/blob", content=at_limit)
        assert r.json()["error"]["message"] == "request body exceeds 1024 bytes"


async def test_unknown_route_and_bug_use_the_shape(client) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.post("/items", json={"name": "boom", "size": 1})
    assert r.status_code == 500
    assert r.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error",
        "request_id": r.headers["x-request-id"],
    }


async def test_metrics_count_requests(client) -> None:
    await client.post("/items", json={"name": "a", "size": 1})
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/items",service="demo",status="200"}' in text


def test_json_log_lines_carry_request_id_and_extras() -> None:
    fmt = JsonFormatter("demo")
    rec = logging.makeLogRecord({"msg": "hello %s", "args": ("x",), "levelname": "INFO"})
    rec.request_id = "r1"
    rec.device_id = "d1"
    out = json.loads(fmt.format(rec))
    assert out["msg"] == "hello x"
    assert out["request_id"] == "r1"
    assert out["device_id"] == "d1"
    assert out["service"] == "demo"
