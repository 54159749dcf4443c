"""The path every upstream message takes: device check → validate → produce → count.

Sources hand over batches of :class:`Inbound` messages and acknowledge upstream only after
:meth:`Pipeline.submit` returns, which happens once Kafka has acknowledged every envelope and
dead letter the batch produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from ingest_bridge import metrics
from ingest_bridge.devices import DeviceDirectory, DeviceInfo, DeviceLookupUnavailable
from ingest_bridge.last_seen import LastSeenWriter
from ingest_bridge.sink import KafkaSink, Record
from ingest_bridge.validate import MessageResult, Validator, refuse
from iot_common.telemetry import (
    DeadLetter,
    TelemetryEnvelope,
    deadletter_encoder,
    envelope_encoder,
)
from iot_common.telemetry import DeadLetterReason as R
from iot_common.topics import Topics

log = logging.getLogger(__name__)


class Inbound(NamedTuple):
    """One upstream message: the device it claims to come from (None: unroutable) and bytes."""

    device_id: str | None
    payload: bytes
    #: Why the message cannot be routed when ``device_id`` is None, or is refused.
    detail: str = ""
    #: Set when the source already refused the message (e.g. ``unauthorized``): it is
    #: dead-lettered with this reason, under ``device_id``, and never validated or stored.
    refused: str | None = None


class Pipeline:
    """Stateless apart from counters; shared by every source of one bridge process."""

    def __init__(
        self,
        *,
        validator: Validator,
        devices: DeviceDirectory,
        sink: KafkaSink,
        topics: Topics,
        last_seen: LastSeenWriter | None = None,
    ) -> None:
        self.validator = validator
        self.devices = devices
        self.sink = sink
        self.topics = topics
        self.last_seen = last_seen
        #: Set while device lookups fail (device-management and cache unreachable).
        self.lookups_failing = False

    async def lookup(self, device_ids: Sequence[str]) -> dict[str, DeviceInfo]:
        """Device infos, retrying (with backoff) while neither cache nor API can answer."""
        backoff = 0.2
        while True:
            try:
                found = await self.devices.lookup_many(device_ids)
            except DeviceLookupUnavailable as exc:
                if not self.lookups_failing:
                    log.warning("device lookups failing: %s", exc)
                self.lookups_failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.lookups_failing = False
            return found

    async def submit(self, source: str, batch: Sequence[Inbound]) -> list[MessageResult]:
        """Validate and produce ``batch``; returns per-message results after Kafka acked all."""
        now = time.time()
        metrics.RECEIVED.labels(source).inc(len(batch))
        metrics.BATCH_SIZE.labels(source).observe(len(batch))
        max_bytes = self.validator.limits.max_payload_bytes
        ids = {m.device_id for m in batch if m.device_id is not None and m.refused is None}
        infos = await self.lookup(list(ids)) if ids else {}
        validate = self.validator.validate
        raw_topic = self.topics.telemetry_raw
        records: list[Record] = []
        results: list[MessageResult] = []
        seen: set[str] = set()
        readings = envelopes = 0
        for msg in batch:
            did = msg.device_id
            if msg.refused is not None:
                res = refuse(msg.refused, msg.detail, msg.payload)
            elif did is None:
                res = refuse(R.INVALID_SCHEMA, msg.detail or "no device id", msg.payload)
            elif len(msg.payload) > max_bytes:
                res = refuse(R.TOO_LARGE, f"{len(msg.payload)} bytes > {max_bytes}", msg.payload)
            else:
                info = infos[did]
                if not info.exists:
                    res = refuse(R.UNKNOWN_DEVICE, "no such device", msg.payload)
                elif not info.active:
                    res = refuse(R.INACTIVE_DEVICE, "device is deactivated", msg.payload)
                else:
                    res = validate(did, msg.payload, now=now)
            if res.readings:
                assert did is not None
                env = TelemetryEnvelope(did, source, now, res.readings)
                records.append(Record(raw_topic, did.encode(), envelope_encoder.encode(env)))
                readings += len(res.readings)
                envelopes += 1
                seen.add(did)
            if res.rejects:
                records.extend(self._dead_letters(source, did, res, now))
            results.append(res)
        await self.sink.produce(records)
        if readings:
            metrics.READINGS_PRODUCED.labels(source).inc(readings)
            metrics.ENVELOPES_PRODUCED.labels(source).inc(envelopes)
        if self.last_seen is not None and seen:
            self.last_seen.touch(seen, now)
        return results

    def _dead_letters(
        self, source: str, device_id: str | None, res: MessageResult, now: float
    ) -> list[Record]:
        topic = self.topics.telemetry_deadletter
        key = device_id.encode() if device_id is not None else None
        out = []
        reasons: Counter[str] = Counter()
        limit = self.validator.limits.max_payload_bytes
        for rej in res.rejects:
            detail = rej.detail if rej.index is None else f"reading {rej.index}: {rej.detail}"
            payload = rej.payload
            if len(payload) > limit:
                # Keep dead letters producible: the first max_payload_bytes are evidence enough.
                payload = payload[:limit]
                detail += f" (payload truncated to its first {limit} bytes)"
            dl = DeadLetter(
                reason=rej.reason,
                source=source,
                payload=payload,
                ts=now,
                device_id=device_id,
                detail=detail,
            )
            out.append(Record(topic, key, deadletter_encoder.encode(dl)))
            reasons[rej.reason] += 1
        for reason, n in reasons.items():
            metrics.DEADLETTERED.labels(source, reason).inc(n)
        return out
