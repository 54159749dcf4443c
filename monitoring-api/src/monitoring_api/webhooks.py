"""Alert webhooks: fan-out of alert changes to subscriptions and the delivery worker.

Every alert change read from the ``alerts`` topic becomes one :class:`Delivery` per matching
subscription, stored before anything is sent, with a deterministic id (subscription × alert ×
status × change time). Every instance of the API reads every alert change, so several instances
enqueue the same ids and the store keeps one. The worker claims due deliveries, POSTs each
with an HMAC-SHA256 signature and the delivery id as idempotency key, and on failure schedules
the next attempt with exponential backoff until ``max_attempts``, then marks it failed. State
lives in the store, so deliveries survive a restart.

Receivers are strangers' servers: each delivery has a total deadline and reads at most
``max_response_bytes`` of the answer; each owner has at most ``per_owner`` deliveries in
flight (their other deliveries are not even claimed meanwhile), so a receiver that never
answers holds a few of the worker's connections, never the others' turn. Connections go only
to addresses :mod:`monitoring_api.egress` permits. What the subscriber sees of a failure is
the receiver's HTTP status or that it could not be reached, never why (refused, timed out,
not allowed): that difference would make the API a port scanner of wherever it can reach.

Signature: ``X-IoT-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``;
``Idempotency-Key: <delivery id>`` (also ``X-IoT-Delivery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpcore
import msgspec

from iot_common.events import SEVERITY_RANK, Alert
from monitoring_api.egress import EgressPolicy, PinnedBackend, Resolver
from monitoring_store.base import Delivery, MonitoringStore, Subscription

log = logging.getLogger(__name__)

#: ``device_ids`` value of an admin's subscription to every device.
ALL_DEVICES = "*"
SIGNATURE_HEADER = "X-IoT-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-IoT-Event"
#: What a subscriber reads when a receiver gave no HTTP answer, whatever the reason.
NOT_REACHED = "the receiver could not be reached"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str, body: bytes, *, tolerance: float = 300) -> bool:
    """What a receiver does (documented here and used by the tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    expected = sign(secret, ts, body).split(",", 1)[1].removeprefix("v1=")
    return hmac.compare_digest(expected, parts.get("v1", ""))


def matches(sub: Subscription, alert: Alert) -> bool:
    if SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK.get(sub.min_severity, 0):
        return False
    if sub.rule_types and alert.rule_type not in sub.rule_types:
        return False
    if sub.device_ids:
        if ALL_DEVICES in sub.device_ids:
            return True
        return alert.device_id in sub.device_ids
    return alert.owner_id is not None and alert.owner_id == sub.owner_id


def delivery_id(sub: Subscription, alert: Alert) -> str:
    name = f"{sub.id}/{alert.alert_id}/{alert.status}/{alert.updated_at!r}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def backoff(attempts: int, *, base: float, cap: float) -> float:
    """Delay before attempt ``attempts + 1``: base·2^(attempts-1), capped, ±20 % jitter."""
    delay: float = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one POST went: the receiver's status, or None with the reason (for the log)."""

    status: int | None
    reason: str = ""


class WebhookSender:
    """POSTs to receivers through connections :class:`egress.PinnedBackend` opens."""

    def __init__(
        self,
        *,
        policy: EgressPolicy,
        resolver: Resolver,
        deadline: float,
        max_response_bytes: int,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.deadline = deadline
        self.max_response_bytes = max_response_bytes
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            retries=0,
            network_backend=PinnedBackend(policy=policy, resolver=resolver),
        )

    async def close(self) -> None:
        await self._pool.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.deadline)
        try:
            async with asyncio.timeout(self.deadline):
                async with self._pool.stream(
                    "POST",
                    url,
                    headers=list(headers.items()),
                    content=body,
                    extensions={"timeout": timeouts},
                ) as resp:
                    received = 0
                    async for chunk in resp.aiter_stream():
                        received += len(chunk)
                        if received > self.max_response_bytes:
                            break  # the status is the answer; the connection is dropped
                    return Outcome(resp.status)
        except TimeoutError:
            return Outcome(None, f"no answer within {self.deadline:g} s")
        except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}")
        except (httpcore.UnsupportedProtocol, OSError, ValueError) as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}")


