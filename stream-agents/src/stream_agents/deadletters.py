"""Refused messages kept for their devices' owners: ``telemetry.deadletter`` → the store.

The agents are the monitoring store's writer (windows, samples, alerts) and already run in a
consumer group, so each dead letter is written by one worker and its offset is acknowledged
only once it is stored (Faust's ``take_events`` acks a batch after the agent has handled it).
The API only reads them (``GET /monitoring/deadletters``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from prometheus_client import Counter

from iot_common.stream_errors import RecordRef
from iot_common.telemetry import deadletter_decoder
from monitoring_store.base import DeadLetterRecord, MonitoringStore, deadletter_record
from stream_agents.backpressure import Backpressure

log = logging.getLogger(__name__)

KEPT = Counter(
    "agents_deadletters_kept_total",
    "telemetry.deadletter records stored for their owners, or skipped",
    ["outcome"],
)


def records_from(refs: Sequence[RecordRef]) -> list[DeadLetterRecord]:
    """What the store keeps of ``refs`` (one per record that names a device)."""
    out = []
    for ref in refs:
        try:
            dl = deadletter_decoder.decode(ref.value or b"")
        except msgspec.DecodeError as exc:
            # A dead letter of a dead letter would loop: log where it is and go on.
            log.warning("undecodable dead letter at %s: %s", ref.where(), exc)
            KEPT.labels("undecodable").inc()
            continue
        rec = deadletter_record(dl, id=f"{ref.topic}/{ref.partition}/{ref.offset}")
        if rec is None:
            KEPT.labels("no_device").inc()
            continue
        out.append(rec)
    return out


class DeadLetterKeeper:
    """Stores batches of dead letters; a store outage holds the batch (backpressure)."""

    def __init__(self, *, store: MonitoringStore, backpressure: Backpressure) -> None:
        self.store = store
        self.backpressure = backpressure

    async def keep(self, refs: Sequence[RecordRef]) -> int:
        records = records_from(refs)
        if records:
            await self.backpressure.store(lambda: self.store.insert_deadletters(records))
            KEPT.labels("stored").inc(len(records))
        return len(records)

    async def enforce_retention(self, before: float) -> int:
        return await self.backpressure.store(lambda: self.store.delete_deadletters_before(before))
