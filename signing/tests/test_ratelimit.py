"""Login rate limits per client address and per email (Redis)."""

from __future__ import annotations


async def test_failed_logins_per_email_are_limited(serve):
    async with serve(login_limit_per_email=3, login_limit_window_seconds=120) as api:
        email, password = api.unique_email(), "the right password"
        assert (await api.register(email, password)).status_code == 201
        for _ in range(3):
            assert (await api.login(email, "wrong password")).status_code == 401
        resp = await api.login(email, password)  # even the right password now waits
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["retry-after"]) <= 120
        # Other accounts from the same address are unaffected.
        assert (await api.login(api.admin_email, api.admin_password)).status_code == 200
        # Same email in another case is the same account.
        assert (await api.login(email.upper(), password)).status_code == 429


async def test_successful_logins_do_not_use_up_the_email_limit(serve):
    async with serve(login_limit_per_email=2) as api:
        for _ in range(5):
            assert (await api.login(api.admin_email, api.admin_password)).status_code == 200


async def test_attempts_per_client_address_are_limited(serve):
    async with serve(login_limit_per_address=4, client_address="10.1.2.3") as api:
        statuses = [
            (await api.login(api.unique_email(), "some password")).status_code for _ in range(4)
        ]
        assert statuses == [401] * 4
        resp = await api.login(api.admin_email, api.admin_password)
        assert resp.status_code == 429
        assert int(resp.headers["retry-after"]) >= 1
        assert "address" in resp.json()["error"]["message"]
    # Another client address (same Redis namespace) is not limited.
    async with serve(login_limit_per_address=4, client_address="10.9.9.9") as api:
        assert (await api.login(api.admin_email, api.admin_password)).status_code == 200