class WebhookDispatcher:
    """Turns alert changes into stored deliveries and delivers them."""

    def __init__(
        self,
        *,
        store: MonitoringStore,
        sender: WebhookSender,
        max_attempts: int = 6,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
        poll_interval: float = 1.0,
        concurrency: int = 64,
        per_owner: int = 4,
        subscription_ttl: float = 2.0,
    ) -> None:
        self.store = store
        self.sender = sender
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.per_owner = per_owner
        self._subs: list[Subscription] = []
        self._subs_at = -1e9
        self._subs_ttl = subscription_ttl
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Deliveries in flight per subscription owner.
        self._load: Counter[str] = Counter()

    def invalidate(self) -> None:
        """Forget the cached subscription list (after a create or delete here)."""
        self._subs_at = -1e9

    async def _subscriptions(self) -> list[Subscription]:
        if time.monotonic() - self._subs_at > self._subs_ttl:
            self._subs = await self.store.list_subscriptions(owner_id=None)
            self._subs_at = time.monotonic()
        return self._subs

    async def enqueue(self, alerts: Sequence[Alert]) -> int:
        """Store one pending delivery per (matching subscription, alert change)."""
        if not alerts:
            return 0
        subs = await self._subscriptions()
        if not subs:
            return 0
        now = time.time()
        deliveries = [
            Delivery(
                id=delivery_id(sub, alert),
                subscription_id=sub.id,
                payload={
                    "type": "alert." + alert.status,
                    "subscription_id": sub.id,
                    "alert": msgspec.structs.asdict(alert),
                },
                status="pending",
                attempts=0,
                next_attempt_at=now,
                last_error=None,
                created_at=now,
                updated_at=now,
            )
            for alert in alerts
            for sub in subs
            if matches(sub, alert)
        ]
        if deliveries:
            await self.store.enqueue_deliveries(deliveries)
            self._wake.set()
        return len(deliveries)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def close(self) -> None:
        """Stop the worker and the deliveries in flight (those stay claimed in the store and
        fall due again after their lease), then the connections."""
        self._closing = True
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait, not ``await task`` under suppress(CancelledError): that also
            # swallowed the cancellation of close() itself, so a caller's deadline could
            # not interrupt it.
            await asyncio.wait(tasks)
        if self._task is not None and not self._task.cancelled() and self._task.exception():
            log.error("webhook worker failed", exc_info=self._task.exception())
        self._task = None
        await self.sender.close()

    #: How long a claimed delivery stays invisible to other workers (beyond one deadline).
    LEASE_SECONDS = 60.0

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                await self.fill()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed")
            # Woken by a new delivery, a finished one (a free slot) or the poll interval.
            # asyncio.timeout, not asyncio.wait_for: on Python 3.11, wait_for swallows a
            # cancellation that arrives while the event it waits on is being set (an alert
            # enqueued or a delivery finishing as close() cancels this task), and the worker
            # then went on polling forever, so the API's shutdown never finished.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def fill(self) -> int:
        """Start due deliveries while slots are free; returns how many were started."""
        started = 0
        while len(self._in_flight) < self.concurrency:
            subs = {s.id: s for s in await self._subscriptions()}
            busy = {owner for owner, n in self._load.items() if n >= self.per_owner}
            # Claimed atomically by the store: another instance polling at the same time
            # skips these; a crashed instance's claims fall due again after the lease. At
            # most per_owner at a time, so one owner's backlog cannot fill every slot.
            due = await self.store.due_deliveries(
                now=time.time(),
                limit=min(self.concurrency - len(self._in_flight), self.per_owner),
                lease_seconds=self.LEASE_SECONDS,
                exclude_subscriptions=[s.id for s in subs.values() if s.owner_id in busy],
            )
            if not due:
                break
            for d in due:
                sub = subs.get(d.subscription_id)
                if sub is None:  # created after the cached list was read, or deleted
                    self.invalidate()
                    sub = {s.id: s for s in await self._subscriptions()}.get(d.subscription_id)
                self._launch(d, sub)
                started += 1
        return started

    def _launch(self, d: Delivery, sub: Subscription | None) -> None:
        owner = sub.owner_id if sub is not None else ""
        self._load[owner] += 1
        task = asyncio.create_task(self._attempt(d, sub), name=f"webhook-{d.id}")
        self._in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._in_flight.discard(t)
            self._load[owner] -= 1
            if self._load[owner] <= 0:
                del self._load[owner]
            if not t.cancelled() and t.exception() is not None:
                log.error("webhook delivery %s failed unexpectedly", d.id, exc_info=t.exception())
            self._wake.set()

        task.add_done_callback(done)

    async def _attempt(self, d: Delivery, sub: Subscription | None) -> None:
        now = time.time()
        if sub is None:
            await self.store.update_delivery(
                replace(d, status="failed", last_error="subscription deleted", updated_at=now)
            )
            return
        body = msgspec.json.encode(d.payload)
        ts = int(now)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(sub.secret, ts, body),
            IDEMPOTENCY_HEADER: d.id,
            "X-IoT-Delivery": d.id,
            EVENT_HEADER: str(d.payload.get("type", "alert")),
            "User-Agent": "iot-monitoring-api-webhooks/1",
        }
        outcome = await self.sender.post(sub.url, body, headers)
        error: str | None = None
        if outcome.status is None:
            error = NOT_REACHED
            log.info("webhook delivery %s to %s: %s", d.id, sub.url, outcome.reason)
        elif not 200 <= outcome.status < 300:
            error = f"HTTP {outcome.status}"
        attempts = d.attempts + 1
        now = time.time()
        if error is None:
            new = replace(d, status="delivered", attempts=attempts, last_error=None, updated_at=now)
            log.info("webhook delivery %s to subscription %s delivered", d.id, sub.id)
        elif attempts >= self.max_attempts:
            new = replace(d, status="failed", attempts=attempts, last_error=error, updated_at=now)
            log.warning("webhook delivery %s failed after %d attempts: %s", d.id, attempts, error)
        else:
            delay = backoff(attempts, base=self.backoff_base, cap=self.backoff_max)
            new = replace(
                d,
                attempts=attempts,
                last_error=error,
                next_attempt_at=now + delay,
                updated_at=now,
            )
            log.info(
                "webhook delivery %s attempt %d failed (%s), retry in %.1fs",
                d.id,
                attempts,
                error,
                delay,
            )
        await self.store.update_delivery(new)


def summary(deliveries: Sequence[Delivery]) -> dict[str, Any]:
    out: dict[str, int] = {"pending": 0, "delivered": 0, "failed": 0}
    for d in deliveries:
        out[d.status] = out.get(d.status, 0) + 1
    return out
