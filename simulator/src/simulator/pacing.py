"""Precise pacing: when each message is due and what its readings' timestamps are.

One process publishes for ``n`` devices at ``rate`` readings/s with ``batch`` readings per
message. Readings are numbered ``k = step·n + device`` (round robin over the devices) and
reading ``k`` is due at ``k / rate`` seconds after the start; that is also its device
timestamp. Message ``m`` carries steps ``b·batch … b·batch + batch - 1`` of device
``m mod n`` (``b = m div n``) and is due when its last reading is.

The pacer is a token bucket against the monotonic clock: every due message may be sent, a
publisher that fell behind catches up, but never by more than ``max_burst`` messages at once —
beyond that the schedule slides forward (those tokens are forfeited and the achieved rate shows
the shortfall), so a stall never turns into an unbounded burst or stale timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass
class Schedule:
    n_devices: int
    batch: int
    rate: float  # readings per second for this process
    #: Publishing time; readings with ``k / rate < duration`` are sent (the last messages of
    #: each device carry whatever is left of their batch, as a gateway flushes when stopping).
    duration: float = math.inf
    #: Seconds the schedule slid forward because the publisher fell too far behind.
    shift: float = 0.0
    forfeited_messages: int = field(default=0)

    def __post_init__(self) -> None:
        if self.n_devices < 1 or self.batch < 1 or self.rate <= 0:
            raise ValueError("need at least one device, batch ≥ 1 and a positive rate")
        if math.isfinite(self.duration):
            self.end_k = max(1, math.ceil(self.rate * self.duration - 1e-9))
            n, nb = self.n_devices, self.batch
            blocks, rem = divmod(self.end_k - 1, nb * n)
            self.total_messages = blocks * n + min(rem + 1, n)
        else:
            self.end_k = 2**62
            self.total_messages = 2**62

    @property
    def message_rate(self) -> float:
        return self.rate / self.batch

    def _last_reading(self, m: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        n, nb = self.n_devices, self.batch
        return (m // n) * nb * n + (nb - 1) * n + m % n

    def due(self, elapsed: float) -> int:
        """How many messages are due ``elapsed`` seconds after the start."""
        k = math.floor(self.rate * (elapsed - self.shift) + 1e-9)
        if k >= self.end_k - 1:
            return self.total_messages
        n, nb = self.n_devices, self.batch
        k -= (nb - 1) * n
        if k < 0:
            return 0
        blocks, rem = divmod(k, nb * n)
        return blocks * n + min(rem + 1, n)

    def at_end(self, elapsed: float) -> bool:
        """True once the publishing time is over (the final partial batches are all due)."""
        return math.floor(self.rate * (elapsed - self.shift) + 1e-9) >= self.end_k - 1

    def due_at(self, m: int) -> float:
        """Seconds after the start at which message ``m`` is due."""
        k = int(self._last_reading(np.array([m], dtype=np.int64))[0])
        return min(k, self.end_k - 1) / self.rate + self.shift

    def slide(self, behind: int, max_burst: int) -> int:
        """Forfeit all but ``max_burst`` of ``behind`` overdue messages; returns how many."""
        excess = behind - max_burst
        if excess <= 0:
            return 0
        self.shift += excess / self.message_rate
        self.forfeited_messages += excess
        return excess

    def readings(
        self, m0: int, m1: int
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.bool_]
    ]:
        """Devices ``(M,)``, steps, offsets in seconds and which readings exist (the last
        messages may be partial), each ``(M, batch)``, of messages ``m0 … m1-1``."""
        m = np.arange(m0, m1, dtype=np.int64)
        n, nb = self.n_devices, self.batch
        dev = m % n
        step = (m // n)[:, None] * nb + np.arange(nb, dtype=np.int64)[None, :]
        k = step * n + dev[:, None]
        return dev, step, k / self.rate + self.shift, k < self.end_k
