"""Login and registration limits: nobody locks an account, floods are bounded (Redis)."""

from __future__ import annotations

import asyncio
import secrets
import threading

import pytest
from argon2 import PasswordHasher
from redis.asyncio import Redis

from iot_common.errors import TooManyRequests
from signing.ratelimit import LoginLimiter, client_key


async def test_a_stranger_cannot_lock_the_owner_out(serve):
    """Failing an account's password from one address does not stop its owner elsewhere."""
    async with serve(client_address="198.51.100.7", login_free_failures=3) as stranger:
        email, password = stranger.unique_email(), "the owner's password"
        assert (await stranger.register(email, password)).status_code == 202
        statuses = [(await stranger.login(email, "a guess")).status_code for _ in range(10)]
        # A few free tries, then this address waits before each further one.
        assert statuses[:3] == [401] * 3
        assert 429 in statuses
        delayed = await stranger.login(email, password)  # even the right one, from here
        assert delayed.status_code == 429
        assert "this address" in delayed.json()["error"]["message"]
        assert int(delayed.headers["retry-after"]) >= 1
    async with serve(client_address="203.0.113.20", login_free_failures=3) as owner:
        resp = await owner.login(email, password)
        assert resp.status_code == 200, resp.text


@pytest.fixture
async def limiter_of(redis_url, namespace):
    """LoginLimiters on this test's Redis namespace."""
    redis = Redis.from_url(redis_url)

    def make(**options) -> LoginLimiter:
        defaults = {"per_address": 1000, "window_seconds": 300}
        return LoginLimiter(redis, namespace=namespace, **{**defaults, **options})

    yield make
    await redis.aclose()


async def test_each_further_failure_waits_twice_as_long(limiter_of):
    """The delay grows 1, 2, 4, 8 s ... (up to the maximum), shown with the limiter's clock."""
    now = [1_000_000.0]
    limiter = limiter_of(
        free_failures=2, delay_base_seconds=1.0, delay_max_seconds=8.0, clock=lambda: now[0]
    )
    attempt = {"address": "192.0.2.1", "email": "victim@example.com"}
    for _ in range(2):
        await limiter.check(**attempt)  # the free failures
    waits = []
    for _ in range(6):
        await limiter.check(**attempt)  # allowed, and sets how long the next one waits
        with pytest.raises(TooManyRequests) as refused:
            await limiter.check(**attempt)
        wait = int(refused.value.headers["Retry-After"])
        waits.append(wait)
        now[0] += wait  # the attacker waits exactly as long as told
    assert waits == [1, 2, 4, 8, 8, 8]
    # The right password clears the count for this address.
    await limiter.succeeded(**attempt)
    for _ in range(3):
        await limiter.check(**attempt)


async def test_parallel_guesses_are_counted_before_any_answer(limiter_of):
    limiter = limiter_of(free_failures=5, delay_base_seconds=60.0, delay_max_seconds=600.0)
    results = await asyncio.gather(
        *(limiter.check(address="192.0.2.9", email="v@example.com") for _ in range(50)),
        return_exceptions=True,
    )
    allowed = [r for r in results if not isinstance(r, TooManyRequests)]
    assert len(allowed) == 6  # the free five, then one that sets the first delay


async def test_attempts_per_client_address_are_limited(serve):
    """Spraying many accounts from one address is limited per address."""
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


async def test_successful_logins_use_up_no_failure_allowance(serve):
    async with serve(login_free_failures=2) as api:
        for _ in range(5):
            assert (await api.login(api.admin_email, api.admin_password)).status_code == 200


def test_ipv6_clients_are_counted_per_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"


async def test_registration_answers_the_same_for_new_and_taken_emails(serve):
    async with serve() as api:
        taken = api.unique_email()
        first = await api.register(taken, "first owner's password")
        again = await api.register(taken, "someone else's password")
        fresh = await api.register(api.unique_email(), "someone else's password")
        for resp in (first, again, fresh):
            assert resp.status_code == 202, resp.text
        assert again.json() == fresh.json() == first.json()
        assert set(again.headers) - {"x-request-id", "date"} == set(fresh.headers) - {
            "x-request-id",
            "date",
        }
        assert again.headers["content-length"] == fresh.headers["content-length"]
        # The account still belongs to whoever registered it first.
        assert (await api.login(taken, "first owner's password")).status_code == 200
        assert (await api.login(taken, "someone else's password")).status_code == 401


async def test_registrations_are_limited_per_address(serve):
    async with serve(register_limit_per_address=3, client_address="192.0.2.50") as api:
        for _ in range(3):
            assert (await api.register()).status_code == 202
        resp = await api.register()
        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == "rate_limited"
        assert int(resp.headers["retry-after"]) >= 1
        # Admins adding users are not self-registrations.
        admin = api.bearer(await api.admin_token())
        body = {"email": api.unique_email(), "password": "long enough pw"}
        assert (await api.post("/users/add", body, headers=admin)).status_code == 201
    async with serve(register_limit_per_address=3, client_address="192.0.2.51") as api:
        assert (await api.register()).status_code == 202


class _HeldHasher:
    """Argon2 hashing that stops inside the hash until released, counting how many run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        original = PasswordHasher.hash

        def held(hasher: PasswordHasher, password: str | bytes, **kw: object) -> str:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                self.release.wait(30)
                return original(hasher, password, **kw)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(PasswordHasher, "hash", held)


async def test_a_registration_flood_is_bounded_and_sign_ins_go_on(serve, monkeypatch):
    async with serve(
        register_max_concurrency=1,
        register_max_waiting=2,
        argon2_max_concurrency=2,
        register_limit_per_address=1000,
    ) as api:
        hasher = _HeldHasher(monkeypatch)
        flood = [
            asyncio.create_task(api.register(f"flood-{secrets.token_hex(4)}@example.com"))
            for _ in range(20)
        ]
        # Beyond one running and two queued, registrations are refused at once.
        while len([t for t in flood if t.done()]) < 17:
            await asyncio.sleep(0.02)
        refused = [t.result() for t in flood if t.done()]
        assert len(refused) == 17
        assert {r.status_code for r in refused} == {503}
        assert refused[0].json()["error"]["code"] == "unavailable"
        assert refused[0].headers["retry-after"] == "1"
        assert hasher.running == 1
        # Meanwhile signing in still works: registrations hold one Argon2 slot, not all.
        assert (await api.login(api.admin_email, api.admin_password)).status_code == 200
        hasher.release.set()
        rest = await asyncio.gather(*(t for t in flood if not t.done()))
        assert [r.status_code for r in rest] == [202, 202, 202]
        assert hasher.most == 1


async def test_a_client_that_disconnects_does_not_free_its_argon2_slot(serve, monkeypatch):
    async with serve(
        register_max_concurrency=1, register_max_waiting=0, register_limit_per_address=1000
    ) as api:
        hasher = _HeldHasher(monkeypatch)
        first = asyncio.create_task(api.register())
        while hasher.running == 0:
            await asyncio.sleep(0.02)
        first.cancel()  # the client gives up; its hash is still running
        await asyncio.wait([first])
        assert (await api.register()).status_code == 503
        hasher.release.set()
        # Its slot comes back when its hash is done, and then registering works again.
        while (resp := await api.register()).status_code == 503:
            await asyncio.sleep(0.02)
        assert resp.status_code == 202
        assert hasher.most == 1
