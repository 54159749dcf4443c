"""MQTT source: a lean MQTT v5 subscriber on asyncio, acknowledging only after Kafka has.

Why not aiomqtt or paho: both are built on paho's packet reader, which issues three or more
``recv`` calls and builds a message object per packet, and aiomqtt (2.5) acknowledges QoS 1 on
receipt. Measured in ``benchmarks/bench_ingest.py`` on this machine, that caps a subscriber at
a few thousand QoS 1 messages per second. This protocol parses whole TCP reads at once and
answers a batch's PUBACKs with a single write, which is what the throughput target needs. It
implements only the subscriber side a bridge uses: CONNECT (v5, persistent session, Receive
Maximum), SUBSCRIBE, PUBLISH QoS 0/1 in, PUBACK, PINGREQ, DISCONNECT.

At-least-once: a PUBLISH is acknowledged only after :meth:`Pipeline.submit` returned for the
batch that carried it. The session outlives the connection (``clean_start`` false, a session
expiry interval, a client id that stays the same across restarts of one replica), so readings
published while the bridge is down are queued by the broker, and unacknowledged ones are sent
again after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ingest_bridge import metrics
from ingest_bridge.pipeline import Inbound, Pipeline

log = logging.getLogger(__name__)

SOURCE = "mqtt"


class MqttError(Exception):
    """The broker refused us or broke the protocol."""


def session_client_id(base: str, *, password: str | None, instance: str | None = None) -> str:
    """The bridge's MQTT client id: ``<base>-<suffix>``, one per replica, named by nobody else.

    A fixed id (``ingest-bridge-1`` until now) was shared by every replica, so two replicas
    took the session from each other in turns, and anyone could name it. A random id per start
    would lose readings: Mosquitto keeps delivering a shared subscription's share to a session
    whose client has gone (until the session expires), so a restarted bridge must come back
    under the id it had. The suffix is an HMAC of the replica's name (``instance``, by default
    the host name: the pod or container) keyed with the bridge's MQTT password: the same
    across restarts of a replica, different between replicas, unknowable without the password.
    """
    name = instance or socket.gethostname()
    key = (password or "").encode()
    suffix = hmac.new(key, f"{base}/{name}".encode(), hashlib.sha256).hexdigest()[:20]
    return f"{base}-{suffix}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``i``; returns (value, next index)."""
    value = 0
    shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise MqttError("malformed variable byte integer")


def connect_packet(
    *,
    client_id: str,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    max_packet_size: int = 0,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0x00
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = (
        b"\x11" + session_expiry.to_bytes(4, "big") + b"\x21" + receive_maximum.to_bytes(2, "big")
    )
    if max_packet_size:
        # Maximum Packet Size: the broker must not send us a larger packet (it drops the
        # message for us instead, MQTT 5 §3.1.2.11.4).
        props += b"\x27" + max_packet_size.to_bytes(4, "big")
    body = (
        _utf8("MQTT")
        + bytes([5, flags])
        + keepalive.to_bytes(2, "big")
        + _varint(len(props))
        + props
        + _utf8(client_id)
    )
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _utf8(password)
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str | list[str], qos: int = 1) -> bytes:
    """One SUBSCRIBE for one or more filters (the SUBACK has a reason code per filter)."""
    filters = [topic_filter] if isinstance(topic_filter, str) else topic_filter
    body = packet_id.to_bytes(2, "big") + b"\x00"
    for f in filters:
        body += _utf8(f) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


#: What the source does with a device's reported configuration: (device id, payload).
ConfigReportHandler = Callable[[str, bytes], Awaitable[None]]


def pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs (reason Success, v5 short form) for many packet ids in one buffer."""
    return struct.pack(f">{len(packet_ids)}I", *[0x40020000 | p for p in packet_ids])


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


class _Connection(asyncio.Protocol):
    """One TCP connection to the broker; parses packets and hands PUBLISHes to the source."""

    def __init__(self, source: MqttSource, generation: int, max_packet_size: int = 0) -> None:
        self.source = source
        self.generation = generation
        #: Larger packets break the limit we announced in CONNECT: refused at their header.
        self.max_packet_size = max_packet_size
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_rx = time.monotonic()
        self.paused = False
        self._rest = b""
        #: A packet whose header has been read but not all of its body: its pieces, kept
        #: until ``_need`` bytes are there, then joined once. (Joining the rest to every read,
        #: as before, copied a 64 MiB packet ~1,000 times: ~9.5 s of CPU.)
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        if self._need:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            buf = b"".join(self._parts)
            self._parts, self._have, self._need = [], 0, 0
        else:
            buf = self._rest + data if self._rest else data
        limit = self.max_packet_size
        n = len(buf)
        pos = 0
        got: list[tuple[bytes, bytes, int]] = []
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                # remaining length (inlined: this loop runs once per message)
                i = pos + 1
                rl = 0
                shift = 0
                while True:
                    if i >= n:
                        rl = -1
                        break
                    b = buf[i]
                    i += 1
                    rl |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttError("malformed remaining length")
                if rl < 0:
                    break
                if limit and i - pos + rl > limit:
                    raise MqttError(
                        f"a packet of {i - pos + rl} bytes exceeds our maximum of {limit}"
                    )
                if i + rl > n:
                    # The header is complete: collect the body's pieces until it all came.
                    self._parts = [buf[pos:]]
                    self._have = n - pos
                    self._need = i + rl - pos
                    self._rest = b""
                    if got:
                        self.source._received(self, got)
                    return
                end = i + rl
                kind = b0 >> 4
                if kind == 3:  # PUBLISH
                    qos = (b0 >> 1) & 3
                    tlen = (buf[i] << 8) | buf[i + 1]
                    j = i + 2 + tlen
                    topic = buf[i + 2 : j]
                    if qos:
                        pid = (buf[j] << 8) | buf[j + 1]
                        j += 2
                    else:
                        pid = 0
                    plen = buf[j]
                    if plen < 0x80:
                        j += 1 + plen
                    else:
                        plen, j = _read_varint(buf, j)
                        j += plen
                    got.append((topic, buf[j:end], pid))
                else:
                    self._control(kind, buf[i:end])
                pos = end
        except IndexError:
            log.error("MQTT protocol error: truncated packet; reconnecting")
            self.abort()
            return
        except MqttError as exc:
            log.error("MQTT protocol error: %s; reconnecting", exc)
            self.abort()
            return
        self._rest = buf[pos:] if pos < n else b""
        if got:
            self.source._received(self, got)

    def _control(self, kind: int, body: bytes) -> None:
        if kind == 2:  # CONNACK
            if len(body) < 2:
                raise MqttError("short CONNACK")
            if not self.connack.done():
                self.connack.set_result((bool(body[0] & 1), body[1]))
        elif kind == 9:  # SUBACK
            plen, j = _read_varint(body, 2)
            if not self.suback.done():
                self.suback.set_result(body[j + plen :])
        elif kind == 14:  # DISCONNECT from the server
            reason = body[0] if body else 0
            log.warning("MQTT broker sent DISCONNECT (reason 0x%02x)", reason)
            self.abort()
        # PINGRESP (13) only refreshes last_rx; nothing else is expected.


class MqttSource:
    """Subscribes through a shared subscription and feeds the pipeline in batches."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        host: str,
        port: int,
        client_id: str,
        share_group: str,
        topic_prefix: str = "",
        session_expiry: int = 7 * 24 * 3600,
        receive_maximum: int = 10_000,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        max_in_flight: int = 10_000,
        max_in_flight_bytes: int = 16 * 1024 * 1024,
        max_concurrent_batches: int = 4,
        max_batch_messages: int = 5_000,
        max_batch_bytes: int = 1024 * 1024,
        max_packet_size: int = 256 * 1024,
        on_config_report: ConfigReportHandler | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.pipeline = pipeline
        #: TLS to the broker (certificate and host name verified); None: plain TCP.
        self.ssl_context = ssl_context
        self.on_config_report = on_config_report
        self.reported_filter = f"$share/{share_group}/{topic_prefix}devices/+/config/reported"
        self.host = host
        self.port = port
        self.client_id = client_id
        self.topic_prefix = topic_prefix
        self.topic_filter = f"$share/{share_group}/{topic_prefix}devices/+/telemetry"
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        self.username = username
        self.password = password
        self.max_in_flight = max_in_flight
        self.max_concurrent = max_concurrent_batches
        self.max_batch = max_batch_messages
        self.max_in_flight_bytes = max_in_flight_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_packet_size = max_packet_size
        self.connected = False
        self.in_flight = 0
        self.in_flight_bytes = 0
        #: Messages received since start (all connections).
        self.received = 0
        self._pending: list[tuple[bytes, bytes, int, _Connection]] = []
        self._active = 0
        self._conn: _Connection | None = None
        self._generation = 0
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._device_of_topic: dict[bytes, str | None] = {}
        self._prefix_b = f"{topic_prefix}devices/".encode()
        self._gauge = metrics.IN_FLIGHT.labels(SOURCE)

    @property
    def saturated(self) -> bool:
        return (
            self.in_flight >= self.max_in_flight or self.in_flight_bytes >= self.max_in_flight_bytes
        )

    # --- connection management ---

    async def run(self) -> None:
        """Connect, subscribe and keep reconnecting until :meth:`close`."""
        backoff = 0.2
        while not self._closing:
            try:
                await self._session()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except (OSError, MqttError, TimeoutError) as exc:
                log.warning(
                    "MQTT connection to %s:%s failed: %s; retrying in %.1fs",
                    self.host,
                    self.port,
                    exc,
                    backoff,
                )
            self.connected = False
            if self._closing:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        self._generation += 1
        gen = self._generation
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Connection(self, gen, self.max_packet_size),
                self.host,
                self.port,
                ssl=self.ssl_context,
            ),
            timeout=10,
        )
        self._conn = conn
        try:
            conn.write(
                connect_packet(
                    client_id=self.client_id,
                    keepalive=self.keepalive,
                    clean_start=False,
                    session_expiry=self.session_expiry,
                    receive_maximum=self.receive_maximum,
                    max_packet_size=self.max_packet_size,
                    username=self.username,
                    password=self.password,
                )
            )
            present, code = await asyncio.wait_for(conn.connack, timeout=10)
            if code != 0:
                raise MqttError(f"CONNACK refused with reason 0x{code:02x}")
            filters = [self.topic_filter]
            if self.on_config_report is not None:
                filters.append(self.reported_filter)
            conn.write(subscribe_packet(1, filters))
            codes = await asyncio.wait_for(conn.suback, timeout=10)
            if len(codes) < len(filters) or any(c >= 0x80 for c in codes[: len(filters)]):
                raise MqttError(f"SUBSCRIBE {filters!r} refused: {codes.hex()}")
            self.connected = True
            log.info(
                "MQTT subscribed to %s as %s (session present: %s)",
                self.topic_filter,
                self.client_id,
                present,
            )
            await self._keepalive(conn)
        finally:
            self.connected = False
            conn.abort()
            # Batches of this connection still finish; their PUBACKs are dropped and the
            # broker sends those messages again on the next connection (at-least-once).
            keep = [p for p in self._pending if p[3] is not conn]
            self.in_flight -= len(self._pending) - len(keep)
            self.in_flight_bytes -= sum(len(p[1]) for p in self._pending if p[3] is conn)
            self._pending = keep
            self._gauge.set(self.in_flight)

    async def _keepalive(self, conn: _Connection) -> None:
        interval = max(1.0, self.keepalive / 2)
        while not conn.closed.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), timeout=interval)
                return
            if not conn.paused and time.monotonic() - conn.last_rx > self.keepalive * 1.5:
                log.warning("MQTT broker silent for %.0fs; reconnecting", self.keepalive * 1.5)
                conn.abort()
                return
            conn.write(PINGREQ)

    async def close(self) -> None:
        """Stop taking messages, let batches in flight finish (and be acknowledged), leave."""
        self._closing = True
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.paused = True
            conn.transport.pause_reading()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if conn is not None and conn.transport is not None:
            # A normal DISCONNECT keeps the session (session expiry > 0): messages pending
            # or published meanwhile are delivered when the bridge is back.
            conn.write(DISCONNECT)
            conn.transport.close()

    # --- the message path ---

    def _device_id(self, topic: bytes) -> str | None:
        try:
            return self._device_of_topic[topic]
        except KeyError:
            pass
        did: str | None = None
        p = self._prefix_b
        if topic.startswith(p) and topic.endswith(b"/telemetry"):
            mid = topic[len(p) : -10]
            if mid and b"/" not in mid:
                try:
                    did = mid.decode()
                except UnicodeDecodeError:
                    did = None
        if len(self._device_of_topic) > 200_000:
            self._device_of_topic.clear()
        self._device_of_topic[topic] = did
        return did

    def _reporting_device(self, topic: bytes) -> str | None:
        """The device id of ``{prefix}devices/<id>/config/reported`` (None for other topics)."""
        p = self._prefix_b
        suffix = b"/config/reported"
        if not (topic.startswith(p) and topic.endswith(suffix)):
            return None
        mid = topic[len(p) : -len(suffix)]
        if not mid or b"/" in mid:
            return None
        try:
            return mid.decode()
        except UnicodeDecodeError:
            return None

    def _received(self, conn: _Connection, got: list[tuple[bytes, bytes, int]]) -> None:
        if conn.generation != self._generation:
            return
        self._pending.extend((t, p, pid, conn) for t, p, pid in got)
        self.received += len(got)
        self.in_flight += len(got)
        self.in_flight_bytes += sum(len(g[1]) for g in got)
        self._gauge.set(self.in_flight)
        if self.saturated and not conn.paused and conn.transport:
            conn.paused = True
            conn.transport.pause_reading()
        self._kick()

    def _kick(self) -> None:
        while self._pending and self._active < self.max_concurrent:
            cut = 0
            size = 0
            limit = min(self.max_batch, len(self._pending))
            pending = self._pending
            while cut < limit and size < self.max_batch_bytes:
                size += len(pending[cut][1])
                cut += 1
            batch = pending[:cut]
            del pending[:cut]
            self._active += 1
            task = asyncio.create_task(self._process(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, batch: list[tuple[bytes, bytes, int, _Connection]]) -> None:
        ok = False
        try:
            inbound = []
            reports: list[tuple[str, bytes]] = []
            dev = self._device_id
            for topic, payload, _pid, _conn in batch:
                if self.on_config_report is not None and topic.endswith(b"/config/reported"):
                    reporter = self._reporting_device(topic)
                    if reporter is not None:
                        reports.append((reporter, payload))
                        continue
                did = dev(topic)
                if did is None:
                    inbound.append(Inbound(None, payload, f"unexpected topic {topic[:200]!r}"))
                else:
                    inbound.append(Inbound(did, payload))
            if inbound:
                await self.pipeline.submit(SOURCE, inbound)
            if reports and self.on_config_report is not None:
                # Raises when device-management is unreachable: not acknowledged, resent.
                handle = self.on_config_report
                await asyncio.gather(*(handle(did, body) for did, body in reports))
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("MQTT batch of %d failed; reconnecting so the broker resends", len(batch))
        finally:
            self._active -= 1
            self.in_flight -= len(batch)
            self.in_flight_bytes -= sum(len(b[1]) for b in batch)
            self._gauge.set(self.in_flight)
        conns: dict[_Connection, list[int]] = {}
        for _t, _p, pid, conn in batch:
            if pid:
                conns.setdefault(conn, []).append(pid)
        for conn, pids in conns.items():
            if not ok:
                conn.abort()
            elif conn.generation == self._generation:
                conn.write(pubacks(pids))
        cur = self._conn
        if (
            cur is not None
            and cur.paused
            and self.in_flight <= self.max_in_flight // 2
            and self.in_flight_bytes <= self.max_in_flight_bytes // 2
        ):
            cur.paused = False
            cur.last_rx = time.monotonic()  # silence while paused was ours, not the broker's
            if cur.transport is not None and not cur.transport.is_closing():
                cur.transport.resume_reading()
        self._kick()

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "in_flight": self.in_flight,
            "in_flight_bytes": self.in_flight_bytes,
            "saturated": self.saturated,
        }
