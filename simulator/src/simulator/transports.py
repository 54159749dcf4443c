"""Publishing over MQTT (QoS 1), AMQP (publisher confirms) and HTTP (device token).

Every transport behaves as an at-least-once client: a message counts as confirmed once the far
side confirmed it (PUBACK, broker confirm, HTTP 202). Until then it is kept and sent again
after a reconnect (MQTT: paho re-sends its in-flight messages on a persistent session; AMQP:
unconfirmed publications are re-published once the robust connection is back; HTTP: connection
errors and 5xx are retried with backoff). A message only counts as failed once it was given up
after ``give_up_after`` seconds of trying. The number of unconfirmed messages is bounded (the
window), so a broker that is slow or away slows the publisher (the pacer shows it) instead of
filling memory or dropping messages.

Devices also receive their configuration: MQTT devices from their retained config topic
(:mod:`simulator.device_mqtt`), HTTP devices by polling ``GET /ingest/{id}/config`` with
``If-None-Match`` (:class:`HttpTransport`). Either way the transport records what each device
applied (:meth:`_Counts.apply_config`), reports the version back, and keeps the sampling
interval the configuration asks for (``settings.sample_interval_s``) where the publisher reads
it (:attr:`_Counts.sample_intervals`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt

from iot_common.device_config import DesiredConfig, DeviceConfig, config_etag

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
    #: Unconfirmed messages allowed in flight (or queued while disconnected) per process.
    window: int = 2000
    client_id: str = "simulator"
    #: Seconds a message is retried (kept across reconnects) before it counts as failed.
    give_up_after: float = 60.0
    #: Backoff between retries / reconnects: starts at ``retry_min``, doubles up to ``retry_max``.
    retry_min: float = 0.1
    retry_max: float = 2.0
    #: Seconds between two polls of an HTTP device's configuration (0: fetch once, at start).
    config_poll_interval: float = 30.0


class Transport(Protocol):
    sent: int
    acked: int
    failed: int
    #: Messages the far side refused as the simulator meant it to (injected faults, HTTP 4xx).
    rejected: int
    #: Device id → seconds between readings its applied configuration asks for.
    sample_intervals: dict[str, float]
    #: Bumped whenever :attr:`sample_intervals` changes (the publisher re-reads it then).
    config_changes: int

    async def start(self) -> None: ...

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None: ...

    async def flush(self, limit: float) -> None:
        """Wait until everything sent is confirmed (or given up), at most ``limit`` seconds."""

    async def close(self) -> None: ...


def backoff(attempt: int, low: float, high: float) -> float:
    """Delay before retry ``attempt`` (1, 2, …): exponential with jitter, at most ``high``."""
    return float(min(high, low * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def take_expired(pending: dict[Any, float], given_up: set[Any], limit: float) -> list[Any]:
    """Move messages first sent before ``limit`` from ``pending`` to ``given_up``.

    ``pending`` is in sending order (first-sent time per key), so the scan stops at the first
    message still inside its retry period.
    """
    expired: list[Any] = []
    for key, first in pending.items():
        if first > limit:
            break
        expired.append(key)
    for key in expired:
        del pending[key]
        given_up.add(key)
    return expired


def sample_interval_of(config: DeviceConfig) -> float | None:
    """``settings.sample_interval_s`` of a device configuration, when it is a positive number.

    The platform does not interpret settings; this is the simulated device's own reading of
    them, as a real device's firmware would read its own keys.
    """
    value = config.settings.get("sample_interval_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


@dataclass(frozen=True)
class AppliedConfig:
    """The configuration a simulated device applied, and the version that names it."""

    version: int
    config: DeviceConfig

    @property
    def sample_interval(self) -> float | None:
        return sample_interval_of(self.config)


class _Counts:
    def __init__(self, window: int) -> None:
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.rejected = 0
        self.window = window
        #: Device id → the configuration it applied last.
        self.configs: dict[str, AppliedConfig] = {}
        self.sample_intervals: dict[str, float] = {}
        self.config_changes = 0

    def apply_config(self, device_id: str, desired: DesiredConfig) -> AppliedConfig:
        """Record that ``device_id`` applied ``desired``; returns what it now runs."""
        applied = AppliedConfig(version=desired.version, config=desired.config)
        self.configs[device_id] = applied
        interval = applied.sample_interval
        if self.sample_intervals.get(device_id) != interval:
            if interval is None:
                self.sample_intervals.pop(device_id, None)
            else:
                self.sample_intervals[device_id] = interval
            self.config_changes += 1
        return applied

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked - self.failed - self.rejected

    def _expire(self) -> None:
        """Give up messages that were retried for too long (transports that track them)."""

    async def _wait_window(self) -> None:
        while self.in_flight >= self.window:
            self._expire()
            await asyncio.sleep(0.0005)

    async def flush(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        # Confirms arrive on paho's thread or as task callbacks: poll, briefly.
        while self.in_flight > 0 and time.monotonic() < deadline:
            self._expire()
            await asyncio.sleep(0.01)


class _Retrying(_Counts):
    """Counts for transports that publish a message again, with backoff, until it has been
    tried for ``give_up_after`` seconds."""

    cfg: TransportConfig

    def __init__(self, window: int) -> None:
        super().__init__(window)
        self.retries = 0

    async def _retry(
        self, what: str, device_id: str, problem: object, first: float, attempt: int
    ) -> bool:
        """After a failed try: False (counted as failed) once the message's time is up;
        otherwise count a retry, wait out the backoff and say True."""
        if time.monotonic() - first >= self.cfg.give_up_after:
            self.failed += 1
            log.error("%s for %s given up: %s", what, device_id, problem)
            return False
        self.retries += 1
        if attempt == 1:
            log.warning("%s for %s failed (%s); retrying", what, device_id, problem)
        await asyncio.sleep(backoff(attempt, self.cfg.retry_min, self.cfg.retry_max))
        return True


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
    """paho-mqtt, QoS 1, persistent session with a fixed client id; paho's network thread
    handles PUBACKs and reconnects, and re-sends unacknowledged messages after a reconnect.

    Messages published while disconnected stay in paho's queue (bounded by the window) and go
    out once the broker is back. Each unacknowledged message is tracked by its mid with the
    time it was first published; one unacknowledged for ``give_up_after`` seconds is dropped
    from paho's queue and counted as failed.
    """

    def __init__(self, cfg: TransportConfig) -> None:
        super().__init__(cfg.window)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._connected = threading.Event()
        #: mid → monotonic time of the first publish, oldest first.
        self._pending: dict[int, float] = {}
        #: PUBACKs that arrived before ``publish`` returned the mid (paho's thread is quick).
        self._early: set[int] = set()
        self._given_up: set[int] = set()
        self.reconnects = 0
        self._was_connected = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.max_inflight_messages_set(cfg.window)
        self.client.max_queued_messages_set(0)  # the window bounds it
        self.client.reconnect_delay_set(
            min_delay=max(1, round(cfg.retry_min)), max_delay=max(1, round(cfg.retry_max))
        )
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            if self._was_connected:
                self.reconnects += 1
                log.warning(
                    "MQTT reconnected (session present: %s); re-sending %d unacknowledged",
                    flags.session_present,
                    len(self._pending),
                )
            self._was_connected = True
            self._connected.set()
        else:
            log.error("MQTT connect refused: %s", rc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()
        if rc.is_failure:
            log.warning(
                "MQTT disconnected (%s); %d unacknowledged kept for re-sending",
                rc,
                len(self._pending),
            )

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            if self._pending.pop(mid, None) is not None:
                self.acked += 1
            elif mid in self._given_up:  # confirmed after all: it did arrive
                self._given_up.discard(mid)
                self.failed -= 1
                self.acked += 1
            else:
                self._early.add(mid)

    def _expire(self) -> None:
        if not self._pending:
            return
        limit = time.monotonic() - self.cfg.give_up_after
        with self._lock:
            expired: list[int] = take_expired(self._pending, self._given_up, limit)
            self.failed += len(expired)
        if not expired:
            return
        log.error(
            "MQTT: gave up %d message(s) unacknowledged for %.0f s",
            len(expired),
            self.cfg.give_up_after,
        )
        # Drop them from paho's queue too so they do not pile up (paho has no public API).
        c: Any = self.client
        with contextlib.suppress(Exception), c._out_message_mutex:
            for mid in expired:
                msg = c._out_messages.pop(mid, None)
                if msg is not None and msg.state == mqtt.mqtt_ms_wait_for_puback:
                    c._inflight_messages = max(0, c._inflight_messages - 1)

    async def start(self) -> None:
        """Connect, waiting for the broker up to ``give_up_after`` seconds."""
        self.client.connect_async(self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + max(self.cfg.give_up_after, 1.0)
        while not self._connected.is_set():
            if time.monotonic() > deadline:
                self.client.loop_stop()
                raise ConnectionError(
                    f"cannot connect to MQTT at {self.cfg.mqtt_host}:{self.cfg.mqtt_port}"
                )
            await asyncio.sleep(0.02)

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        if self._pending:
            self._expire()
        if self.in_flight >= self.window:
            await self._wait_window()
        topic = f"{self.cfg.mqtt_topic_prefix}devices/{device_id}/telemetry"
        self.sent += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps the message and sends it once reconnected.
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self.acked += 1
                else:
                    self._given_up.discard(info.mid)
                    self._pending[info.mid] = time.monotonic()
        else:
            with self._lock:
                self.failed += 1
            log.error("MQTT publish refused by the client: %s", mqtt.error_string(info.rc))

    async def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self.in_flight == 0 and self._was_connected:
            # Nothing left to re-send: end the persistent session so the broker forgets it.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._end_session)

    def _end_session(self) -> None:
        """Connect once with a clean session under the same client id, then disconnect."""
        done = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=self.cfg.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.on_connect = lambda c, *a: c.disconnect()
        client.on_disconnect = lambda *a: done.set()
        client.connect(self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=5)
        client.loop_start()
        done.wait(2)
        client.loop_stop()


class AmqpTransport(_Retrying):
    """aio-pika with publisher confirms; confirms are awaited concurrently (bounded).

    Each device publishes on its own connection, as the device: RabbitMQ user = device id,
    password = its device token (what device-management provisioned), and every message
    carries ``user_id`` = the device id, which the broker validates and the bridge requires.
    A device without a token (``--no-register``) publishes on one shared connection as
    ``rabbitmq_url``'s user, without ``user_id`` (the bridge dead-letters that as
    ``unauthorized``: load generation only).

    A publication that fails (connection or channel lost, confirm lost, nack) is published
    again, with backoff, once the robust connection is back, until ``give_up_after`` seconds.
    """

    def __init__(self, cfg: TransportConfig) -> None:
        super().__init__(cfg.window)
        self.cfg = cfg
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: Any = None
        self._channel: Any = None
        self._exchange: Any = None
        #: device id -> its own (connection, channel, exchange), opened on first use.
        self._links: dict[str, asyncio.Task[tuple[Any, Any, Any]]] = {}

    async def start(self) -> None:
        """Connect the shared connection lazily; nothing to do until the first message."""

    def _device_url(self, device_id: str, token: str) -> str:
        parts = urlsplit(self.cfg.rabbitmq_url)
        host = parts.netloc.rsplit("@", 1)[-1]
        user = f"{quote(device_id, safe='')}:{quote(token, safe='')}"
        return urlunsplit(parts._replace(netloc=f"{user}@{host}"))

    async def _open(self, url: str) -> tuple[Any, Any, Any]:
        """Connect (waiting for the broker up to ``give_up_after``) and find the exchange."""
        import aio_pika

        deadline = time.monotonic() + max(self.cfg.give_up_after, 1.0)
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = await aio_pika.connect_robust(url)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot connect to RabbitMQ: {exc}") from exc
                log.warning("RabbitMQ not reachable (%s), retrying", exc)
                await asyncio.sleep(backoff(attempt, self.cfg.retry_min * 5, self.cfg.retry_max))
        try:
            channel = await conn.channel(publisher_confirms=True)
            # Passive: a device may not declare exchanges (the platform's setup does).
            exchange = await channel.get_exchange(self.cfg.telemetry_exchange, ensure=True)
        except BaseException:
            await conn.close()
            raise
        return conn, channel, exchange

    async def _link(self, device_id: str, token: str | None) -> tuple[Any, Any]:
        """(channel, exchange) to publish ``device_id``'s readings on."""
        if token is None:
            if self._exchange is None:
                self._conn, self._channel, self._exchange = await self._open(self.cfg.rabbitmq_url)
            return self._channel, self._exchange
        task = self._links.get(device_id)
        if task is None or (task.done() and task.exception() is not None):
            task = self._links[device_id] = asyncio.create_task(
                self._open(self._device_url(device_id, token))
            )
        _, channel, exchange = await asyncio.shield(task)
        return channel, exchange

    async def _publish_once(self, device_id: str, payload: bytes, token: str | None) -> None:
        import aio_pika

        _, exchange = await self._link(device_id, token)
        msg = aio_pika.Message(
            payload,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=device_id if token is not None else None,
        )
        await exchange.publish(msg, routing_key=f"device.{device_id}", timeout=30)

    async def _send(self, device_id: str, payload: bytes, token: str | None) -> None:
        first = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._publish_once(device_id, payload, token)
            except Exception as exc:
                if not await self._retry("AMQP publish", device_id, exc, first, attempt):
                    return
                await self._wait_ready(first, device_id, token)
            else:
                self.acked += 1
                return

    async def _wait_ready(self, first: float, device_id: str, token: str | None) -> None:
        """Until the robust channel is usable again (or the message's time is up)."""
        left = self.cfg.give_up_after - (time.monotonic() - first)
        channel = self._channel
        if token is not None:
            task = self._links.get(device_id)
            if task is None or not task.done() or task.exception() is not None:
                return
            channel = task.result()[1]
        if channel is None or left <= 0:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.ready(), timeout=left)

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        if self.in_flight >= self.window:
            await self._wait_window()
        self.sent += 1
        task = asyncio.create_task(self._send(device_id, payload, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        conns = [self._conn] if self._conn is not None else []
        for link in self._links.values():
            if not link.done():
                link.cancel()
            with contextlib.suppress(BaseException):
                conns.append((await link)[0])
        self._links.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()


class HttpTransport(_Retrying):
    """``POST /ingest/{device_id}`` with the device's bearer token; 202 is a confirm.

    Connection errors, timeouts, 5xx and 429 are retried with backoff until ``give_up_after``
    seconds; any other 4xx is final (rejected if the simulator meant it, failed otherwise).

    Each device with a token also fetches its configuration at start and then polls it every
    ``config_poll_interval`` seconds, as a device that has no downlink would:
    ``GET /ingest/{id}/config`` with ``If-None-Match`` of the version it runs (so an unchanged
    configuration costs a 304 and no body), and after applying a new one
    ``PUT /ingest/{id}/config/reported``. The polls are bounded: one round at a time, at most
    :attr:`CONFIG_CONCURRENCY` requests at once per process, each with its own timeout; a
    failed poll only logs (the readings go on; the next round tries again). A report that did
    not go through leaves the device's tag unset, so the next round fetches and reports that
    version again.
    """

    #: Config requests in flight at once (per process): polling never crowds out readings.
    CONFIG_CONCURRENCY = 8
    CONFIG_TIMEOUT = 10.0

    def __init__(self, cfg: TransportConfig, credentials: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(min(cfg.window, 256))
        self.cfg = cfg
        self.credentials = [(d, t) for d, t in credentials if t]
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None
        self._poller: asyncio.Task[None] | None = None
        #: Device id → ETag of the configuration it applied and reported.
        self._etags: dict[str, str] = {}
        self.config_polls = 0
        self.config_errors = 0

    async def start(self) -> None:
        import httpx

        if self._client is None:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(
                base_url=self.cfg.ingest_url, limits=limits, timeout=httpx.Timeout(30.0)
            )
        if self.credentials:
            # The first round runs at once; the readings wait for it, but not for long: an
            # endpoint that does not answer delays the start by CONFIG_TIMEOUT at most.
            first = asyncio.Event()
            self._poller = asyncio.create_task(self._poll_forever(first))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first.wait(), self.CONFIG_TIMEOUT)

    # -- configuration ------------------------------------------------------------------
    async def _poll_forever(self, first: asyncio.Event) -> None:
        while True:
            await self.poll_configs()
            first.set()
            if self.cfg.config_poll_interval <= 0:
                return
            await asyncio.sleep(self.cfg.config_poll_interval)

    async def poll_configs(self) -> None:
        """One round: every device asks for its configuration (bounded concurrency)."""
        gate = asyncio.Semaphore(self.CONFIG_CONCURRENCY)

        async def one(device_id: str, token: str) -> None:
            async with gate:
                await self._poll_config(device_id, token)

        await asyncio.gather(*(one(d, t) for d, t in self.credentials))

    async def _poll_config(self, device_id: str, token: str) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"}
        etag = self._etags.get(device_id)
        if etag is not None:
            headers["If-None-Match"] = etag
        self.config_polls += 1
        try:
            resp = await self._client.get(
                f"/ingest/{device_id}/config", headers=headers, timeout=self.CONFIG_TIMEOUT
            )
            if resp.status_code == 304:
                return
            if resp.status_code != 200:
                raise ValueError(f"GET config answered {resp.status_code}")
            desired = DesiredConfig.model_validate_json(resp.content)
            self.apply_config(device_id, desired)
            report = await self._client.put(
                f"/ingest/{device_id}/config/reported",
                json={"version": desired.version},
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.CONFIG_TIMEOUT,
            )
            if report.status_code != 200:
                raise ValueError(f"PUT config/reported answered {report.status_code}")
        except (httpx.HTTPError, ValueError) as exc:  # pydantic's ValidationError included
            self.config_errors += 1
            log.warning("config poll of HTTP device %s failed: %s", device_id, exc)
            return
        self._etags[device_id] = resp.headers.get("ETag") or config_etag(desired.version)

    async def _send(self, device_id: str, payload: bytes, token: str | None, reject: bool) -> None:
        import httpx

        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        first = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            problem: str
            try:
                resp = await self._client.post(
                    f"/ingest/{device_id}", content=payload, headers=headers
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = resp.status_code
                if status in (200, 202):
                    self.acked += 1
                    return
                if 400 <= status < 500 and status != 429:
                    if reject:
                        self.rejected += 1
                    else:
                        self.failed += 1
                        log.warning("HTTP ingest for %s answered %s", device_id, status)
                    return
                problem = f"HTTP {status}"
            if not await self._retry("HTTP ingest", device_id, problem, first, attempt):
                return

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
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


def make_transport(cfg: TransportConfig, credentials: Sequence[tuple[str, str]] = ()) -> Transport:
    """The transport of ``cfg.kind``. MQTT with device credentials (id, token) connects each
    device on its own authenticated connection; without any, one shared connection (load
    generation against a broker that takes anonymous clients, ``--no-register``). HTTP
    devices with credentials poll their configuration."""
    if cfg.kind == "mqtt" and credentials:
        from simulator.device_mqtt import DeviceMqttTransport

        return DeviceMqttTransport(cfg, credentials)
    if cfg.kind == "http":
        return HttpTransport(cfg, credentials)
    kinds: dict[str, type[Any]] = {
        "mqtt": MqttTransport,
        "amqp": AmqpTransport,
    }
    if cfg.kind == "null":
        return NullTransport(cfg.window)
    try:
        cls = kinds[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown transport {cfg.kind!r} (mqtt, amqp, http, null)") from None
    transport: Transport = cls(cfg)
    return transport
