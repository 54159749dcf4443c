"""Publishing over MQTT (QoS 1), AMQP (publisher confirms) and HTTP (device token).

Every transport counts what it sent, what the far side confirmed (PUBACK, broker confirm,
HTTP 202) and what failed, and bounds the number of unconfirmed messages so a slow broker
slows the publisher (and the pacer shows it) instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


@dataclass
class TransportConfig:
    kind: str  # mqtt | amqp | http | null
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_topic_prefix: str = ""
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    telemetry_exchange: str = "telemetry"
    ingest_url: str = "http://127.0.0.1:8004"
    #: Unconfirmed messages allowed in flight per process.
    window: int = 2000
    client_id: str = "simulator"


class Transport(Protocol):
    sent: int
    acked: int
    failed: int
    #: Messages the far side refused as the simulator meant it to (injected faults, HTTP 4xx).
    rejected: int

    async def start(self) -> None: ...

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None: ...

    async def flush(self, limit: float) -> None:
        """Wait until everything sent is confirmed (or failed), at most ``limit`` seconds."""

    async def close(self) -> None: ...


class _Counts:
    def __init__(self, window: int) -> None:
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.rejected = 0
        self.window = window

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked - self.failed - self.rejected

    async def _wait_window(self) -> None:
        while self.in_flight >= self.window:  # noqa: ASYNC110 - freed by other threads
            await asyncio.sleep(0.0005)

    async def flush(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        # Confirms arrive on paho's thread or as task callbacks: poll, briefly.
        while self.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class NullTransport(_Counts):
    """Confirms everything immediately: measures the simulator's own capacity."""

    async def start(self) -> None:
        return None

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        self.sent += 1
        self.acked += 1

    async def close(self) -> None:
        return None


class MqttTransport(_Counts):
    """paho-mqtt, QoS 1; paho's network thread handles PUBACKs."""

    def __init__(self, cfg: TransportConfig) -> None:
        super().__init__(cfg.window)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.max_inflight_messages_set(cfg.window)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            self._connected.set()
        else:
            log.error("MQTT connect refused: %s", rc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()
        if rc.is_failure:
            log.warning("MQTT disconnected: %s", rc)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            self.acked += 1

    async def start(self) -> None:
        self.client.connect_async(self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self._connected.is_set():
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"cannot connect to MQTT at {self.cfg.mqtt_host}:{self.cfg.mqtt_port}"
                )
            await asyncio.sleep(0.02)

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        if self.in_flight >= self.window:
            await self._wait_window()
        topic = f"{self.cfg.mqtt_topic_prefix}devices/{device_id}/telemetry"
        self.sent += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                self.failed += 1

    async def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AmqpTransport(_Counts):
    """aio-pika with publisher confirms; confirms are awaited concurrently (bounded)."""

    def __init__(self, cfg: TransportConfig) -> None:
        super().__init__(cfg.window)
        self.cfg = cfg
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: Any = None
        self._exchange: Any = None

    async def start(self) -> None:
        import aio_pika

        self._conn = await aio_pika.connect_robust(self.cfg.rabbitmq_url)
        channel = await self._conn.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.cfg.telemetry_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _send(self, device_id: str, payload: bytes) -> None:
        import aio_pika

        msg = aio_pika.Message(
            payload,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._exchange.publish(msg, routing_key=f"device.{device_id}")
        except Exception as exc:
            self.failed += 1
            log.warning("AMQP publish failed for %s: %s", device_id, exc)
        else:
            self.acked += 1

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        if self.in_flight >= self.window:
            await self._wait_window()
        self.sent += 1
        task = asyncio.create_task(self._send(device_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()


class HttpTransport(_Counts):
    """``POST /ingest/{device_id}`` with the device's bearer token; 202 is a confirm."""

    def __init__(self, cfg: TransportConfig) -> None:
        super().__init__(min(cfg.window, 256))
        self.cfg = cfg
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None

    async def start(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(
            base_url=self.cfg.ingest_url, limits=limits, timeout=httpx.Timeout(30.0)
        )

    async def _send(self, device_id: str, payload: bytes, token: str | None, reject: bool) -> None:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = await self._client.post(f"/ingest/{device_id}", content=payload, headers=headers)
        except Exception as exc:
            self.failed += 1
            log.warning("HTTP ingest failed for %s: %s", device_id, exc)
            return
        if resp.status_code in (200, 202):
            self.acked += 1
        elif reject and 400 <= resp.status_code < 500:
            self.rejected += 1
        else:
            self.failed += 1
            log.warning("HTTP ingest for %s answered %s", device_id, resp.status_code)

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        if self.in_flight >= self.window:
            await self._wait_window()
        self.sent += 1
        task = asyncio.create_task(self._send(device_id, payload, token, expect_reject))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


def make_transport(cfg: TransportConfig) -> Transport:
    kinds: dict[str, type[Any]] = {
        "mqtt": MqttTransport,
        "amqp": AmqpTransport,
        "http": HttpTransport,
    }
    if cfg.kind == "null":
        return NullTransport(cfg.window)
    try:
        cls = kinds[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown transport {cfg.kind!r} (mqtt, amqp, http, null)") from None
    transport: Transport = cls(cfg)
    return transport
