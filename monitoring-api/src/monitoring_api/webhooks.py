"""Alert webhooks: fan-out of alert changes to subscriptions and the delivery worker.

Every alert change read from the ``alerts`` topic becomes one :class:`Delivery` per matching
subscription, stored before anything is sent, with a deterministic id (subscription × alert ×
status × change time). Every instance of the API reads every alert change, so several instances
enqueue the same ids and the store keeps one. The worker polls ``due_deliveries``, POSTs each
with an HMAC-SHA256 signature and the delivery id as idempotency key, and on failure schedules
the next attempt with exponential backoff until ``max_attempts``, then marks it failed. State
lives in the store, so deliveries survive a restart.

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
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx
import msgspec

from iot_common.events import Alert
from monitoring_api.schemas import SEVERITY_RANK
from monitoring_store.base import Delivery, MonitoringStore, Subscription

log = logging.getLogger(__name__)

#: ``device_ids`` value of an admin's subscription to every device.
ALL_DEVICES = "*"
SIGNATURE_HEADER = "X-IoT-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-IoT-Event"


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


class WebhookDispatcher:
    """Turns alert changes into stored deliveries and delivers them."""

    def __init__(
        self,
        *,
        store: MonitoringStore,
        http: httpx.AsyncClient | None = None,
        max_attempts: int = 6,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
        timeout: float = 10.0,
        poll_interval: float = 1.0,
        batch: int = 50,
        subscription_ttl: float = 2.0,
    ) -> None:
        self.store = store
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._own_http = http is None
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.batch = batch
        self._subs: list[Subscription] = []
        self._subs_at = -1e9
        self._subs_ttl = subscription_ttl
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_http:
            await self._http.aclose()

    #: How long a claimed delivery stays invisible to other workers (beyond one HTTP timeout).
    LEASE_SECONDS = 60.0

    async def _run(self) -> None:
        while True:
            try:
                done = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed")
                done = 0
            if done == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        # Claimed atomically by the store: another instance polling at the same time skips
        # these; a crashed instance's claims fall due again after the lease.
        due = await self.store.due_deliveries(
            now=time.time(), limit=self.batch, lease_seconds=self.LEASE_SECONDS
        )
        if not due:
            return 0
        subs = {s.id: s for s in await self.store.list_subscriptions(owner_id=None)}
        await asyncio.gather(*(self._attempt(d, subs.get(d.subscription_id)) for d in due))
        return len(due)

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
        error: str | None = None
        try:
            resp = await self._http.post(sub.url, content=body, headers=headers)
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
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
