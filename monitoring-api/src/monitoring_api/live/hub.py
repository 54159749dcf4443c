"""The Socket.IO server of live pushes: connections, joins, and the pushes the consumer calls.

Each API instance consumes the topics with its own consumer group (every instance sees every
record) and pushes only to the clients connected to it, so with several instances behind a
load balancer every client gets each push exactly once, from the instance it is connected to.
Room names and who may join them are :mod:`monitoring_api.live.rooms`' rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import engineio
import msgspec
import socketio
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from iot_common.auth import JWTVerifier
from iot_common.errors import PlatformError
from iot_common.events import Alert, DeviceEvent, WindowStats
from monitoring_api.devices import DeviceDirectory
from monitoring_api.errors import NotConnected
from monitoring_api.live import rooms
from monitoring_api.live.rooms import Member
from monitoring_api.stats_service import fleet_stats
from monitoring_store.base import MonitoringStore

log = logging.getLogger(__name__)

SOCKETIO_PATH = "/ws/monitoring"

PUSHES = Counter("monitoring_api_pushes_total", "Socket.IO pushes emitted", ["event"])
CONNECTIONS = Counter("monitoring_api_socketio_connects_total", "Socket.IO connects", ["result"])


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


def socketio_server(*, cors_allowed_origins: str | list[str] | None = None) -> socketio.AsyncServer:
    """The Socket.IO server, built with the app so it can be mounted before start-up.

    The :class:`LiveHub` that handles its events is built at start-up, once the verifier,
    device directory and store it needs exist.
    """
    return socketio.AsyncServer(
        async_mode="asgi",
        # None = same origin only; the token travels in the connect payload, never a cookie.
        cors_allowed_origins=cors_allowed_origins or None,
        logger=False,
        engineio_logger=False,
        ping_interval=20,
        ping_timeout=20,
        max_http_buffer_size=64 * 1024,
    )


class LiveHub:
    """The Socket.IO server with its rooms and the push methods the consumer calls."""

    def __init__(
        self,
        *,
        sio: socketio.AsyncServer,
        verifier: JWTVerifier,
        directory: DeviceDirectory,
        store: MonitoringStore,
        fleet_interval: float = 5.0,
        sweep_interval: float = 15.0,
    ) -> None:
        self.sio = sio
        self.verifier = verifier
        self.directory = directory
        self.store = store
        self.fleet_interval = fleet_interval
        self.sweep_interval = sweep_interval
        #: fleet room -> the token of its latest joiner (to list that owner's devices).
        self._fleet_rooms: dict[str, str] = {}
        self._fleet_task: asyncio.Task[None] | None = None
        self._register()

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

    async def _member(self, sid: str) -> Member:
        try:
            session = await self.sio.get_session(sid)
            token: str = session["token"]
        except KeyError:
            raise NotConnected from None
        principal = await self.verifier.verify(token)  # expired or revoked since connect?
        return Member(principal=principal, token=token)

    async def _join(self, sid: str, data: Any, *, leave: bool) -> dict[str, Any]:
        """Enter or leave the room a request names; every refusal is answered here."""
        try:
            request = rooms.parse_join(data)
            member = await self._member(sid)
            if leave:
                room = rooms.room_of(request, member)
            else:
                room = await rooms.may_join(request, member, directory=self.directory)
        except PlatformError as exc:
            return {"ok": False, "error": exc.message}
        if isinstance(request, rooms.JoinAlerts):
            # At most one alert room per client: joining one leaves the others.
            for r in self.sio.rooms(sid):
                if rooms.is_alert_room(r) and (leave or r != room):
                    await self.sio.leave_room(sid, r)
            if not leave:
                await self.sio.enter_room(sid, room)
        elif leave:
            await self.sio.leave_room(sid, room)
        else:
            await self.sio.enter_room(sid, room)
            if isinstance(request, rooms.JoinFleet):
                self._fleet_rooms[room] = member.token
        return {"ok": True, "room": room}

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
            await self.fanout("window", msgspec.structs.asdict(w), rooms.device_room(w.device_id))
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
            targets = rooms.alert_change_rooms(owner, a.severity)
            await self.fanout("alert", msgspec.structs.asdict(a), targets)
            out.append(a)
        PUSHES.labels("alert").inc(len(alerts))
        return out

    async def push_device_events(self, events: Sequence[DeviceEvent]) -> None:
        for e in events:
            owner = await self._owner(e.device_id, e.owner_id)
            targets = rooms.device_event_rooms(e.device_id, owner)
            await self.fanout("device", msgspec.structs.asdict(e), targets)
            if e.event_type == "device.deleted":
                # Nobody may watch a device that no longer exists.
                await self.sio.close_room(rooms.device_room(e.device_id))
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
                if not rooms.is_every_owner_room(room):
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
