"""The ``alerts`` topic as input: acknowledgements and clears made elsewhere (users, through
the monitoring API, or other workers) reach this worker's alert engine."""

from __future__ import annotations

import msgspec
from prometheus_client import Counter

from iot_common.events import alert_decoder
from stream_agents.alerts import AlertEngine

EXTERNAL_ALERTS = Counter("agents_alert_records_total", "alerts records consumed")


class AlertFeed:
    def __init__(self, *, engine: AlertEngine) -> None:
        self.engine = engine

    def on_record(self, raw: bytes) -> None:
        try:
            a = alert_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        EXTERNAL_ALERTS.inc()
        self.engine.apply_external(a)
