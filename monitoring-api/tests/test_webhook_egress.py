"""Webhooks cannot be aimed at the platform's own network, and strangers' receivers cannot
slow anyone else down. Every connection here goes to loopback; the private and public
addresses below are only ever answers of the tests' resolver, refused before any connect."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from iotctl.broker import free_port
from monitoring_api.webhooks import NOT_REACHED

#: A public address the resolver may answer at creation; nothing ever connects to it.
PUBLIC = "93.184.215.14"
NO_PRIVATE: list[str] = []


class Recorder:
    """A loopback receiver: records each request's Host header; answers 200 or streams."""

    def __init__(self, *, endless: bool = False) -> None:
        self.hosts: list[str] = []
        self.endless = endless
        self.stream_stopped = asyncio.Event()

    async def handle(self, request: Request) -> Any:
        await request.body()
        self.hosts.append(request.headers.get("host", ""))
        if not self.endless:
            return JSONResponse({"ok": True})

        async def forever() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65_536
                    await asyncio.sleep(0.001)
            finally:
                self.stream_stopped.set()

        return StreamingResponse(forever(), media_type="text/plain")


@pytest.fixture
async def recorder(serve_app: Any) -> Any:
    async def make(*, endless: bool = False, **server: Any) -> tuple[Recorder, int]:
        rec = Recorder(endless=endless)
        app = Starlette(routes=[Route("/hook", rec.handle, methods=["POST"])])
        url = await serve_app(app, **server)
        return rec, int(url.rsplit(":", 1)[1])

    return make


