"""Sign-in through the API: signing's per-address login limits see each real client."""

from __future__ import annotations

import secrets
from typing import Any

import httpx


def client_from(address: str, base_url: str) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 is local)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=10)


async def test_two_clients_are_limited_separately_through_the_api(
    app_factory: Any, served_signing: Any, redis_namespace: str
) -> None:
    signing, signing_url = await served_signing(
        # This API connects from 127.0.0.1: signing believes its X-Forwarded-For, nobody else's.
        forwarded_allow_ips="127.0.0.1",
        login_limit_per_address=3,
        redis_namespace=f"{redis_namespace}-login-{secrets.token_hex(3)}",
    )
    user, password = await signing.add_user()
    app = await app_factory(serve=True, kafka_enabled=False, signing_url=signing_url)
    assert app.url is not None
    async with (
        client_from("127.0.0.2", app.url) as stranger,
        client_from("127.0.0.3", app.url) as owner,
    ):
        wrong = {"email": user.email, "password": "not the password"}
        for _ in range(3):
            r = await stranger.post("/monitoring/session", json=wrong)
            assert r.status_code == 401, r.text
        r = await stranger.post("/monitoring/session", json=wrong)
        assert r.status_code == 429, r.text
        # A forwarded address from a client that is not the gateway is not believed.
        r = await stranger.post(
            "/monitoring/session", json=wrong, headers={"X-Forwarded-For": "127.0.0.9"}
        )
        assert r.status_code == 429, r.text

        r = await owner.post(
            "/monitoring/session", json={"email": user.email, "password": password}
        )
        assert r.status_code == 200, r.text
        assert r.json()["access_token"]
