"""Live pushes: the Socket.IO server and the Kafka consumer feeding it.

Rooms (all on the default namespace):

- ``device:{device_id}`` — ``window`` updates and ``device`` events of one device; joining
  requires device-management to show the device to the caller.
- ``fleet:{owner}`` (``fleet:*`` for admins) — periodic ``fleet`` figures and ``device`` events
  of the caller's devices.
- ``alerts:{owner}:{min_severity}`` (``alerts:*:…`` for admins) — ``alert`` changes at or above
  the chosen severity; a client is in at most one of these.

Each API instance consumes the topics with its own consumer group (every instance sees every
record) and pushes only to the clients connected to it, so with several instances behind a
load balancer every client gets each push exactly once, from the instance it is connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import engineio
import msgspec
import socketio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from iot_common.auth import JWTVerifier, Principal
from iot_common.errors import PlatformError
from iot_common.events import (
    Alert,
    DeviceEvent,
    WindowStats,
    alert_decoder,
    device_event_decoder,
    window_decoder,
)
from iot_common.topics import Topics
from monitoring_api.devices import DeviceDirectory
from monitoring_api.schemas import SEVERITY_RANK
from monitoring_api.stats_service import fleet_stats
from monitoring_store.base import MonitoringStore

log = logging.getLogger(__name__)

SOCKETIO_PATH = "/ws/monitoring"

PUSHES = Counter("monitoring_api_pushes_total", "Socket.IO pushes emitted", ["event"])
CONSUMED = Counter("monitoring_api_records_consumed_total", "Kafka records consumed", ["topic"])
UNDECODABLE = Counter(
    "monitoring_api_records_undecodable_total", "Kafka records that failed to decode", ["topic"]
)
PUSH_DELAY = Histogram(
    "monitoring_api_push_delay_seconds",
    "From a record's Kafka timestamp to its push being queued to every client",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONNECTIONS = Counter("monitoring_api_socketio_connects_total", "Socket.IO connects", ["result"])


def _owner_key(principal: Principal) -> str:
    return "*" if principal.is_admin else principal.user_id


def _token_from_environ(environ: dict[str, Any], auth: Any) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])
    header = environ.get("HTTP_AUTHORIZATION")
    if isinstance(header, str) and header.lower().startswith("bearer "):
        return header[7:].strip()
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    if qs.get("token"):
        return str(qs["token"][0])
    return None


class LiveHub:
    """The Socket.IO server with its rooms and the push methods the consumer calls."""

    verifier: JWTVerifier
    directory: DeviceDirectory
    store: MonitoringStore

    def __init__(
        self,
        *,
        fleet_interval: float = 5.0,
        sweep_interval: float = 15.0,
        cors_allowed_origins: str | list[str] | None = None,
    ) -> None:
        self.fleet_interval = fleet_interval
        self.sweep_interval = sweep_interval
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            # None = same origin only; the token travels in the connect payload, never a cookie.
            cors_allowed_origins=cors_allowed_origins or None,
            logger=False,
            engineio_logger=False,
            ping_interval=20,
            ping_timeout=20,
            max_http_buffer_size=64 * 1024,
        )
        #: fleet room -> the token of its latest joiner (to list that owner's devices).
        self._fleet_rooms: dict[str, str] = {}
        self._fleet_task: asyncio.Task[None] | None = None
        self._register()

    def bind(
        self, *, verifier: JWTVerifier, directory: DeviceDirectory, store: MonitoringStore
    ) -> None:
        """Hand in the collaborators built in the app lifespan (the server exists before)."""
        self.verifier = verifier
        self.directory = directory
        self.store = store

    # -- connection handling -----------------------------------------------------------------
    def _register(self) -> None:
        sio = self.sio

        @sio.event  # type: ignore[untyped-decorator]
        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            token = _token_from_environ(environ, auth)
            if not token:
                CONNECTIONS.labels("refused").inc()
                raise socketio.exceptions.ConnectionRefusedError("missing token")
            try:
                principal = await self.verifier.verify(token)
            except PlatformError as exc:
                CONNECTIONS.labels("refused").inc()
                raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
            await sio.save_session(sid, {"principal": principal, "token": token})
            CONNECTIONS.labels("accepted").inc()

        @sio.event  # type: ignore[untyped-decorator]
        async def join(sid: str, data: Any = None) -> dict[str, Any]:
            return await self._join(sid, data, leave=False)

        @sio.event  # type: ignore[untyped-decorator]
        async def leave(sid: str, data: Any = None) -> dict[str, Any]:
            return await self._join(sid, data, leave=True)

    async def _caller(self, sid: str) -> tuple[Principal, str]:
        session = await self.sio.get_session(sid)
        token: str = session["token"]
        principal = await self.verifier.verify(token)  # expired or revoked since connect?
        return principal, token

    async def _join(self, sid: str, data: Any, *, leave: bool) -> dict[str, Any]:
        if not isinstance(data, dict) or len(data) != 1:
            return {"ok": False, "error": "expected one of device_id, room, alerts_min_severity"}
        try:
            principal, token = await self._caller(sid)
        except PlatformError as exc:
            return {"ok": False, "error": exc.message}
        except KeyError:
            return {"ok": False, "error": "not connected"}
        owner = _owner_key(principal)
        rooms = self.sio.rooms(sid)
        if "device_id" in data:
            try:
                device_id = str(uuid.UUID(str(data["device_id"])))
            except ValueError:
                return {"ok": False, "error": "device_id is not a device id"}
            room = f"device:{device_id}"
            if leave:
                await self.sio.leave_room(sid, room)
                return {"ok": True, "room": room}
            try:
                info = await self.directory.get_device(token, device_id)
            except PlatformError as exc:
                return {"ok": False, "error": exc.message}
            if info is None:
                return {"ok": False, "error": "device not found"}
            await self.sio.enter_room(sid, room)
            return {"ok": True, "room": room}
        if "room" in data:
            if data["room"] != "fleet":
                return {"ok": False, "error": "unknown room"}
            room = f"fleet:{owner}"
            if leave:
                await self.sio.leave_room(sid, room)
            else:
                await self.sio.enter_room(sid, room)
                self._fleet_rooms[room] = token
            return {"ok": True, "room": room}
        if "alerts_min_severity" in data:
            severity = data["alerts_min_severity"]
            if severity not in SEVERITY_RANK:
                return {"ok": False, "error": "severity must be info, warning or critical"}
            room = f"alerts:{owner}:{severity}"
            for r in rooms:
                if r.startswith("alerts:") and (leave or r != room):
                    await self.sio.leave_room(sid, r)
            if not leave:
                await self.sio.enter_room(sid, room)
            return {"ok": True, "room": room}
        return {"ok": False, "error": "expected one of device_id, room, alerts_min_severity"}

    # -- pushes ------------------------------------------------------------------------------
    async def fanout(self, event: str, data: dict[str, Any], rooms: str | list[str]) -> int:
        """Send one event to every client in ``rooms`` (each client once); returns how many.

        Like ``AsyncServer.emit`` without callbacks, but the packet is encoded once and handed
        to each client's Engine.IO queue in turn instead of through one task per recipient,
        which is what a room of a thousand dashboards costs on every window update.
        """
        recipients = list(self.sio.manager.get_participants("/", rooms))
        if not recipients:
            return 0
        encoded = self.sio.packet_class(
            socketio.packet.EVENT, namespace="/", data=[event, data]
        ).encode()
        parts = encoded if isinstance(encoded, list) else [encoded]
        eio_packets = [engineio.packet.Packet(engineio.packet.MESSAGE, p) for p in parts]
        for _sid, eio_sid in recipients:
            for pkt in eio_packets:
                await self.sio.eio.send_packet(eio_sid, pkt)
        return len(recipients)

    async def push_windows(self, windows: Sequence[WindowStats]) -> None:
        for w in windows:
            await self.fanout("window", msgspec.structs.asdict(w), f"device:{w.device_id}")
        PUSHES.labels("window").inc(len(windows))

    async def _owner(self, device_id: str, known: str | None) -> str | None:
        if known:
            return known
        try:
            return await self.directory.owner_of(device_id)
        except PlatformError:
            return None

    async def push_alerts(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Push each change to the alert rooms it qualifies for; returns alerts with owners."""
        out: list[Alert] = []
        for a in alerts:
            owner = await self._owner(a.device_id, a.owner_id)
            if owner and not a.owner_id:
                a = msgspec.structs.replace(a, owner_id=owner)
            rank = SEVERITY_RANK.get(a.severity, 0)
            rooms = [
                f"alerts:{o}:{s}"
                for s, r in SEVERITY_RANK.items()
                if r <= rank
                for o in (("*", owner) if owner else ("*",))
            ]
            await self.fanout("alert", msgspec.structs.asdict(a), rooms)
            out.append(a)
        PUSHES.labels("alert").inc(len(alerts))
        return out

    async def push_device_events(self, events: Sequence[DeviceEvent]) -> None:
        for e in events:
            owner = await self._owner(e.device_id, e.owner_id)
            rooms = [f"device:{e.device_id}", "fleet:*"]
            if owner:
                rooms.append(f"fleet:{owner}")
            await self.fanout("device", msgspec.structs.asdict(e), rooms)
            if e.event_type == "device.deleted":
                # Nobody may watch a device that no longer exists.
                await self.sio.close_room(f"device:{e.device_id}")
        PUSHES.labels("device").inc(len(events))

    # -- fleet figures -----------------------------------------------------------------------
    def start(self) -> None:
        self._fleet_task = asyncio.create_task(self._fleet_loop(), name="fleet-pushes")

    async def close(self) -> None:
        if self._fleet_task is not None:
            self._fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fleet_task

    async def push_fleet_once(self) -> None:
        now = time.time()
        for room, token in list(self._fleet_rooms.items()):
            if not any(True for _ in self.sio.manager.get_participants("/", room)):
                self._fleet_rooms.pop(room, None)
                continue
            try:
                ids = None
                if room != "fleet:*":
                    ids = [str(d["id"]) for d in await self.directory.list_devices(token)]
                stats = await fleet_stats(self.store, ids, now - 300, now, "5m")
            except Exception as exc:
                log.warning("fleet figures for %s failed: %s", room, exc)
                continue
            await self.sio.emit("fleet", stats.model_dump(), to=room)
            PUSHES.labels("fleet").inc()

    async def sweep_sessions(self) -> int:
        """Disconnect clients whose token has expired or been revoked since they connected."""
        dropped = 0
        for sid, _eio_sid in list(self.sio.manager.get_participants("/", None)):
            try:
                session = await self.sio.get_session(sid)
                await self.verifier.verify(session["token"])
            except PlatformError:
                await self.sio.disconnect(sid)
                dropped += 1
            except KeyError:
                continue
        if dropped:
            log.info("disconnected %d Socket.IO clients with expired or revoked tokens", dropped)
        return dropped

    async def _fleet_loop(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(min(self.fleet_interval, self.sweep_interval))
            try:
                await self.push_fleet_once()
                if time.monotonic() - last_sweep >= self.sweep_interval:
                    last_sweep = time.monotonic()
                    await self.sweep_sessions()
            except Exception:
                log.exception("fleet push round failed")


class SocketIOMount:
    """ASGI middleware: Socket.IO traffic under ``/ws/monitoring`` goes to the server."""

    def __init__(self, app: ASGIApp, *, sio: socketio.AsyncServer) -> None:
        self.app = app
        self.sio_app = socketio.ASGIApp(sio, socketio_path=SOCKETIO_PATH.lstrip("/"))
        self.prefix = SOCKETIO_PATH + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if path == SOCKETIO_PATH or path.startswith(self.prefix):
                await self.sio_app(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create the topics the API reads if they do not exist yet (an existing one is kept)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(Exception):
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
    finally:
        await admin.close()


class LiveConsumer:
    """Reads ``stats.windows``, ``alerts`` and ``device.events`` and hands batches on."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Topics,
        group_id: str,
        hub: LiveHub,
        on_alerts: Callable[[Sequence[Alert]], Awaitable[Any]] | None = None,
        partitions: int = 6,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self.group_id = group_id
        self._hub = hub
        self._on_alerts = on_alerts
        self._partitions = partitions
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._names: list[str] = []

    async def start(self) -> None:
        self._names = [
            self._topics.stats_windows,
            self._topics.alerts,
            self._topics.device_events,
        ]
        try:
            await asyncio.wait_for(self._connect(), timeout=15)
        except Exception as exc:
            # The API still answers queries without the bus; /health says "kafka": "starting".
            log.warning(
                "Kafka not reachable at %s (%s); retrying in the background", self._bootstrap, exc
            )
            await self._drop_consumer()
            self._task = asyncio.create_task(self._connect_then_run(), name="live-consumer")
            return
        self._task = asyncio.create_task(self._run(), name="live-consumer")

    async def _connect(self) -> None:
        try:
            await ensure_topics(self._bootstrap, self._names, self._partitions)
        except Exception as exc:
            log.warning("could not check/create topics %s: %s", self._names, exc)
        # Every partition is assigned directly (no group rebalance to wait for): each instance
        # reads everything from the end, under its own group id, as a unique group would.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.group_id,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            max_poll_records=5000,
            # Tansu holds an empty fetch for the whole wait even when records arrive
            # meanwhile: the wait is added to a push's latency (about half of it on average).
            fetch_max_wait_ms=20,
        )
        await self._consumer.start()
        await self._assign_new_partitions()
        self.ready.set()

    async def _drop_consumer(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def _connect_then_run(self) -> None:
        delay = 1.0
        while True:
            try:
                await asyncio.wait_for(self._connect(), timeout=15)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Kafka still not reachable (%s); next try in %.0f s", exc, delay)
                await self._drop_consumer()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.info("live consumer connected to %s", self._bootstrap)
        await self._run()

    async def _assign_new_partitions(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        await consumer.topics()  # refresh metadata
        current: set[TopicPartition] = set(consumer.assignment())
        wanted = set(current)
        for topic in self._names:
            for p in consumer.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        new = wanted - current
        if not new:
            return
        consumer.assign(list(wanted))
        await consumer.seek_to_end(*new)
        for tp in new:
            await consumer.position(tp)  # resolve "end" now: later records are all seen
        log.info("live consumer %s reads %d partitions", self.group_id, len(wanted))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_consumer()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        t = self._topics
        last_refresh = time.monotonic()
        while True:
            try:
                if time.monotonic() - last_refresh > 30:
                    last_refresh = time.monotonic()
                    await self._assign_new_partitions()
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batches.items():
                    CONSUMED.labels(tp.topic).inc(len(records))
                    produced_at = records[-1].timestamp / 1000
                    if tp.topic == t.stats_windows:
                        await self._hub.push_windows(
                            self._decode(records, window_decoder, tp.topic)
                        )
                    elif tp.topic == t.alerts:
                        alerts = await self._hub.push_alerts(
                            self._decode(records, alert_decoder, tp.topic)
                        )
                        if self._on_alerts is not None and alerts:
                            await self._hand_on(alerts, tp, records[-1].offset)
                    elif tp.topic == t.device_events:
                        await self._hub.push_device_events(
                            self._decode(records, device_event_decoder, tp.topic)
                        )
                    PUSH_DELAY.labels(tp.topic).observe(max(0.0, time.time() - produced_at))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live consumer round failed")
                await asyncio.sleep(0.5)

    async def _hand_on(self, alerts: Sequence[Alert], tp: TopicPartition, offset: int) -> None:
        """Enqueue webhook deliveries, retrying a store hiccup before giving up on them."""
        assert self._on_alerts is not None
        for attempt in range(5):
            try:
                await self._on_alerts(alerts)
                return
            except Exception as exc:
                log.warning(
                    "enqueueing webhook deliveries failed at %s offset %d (attempt %d): %s",
                    tp,
                    offset,
                    attempt + 1,
                    exc,
                )
                await asyncio.sleep(0.2 * 2**attempt)
        log.error(
            "webhook deliveries for %d alert changes at %s offset %d lost", len(alerts), tp, offset
        )

    @staticmethod
    def _decode(
        records: Sequence[Any], decoder: msgspec.json.Decoder[Any], topic: str
    ) -> list[Any]:
        out = []
        for r in records:
            try:
                out.append(decoder.decode(r.value))
            except (msgspec.DecodeError, TypeError):
                UNDECODABLE.labels(topic).inc()
                log.warning(
                    "undecodable record on %s partition %d offset %d", topic, r.partition, r.offset
                )
        return out
