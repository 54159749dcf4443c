"""The stream stages' shared error types: what the default callbacks log and decide, and
which Kafka errors count as an outage."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)

from iot_common.stream_errors import (
    RecordRef,
    SinkBackpressureError,
    default_on_processing_error,
    default_on_producer_error,
    kafka_unavailable,
)


@pytest.mark.parametrize("callback", [default_on_processing_error, default_on_producer_error])
def test_defaults_log_where_the_record_is_and_carry_on(
    callback: object, caplog: pytest.LogCaptureFixture
) -> None:
    ref = RecordRef("p.telemetry.raw", 3, 1234, b"dev-7", b"{}")
    logger = logging.getLogger("test.stream")
    with caplog.at_level(logging.ERROR, logger="test.stream"):
        assert callback(ValueError("boom"), ref, logger) is True  # type: ignore[operator]
    (rec,) = caplog.records
    msg = rec.getMessage()
    assert 'partition="p.telemetry.raw[3]"' in msg and 'offset="1234"' in msg
    assert 'device="dev-7"' in msg and "boom" in msg
    assert rec.exc_info is not None
    assert (rec.topic, rec.partition, rec.offset, rec.device_id) == (  # type: ignore[attr-defined]
        "p.telemetry.raw",
        3,
        1234,
        "dev-7",
    )


def test_outages_and_refusals_are_told_apart() -> None:
    for exc in (
        KafkaConnectionError("down"),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),
        ConnectionRefusedError(),
        TimeoutError(),
    ):
        assert kafka_unavailable(exc), exc
    for exc in (MessageSizeTooLargeError(), ValueError("bug")):
        assert not kafka_unavailable(exc), exc


def test_backpressure_is_a_503_with_where_and_when() -> None:
    exc = SinkBackpressureError("store down", sink="store", retry_after=0.5, topic="t")
    assert exc.status_code == 503 and exc.code == "sink_backpressure"
    assert (exc.sink, exc.retry_after, exc.topic, exc.partition) == ("store", 0.5, "t", None)