class Silent:
    """A receiver that accepts connections and reads, but never answers."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            while await reader.read(65_536):
                pass
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> Silent:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)


async def subscribe(client: Any, user: Any, url: str) -> Any:
    return await client.post("/monitoring/subscriptions", json={"url": url}, headers=user.headers)


async def deliveries(client: Any, user: Any, sub_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/monitoring/subscriptions/{sub_id}/deliveries", headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_urls_reaching_private_addresses_are_refused_at_creation(
    app_factory: Any, make_user: Any, dns: dict[str, list[str]]
) -> None:
    dns["internal.test"] = ["10.1.2.3"]
    dns["metadata.test"] = ["169.254.169.254"]
    dns["half.test"] = [PUBLIC, "127.0.0.1"]
    dns["hooks.example.com"] = [PUBLIC]
    alice = make_user("operator")
    # Nothing is delivered here: the public name below is only ever checked, never reached.
    app = await app_factory(
        kafka_enabled=False, webhook_enabled=False, webhook_allow_private_networks=NO_PRIVATE
    )
    c = app.client
    refused = [
        "http://127.0.0.1:8003/hook",
        "http://127.9.9.9/",
        "http://localhost:8003/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://[::1]/",
        "http://[::ffff:7f00:1]/",  # IPv4-mapped loopback
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",  # IPv4-compatible
        "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a00:1]/",  # NAT64 wrapping 10.0.0.1
        "http://[::]/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",  # CGNAT
        "http://[fd00::1]/",  # unique-local
        "http://[fe80::1]/",  # link-local
        "http://224.0.0.1/",  # multicast
        "http://[ff02::1]/",
        "http://255.255.255.255/",
        "http://internal.test/hook",
        "http://metadata.test/",
        "http://half.test/",  # one private answer among public ones
        "http://nowhere.test/",  # does not resolve: same answer, no oracle
    ]
    answers = set()
    for url in refused:
        r = await subscribe(c, alice, url)
        assert r.status_code == 422, (url, r.text)
        answers.add(r.json()["error"]["message"])
    assert len(answers) == 1  # the same words whatever the reason
    assert (await c.get("/monitoring/subscriptions", headers=alice.headers)).json() == []
    r = await subscribe(c, alice, "https://hooks.example.com/x")
    assert r.status_code == 201, r.text


async def test_a_name_rebound_to_loopback_after_creation_is_refused_at_connect(
    new_alert: Any,
    app_factory: Any,
    make_user: Any,
    registry: Any,
    recorder: Any,
    dns: dict[str, list[str]],
    poll: Any,
) -> None:
    rec, port = await recorder()
    app = await app_factory(
        kafka_enabled=False, webhook_allow_private_networks=NO_PRIVATE, webhook_max_attempts=1
    )
    alice = make_user("operator")
    dev = await registry.add(alice)
    dns["localhost"] = [PUBLIC]  # what the attacker's DNS says while the URL is checked
    r = await subscribe(app.client, alice, f"http://localhost:{port}/hook")
    assert r.status_code == 201, r.text
    dns["localhost"] = ["127.0.0.1"]  # ... and when the delivery connects
    await app.app.state.webhooks.enqueue([new_alert(dev, alice.id)])

    async def failed() -> list[dict[str, Any]]:
        return [d for d in await deliveries(app.client, alice, r.json()["id"]) if d["attempts"]]

    (delivery,) = await poll(failed)
    assert delivery["status"] == "failed" and delivery["last_error"] == NOT_REACHED
    assert rec.hosts == []  # nothing reached the loopback receiver


async def test_connections_go_to_the_checked_address_with_the_name_as_host_and_sni(
    new_alert: Any,
    app_factory: Any,
    make_user: Any,
    registry: Any,
    recorder: Any,
    dns: dict[str, list[str]],
    poll: Any,
    tmp_path: Any,
) -> None:
    cert, key, trust = _certificate_for("receiver.test", tmp_path)
    rec, port = await recorder(ssl_certfile=str(cert), ssl_keyfile=str(key))
    dns["receiver.test"] = ["127.0.0.1"]
    app = await app_factory(kafka_enabled=False, webhook_max_attempts=1, webhook_ssl_context=trust)
    alice = make_user("operator")
    dev = await registry.add(alice)
    by_name = (await subscribe(app.client, alice, f"https://receiver.test:{port}/hook")).json()
    by_address = (await subscribe(app.client, alice, f"https://127.0.0.1:{port}/hook")).json()
    await app.app.state.webhooks.enqueue([new_alert(dev, alice.id)])

    async def settled() -> dict[str, str]:
        out = {}
        for sub in (by_name, by_address):
            for d in await deliveries(app.client, alice, sub["id"]):
                if d["attempts"]:
                    out[sub["id"]] = d["status"]
        return out if len(out) == 2 else {}

    outcome = await poll(settled)
    # Verified against the name (SNI and certificate), sent to the address it resolved to.
    assert outcome == {by_name["id"]: "delivered", by_address["id"]: "failed"}
    assert rec.hosts == [f"receiver.test:{port}"]


async def test_failures_read_the_same_whatever_went_wrong(
    new_alert: Any, app_factory: Any, make_user: Any, registry: Any, poll: Any
) -> None:
    app = await app_factory(kafka_enabled=False, webhook_max_attempts=1, webhook_timeout=1.0)
    alice = make_user("operator")
    dev = await registry.add(alice)
    async with Silent() as silent:
        closed = free_port()  # nothing listens: connection refused
        subs = [
            (await subscribe(app.client, alice, url)).json()
            for url in (f"http://127.0.0.1:{closed}/", f"http://127.0.0.1:{silent.port}/")
        ]
        await app.app.state.webhooks.enqueue([new_alert(dev, alice.id)])

        async def errors() -> list[str | None]:
            found = [
                d["last_error"]
                for sub in subs
                for d in await deliveries(app.client, alice, sub["id"])
                if d["status"] == "failed"
            ]
            return found if len(found) == 2 else []

        assert await poll(errors) == [NOT_REACHED, NOT_REACHED]


async def test_a_receiver_that_never_answers_does_not_hold_up_other_owners(
    new_alert: Any, app_factory: Any, make_user: Any, registry: Any, recorder: Any, poll: Any
) -> None:
    # A deadline far beyond this test: the silent receiver keeps every request it gets.
    app = await app_factory(kafka_enabled=False, webhook_timeout=120.0)
    mallory, alice = make_user("operator"), make_user("operator")
    dev_m, dev_a = await registry.add(mallory), await registry.add(alice)
    rec, port = await recorder()
    async with Silent() as silent:
        assert (await subscribe(app.client, mallory, f"http://127.0.0.1:{silent.port}/")).is_success
        assert (await subscribe(app.client, alice, f"http://127.0.0.1:{port}/hook")).is_success
        hooks = app.app.state.webhooks
        # Mallory's backlog is older than Alice's deliveries and larger than any batch.
        await hooks.enqueue([new_alert(dev_m, mallory.id) for _ in range(120)])
        await poll(lambda: silent.accepted > 0)
        await hooks.enqueue([new_alert(dev_a, alice.id) for _ in range(5)])
        await poll(lambda: len(rec.hosts) == 5)
        # ... while the silent receiver still holds its few requests unanswered.
        assert 0 < silent.open == silent.accepted <= hooks.per_owner * 2


async def test_an_endless_answer_is_cut_off_at_the_size_cap(
    new_alert: Any, app_factory: Any, make_user: Any, registry: Any, recorder: Any, poll: Any
) -> None:
    app = await app_factory(kafka_enabled=False, webhook_timeout=120.0)
    alice = make_user("operator")
    dev = await registry.add(alice)
    rec, port = await recorder(endless=True)
    sub = (await subscribe(app.client, alice, f"http://127.0.0.1:{port}/hook")).json()
    await app.app.state.webhooks.enqueue([new_alert(dev, alice.id)])

    async def delivered() -> bool:
        return any(
            d["status"] == "delivered" for d in await deliveries(app.client, alice, sub["id"])
        )

    await poll(delivered)
    await asyncio.wait_for(rec.stream_stopped.wait(), 10)  # the API hung up on the stream


def _certificate_for(name: str, where: Any) -> tuple[Any, Any, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    trust = ssl.create_default_context(cafile=str(cert_path))
    return cert_path, key_path, trust
