"""The loop shared by the background relays that drain a table to a broker.

Both the event outbox (→ RabbitMQ) and the credential changes (→ Mosquitto, RabbitMQ users)
work the same way: rows are committed with the API change that caused them; a relay connects,
drains them in id order (one replica at a time, through an advisory lock), and while the broker
is unreachable the rows simply wait and the relay retries with backoff. ``wake()`` after a
commit makes it drain at once instead of at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from prometheus_client import Counter

log = logging.getLogger(__name__)


class Relay(ABC):
    """Background task: connect, drain until empty, wait for a wake-up or the poll interval."""

    #: Names the relay in logs and the failure metric.
    name: str = "relay"

    def __init__(self, *, poll_interval: float, max_backoff: float, failures: Counter) -> None:
        self._failures = failures
        self._poll = poll_interval
        self._max_backoff = max_backoff
        self._stopping = False
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def connect(self) -> None:
        """Make sure the broker connection is up (no-op when it is)."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Drop the broker connection (after an error, and when closing)."""

    @abstractmethod
    async def drain_once(self) -> int:
        """Deliver one batch; how many rows it settled (0: nothing to do or not our turn)."""

    @abstractmethod
    async def housekeeping(self) -> None:
        """Periodic work between drains (e.g. purging old rows)."""

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop after the batch in flight (so it is settled, not delivered again later)."""
        if self._task is not None:
            self._stopping = True
            self._stop.set()
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            self._task = None
        await self.disconnect()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                await self.connect()
                while not self._stopping and await self.drain_once():
                    pass
                backoff = 0.1
                await self.housekeeping()
                await self._sleep(self._poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.inc()
                reason = str(exc) or type(exc).__name__
                log.warning("%s: %s; retrying in %.1fs", self.name, reason, backoff)
                await self.disconnect()
                # Commits do not cut the backoff short: during an outage they would turn
                # every API write into a reconnect attempt.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()
