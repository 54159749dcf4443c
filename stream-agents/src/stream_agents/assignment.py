"""Which ``telemetry.raw`` partitions (and so which devices) this worker owns right now."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.partitioner import murmur2
from faust.types import TP


class Assignment:
    """Set by Faust's rebalance callbacks; read by the fetch loop, the ticks and the rules.

    ``paused`` is up from the moment a rebalance starts (partitions revoked) until the new
    assignment is known, and before the first one: nothing is fetched or committed then.
    """

    def __init__(self, *, topic: str, partitions: int) -> None:
        self.topic = topic
        self.tps: set[TP] = set()
        self.owned: set[int] = set()
        #: Partition count of ``topic`` (the consumer's metadata, once known): devices map
        #: to partitions by murmur2(device id) mod this, as producers key them.
        self.n_partitions = partitions
        self.paused = True

    def assign(self, assigned: Iterable[TP], *, n_partitions: int | None) -> None:
        mine = {tp for tp in assigned if tp.topic == self.topic}
        self.tps = mine
        self.owned = {tp.partition for tp in mine}
        if n_partitions:
            self.n_partitions = n_partitions

    def owns_device(self, device_id: str) -> bool:
        p = (murmur2(device_id.encode()) & 0x7FFFFFFF) % max(self.n_partitions, 1)
        return p in self.owned
