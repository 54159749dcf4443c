"""Errors in the stream stages (ingest-bridge's Kafka sink, stream-agents' batch loop).

The shape of quix-streams' ``error_callbacks.py`` and ``sinks/base/exceptions.py``:

* a stage that fails on one record asks a typed callback ``(exc, record, logger) -> bool``
  what to do: ``True`` — handled, the stage dead-letters the record with a reason, counts it
  and goes on; ``False`` — the stage raises. A stage never dies on one bad record by default:
  the defaults log where the record is (topic, partition, offset, device id) and return
  ``True``;
* a sink that cannot take writes for now (broker or database unreachable) raises
  :class:`SinkBackpressureError`; the stage holds its input, retries after ``retry_after``
  and commits nothing it has not written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from iot_common.errors import ServiceUnavailable


@dataclass(frozen=True, slots=True)
class RecordRef:
    """The record an error is about: where to find it again, and its bytes."""

    topic: str
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None
    value: bytes | None = None

    @property
    def device_id(self) -> str | None:
        """The platform keys every record by device id."""
        return self.key.decode("utf-8", "replace") if self.key is not None else None

    def where(self) -> str:
        """``partition="topic[p]" offset="o" device="d"`` for a log line."""
        return (
            f'partition="{self.topic}[{self.partition}]" offset="{self.offset}" '
            f'device="{self.device_id}"'
        )


#: Called when decoding or processing a consumed record raised.
ProcessingErrorCallback = Callable[[Exception, RecordRef, logging.Logger], bool]
#: Called when a sink refused a record for good (it will never take it: not an outage).
ProducerErrorCallback = Callable[[Exception, RecordRef, logging.Logger], bool]


def _log(what: str, exc: Exception, record: RecordRef, logger: logging.Logger) -> None:
    logger.error(
        "%s: %s: %s",
        what,
        record.where(),
        exc,
        exc_info=exc,
        extra={
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "device_id": record.device_id,
        },
    )


def default_on_processing_error(exc: Exception, record: RecordRef, logger: logging.Logger) -> bool:
    """Log where the record is; dead-letter it and go on."""
    _log("failed to process a record (dead-lettered)", exc, record, logger)
    return True


def default_on_producer_error(exc: Exception, record: RecordRef, logger: logging.Logger) -> bool:
    """Log where the record is; dead-letter it and go on."""
    _log("a sink refused a record (dead-lettered)", exc, record, logger)
    return True


def kafka_unavailable(exc: BaseException) -> bool:
    """Whether a Kafka client error means the broker cannot take records *for now* (retry)
    rather than that it will never take this record (an error callback's case).

    aiokafka marks its errors ``retriable``; its ``KafkaTimeoutError`` is marked otherwise but
    only means no answer came in time (metadata or a batch waiting for a broker).
    """
    # Imported here: only the stream stages call this, and they depend on aiokafka (the
    # other users of iot_common do not).
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    if isinstance(exc, OSError | KafkaTimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


class SinkBackpressureError(ServiceUnavailable):
    """A sink cannot take writes for now; try again after ``retry_after`` seconds.

    Raised for outages (connection refused, timed out, broker without a leader), never for a
    record the sink will not take whatever happens (that goes to an error callback).
    """

    code = "sink_backpressure"

    def __init__(
        self,
        message: str,
        *,
        sink: str,
        retry_after: float,
        topic: str | None = None,
        partition: int | None = None,
    ) -> None:
        super().__init__(message)
        self.sink = sink
        self.retry_after = retry_after
        self.topic = topic
        self.partition = partition
