"""MQTT as the devices themselves: one connection per device, authenticated with its token.

The platform's broker authenticates every connection (Mosquitto's dynamic-security plugin:
username = device id, password = the device token, client id = the device id) and lets a
device publish only its own telemetry topic, so a fleet of registered devices cannot share one
connection as the load generator did. Each device gets its own paho client; all of a process's
clients run on the publisher's asyncio loop (paho's external-loop interface: the loop reads
each socket when it is readable, paho writes a publish straight away and the loop finishes
what a full socket buffer left), so a few hundred devices cost no thread each and a publish
costs what it cost on the shared connection: one packet written.

As with :class:`simulator.transports.MqttTransport`: QoS 1, a persistent session per device
(paho re-sends what was not acknowledged after a reconnect), a window of unconfirmed messages
per process, and a message unacknowledged for ``give_up_after`` seconds counts as failed.
Each device also does what a real one does with its configuration: it subscribes to its own
retained ``devices/<id>/config`` (delivered on every connect and on every change), applies it
(:attr:`_Device.config`; ``settings.sample_interval_s`` becomes the device's interval between
readings, see :class:`simulator.publisher.Publisher`) and reports the version it applied on
``devices/<id>/config/reported``.

A message for an id the process has no credential for (the injected ``unknown_device``
fault) goes out on the first device's connection: a device publishing for another id, which
the broker refuses. The connections speak MQTT v5 so that the refusal is seen: Mosquitto
answers such a publish with PUBACK reason 0x87 (Not authorized), where MQTT 3.1.1 has no
reason code and the broker acknowledges and drops it silently. A refusal of a message meant
to be refused counts as ``rejected`` (as an HTTP 4xx does), of any other as ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from iot_common.device_config import (
    DesiredConfig,
    DeviceConfig,
    config_reported_topic,
    config_topic,
)
from simulator.transports import TransportConfig, _Counts, take_expired

log = logging.getLogger(__name__)

#: How long the broker keeps a device's session (and its unacknowledged messages) after a
#: disconnect; MQTT v5 ends a session at disconnect unless told otherwise.
SESSION_EXPIRY_S = 3600
#: How long a device whose login the broker refuses keeps retrying before the run gives up:
#: device-management answers a credential request after at most ``credential_wait_seconds``
#: (5 s by default) even when the broker has not applied it yet, and applies it as soon as
#: it can, so a freshly registered device may be refused for a moment.
PROVISIONING_GRACE_S = 15.0
#: MQTT v5 PUBACK reason 0x10: accepted, but no subscription matched, so nobody received it.
#: Mosquitto 2.0 answers this after its own restart until the bridge has subscribed again: it
#: restores a persistent session's plain subscriptions but not its shared ones. A device that
#: counted it as delivered would lose the reading; the simulator's devices send it again.
NO_MATCHING_SUBSCRIBERS = 0x10
#: Seconds before a reading nobody received is sent again (until ``give_up_after``).
RESEND_DELAY_S = 0.2


class _Device:
    def __init__(self, transport: DeviceMqttTransport, device_id: str, token: str) -> None:
        self.id = device_id
        self.transport = transport
        self.connected = False
        self.ever_connected = False
        self.refused: str | None = None
        self.sock: Any = None
        self.writing = False
        #: The configuration this device applied, and its version (None: none received yet).
        self.config: DeviceConfig | None = None
        self.config_version: int | None = None
        #: ``settings.sample_interval_s`` of that configuration, when it sets one.
        self.sample_interval: float | None = None
        self._report_mids: set[int] = set()
        prefix = transport.cfg.mqtt_topic_prefix
        self.config_topic = config_topic(device_id, prefix)
        self.reported_topic = config_reported_topic(device_id, prefix)
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=device_id,
            protocol=mqtt.MQTTv5,
        )
        c.username_pw_set(device_id, token)
        c.max_inflight_messages_set(transport.window)
        c.max_queued_messages_set(0)  # the window bounds it
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        self.client = c

    # -- paho callbacks (all on the asyncio loop's thread) -------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.refused = str(rc)
            log.error("MQTT connect of device %s refused: %s", self.id, rc)
            return
        if self.ever_connected:
            self.transport.reconnects += 1
        self.connected = self.ever_connected = True
        self.refused = None
        # Every connect: the broker then sends the retained desired configuration.
        client.subscribe(self.config_topic, qos=1)
        self.flush_later()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic != self.config_topic or not message.payload:
            return
        try:
            desired = DesiredConfig.model_validate_json(message.payload)
        except ValidationError as exc:
            log.warning("device %s got a config it cannot read: %s", self.id, exc)
            return
        applied = self.transport.apply_config(self.id, desired)
        self.config = applied.config
        self.config_version = applied.version
        self.sample_interval = applied.sample_interval
        info = client.publish(self.reported_topic, f'{{"version": {desired.version}}}', qos=1)
        self._report_mids.add(info.mid)
        self.flush_later()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected = False
        if rc.is_failure and not self.transport.closing:
            log.warning("MQTT device %s disconnected (%s); will reconnect", self.id, rc)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if mid in self._report_mids:  # a config report, not a reading
            self._report_mids.discard(mid)
            return
        if getattr(rc, "value", None) == NO_MATCHING_SUBSCRIBERS:
            # The broker took the message and gave it to nobody: not delivered, send it again.
            self.transport._nobody_took(self, mid)
            return
        self.transport._acked((self.id, mid), str(rc) if rc.is_failure else None)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self.sock = sock
        self.transport.loop.add_reader(sock, self._read)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        loop = self.transport.loop
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self.writing = False
        self.sock = None

    # -- the event loop's side -----------------------------------------------------------
    def _read(self) -> None:
        self.client.loop_read()
        self.flush_later()

    def _write(self) -> None:
        self.client.loop_write()
        if not self.client.want_write() and self.sock is not None:
            self.transport.loop.remove_writer(self.sock)
            self.writing = False

    def flush_later(self) -> None:
        """What a full socket buffer kept back goes out once the socket is writable."""
        if self.sock is not None and not self.writing and self.client.want_write():
            self.transport.loop.add_writer(self.sock, self._write)
            self.writing = True

    def tick(self) -> None:
        """Keepalive, retries and reconnects (paho's loop_misc, and a reconnect when down)."""
        c = self.client
        if self.sock is None and not self.transport.closing:
            try:
                c.reconnect()
            except OSError as exc:
                log.debug("MQTT reconnect of %s failed: %s", self.id, exc)
            return
        c.loop_misc()
        self.flush_later()


class DeviceMqttTransport(_Counts):
    """Publishes each device's readings on that device's own authenticated connection."""

    def __init__(self, cfg: TransportConfig, credentials: Sequence[tuple[str, str]]) -> None:
        super().__init__(cfg.window)
        if not credentials:
            raise ValueError("per-device MQTT needs at least one device credential")
        self.cfg = cfg
        self.credentials = list(credentials)
        self.devices: dict[str, _Device] = {}
        #: (device id, mid) → monotonic time of the first publish, oldest first.
        self._pending: dict[tuple[str, int], float] = {}
        #: Answers that came before ``publish`` recorded the message: key → refusal or None.
        self._early: dict[tuple[str, int], str | None] = {}
        self._given_up: set[tuple[str, int]] = set()
        #: Messages the simulator means the broker to refuse (``expect_reject``).
        self._rejectable: set[tuple[str, int]] = set()
        #: (device id, mid) → (topic, payload) of each unanswered reading, to send it again.
        self._messages: dict[tuple[str, int], tuple[str, bytes]] = {}
        #: Readings sent again because the broker delivered them to nobody (PUBACK 0x10).
        self.resent = 0
        self.reconnects = 0
        self.closing = False
        self._ticker: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop

    def _acked(self, key: tuple[str, int], refusal: str | None = None) -> None:
        """The broker answered message ``key``: taken (``refusal`` None) or refused."""
        if self._pending.pop(key, None) is not None:
            self._settle(key, refusal)
        elif key in self._given_up:  # answered after all
            self._given_up.discard(key)
            self.failed -= 1
            self._settle(key, refusal)
        else:
            self._early[key] = refusal

    def _nobody_took(self, dev: _Device, mid: int) -> None:
        """Send reading ``mid`` again (under a new message id) after a short delay, keeping
        the time of its first publish, so it still counts as failed after ``give_up_after``."""
        key = (dev.id, mid)
        first = self._pending.pop(key, None)
        message = self._messages.pop(key, None)
        if first is None or message is None or self.closing:
            self._acked(key, None)  # given up or not recorded yet: as before
            return
        expected = key in self._rejectable
        self._rejectable.discard(key)

        def resend() -> None:
            if not self._send(dev, *message, expect_reject=expected, first=first):
                self.failed += 1
                return
            self.resent += 1
            if self.resent == 1 or self.resent % 1000 == 0:
                log.warning(
                    "MQTT: %d reading(s) sent again: the broker had no subscriber for them "
                    "(the bridge not subscribed yet, e.g. after the broker restarted)",
                    self.resent,
                )

        self.loop.call_later(RESEND_DELAY_S, resend)

    def _settle(self, key: tuple[str, int], refusal: str | None) -> None:
        self._messages.pop(key, None)
        expected = key in self._rejectable
        self._rejectable.discard(key)
        if refusal is None:
            self.acked += 1
        elif expected:
            self.rejected += 1
        else:
            self.failed += 1
            log.error("MQTT: the broker refused a reading of device %s: %s", key[0], refusal)

    async def start(self) -> None:
        """Connect every device, waiting for the broker up to ``give_up_after`` seconds."""
        self.loop = asyncio.get_running_loop()
        self.devices = {d: _Device(self, d, t) for d, t in self.credentials}
        deadline = time.monotonic() + max(self.cfg.give_up_after, 1.0)
        for dev in self.devices.values():
            while True:
                try:
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = SESSION_EXPIRY_S
                    # A persistent session: the broker keeps what was not acknowledged.
                    dev.client.connect(
                        self.cfg.mqtt_host,
                        self.cfg.mqtt_port,
                        keepalive=30,
                        clean_start=False,
                        properties=props,
                    )
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise ConnectionError(
                            f"cannot connect to MQTT at {self.cfg.mqtt_host}:{self.cfg.mqtt_port}"
                        ) from exc
                    await asyncio.sleep(self.cfg.retry_min)
            dev.flush_later()
        self._ticker = asyncio.create_task(self._tick())
        # A refused device is retried by the ticker (every 0.5 s) until the grace is over.
        grace_end = time.monotonic() + min(self.cfg.give_up_after, PROVISIONING_GRACE_S)
        # Give up at the later of the two: a refused login gets its whole grace even when
        # connecting took part of give_up_after, and a refusal is the reason given, not a
        # generic "cannot connect" (which of the two came first was a race).
        give_up = max(deadline, grace_end)
        while not all(d.connected for d in self.devices.values()):
            refused = [d for d in self.devices.values() if d.refused]
            now = time.monotonic()
            if refused and now > grace_end:
                raise ConnectionError(
                    f"MQTT refused {len(refused)} device(s), e.g. {refused[0].id}: "
                    f"{refused[0].refused} (is each device's token provisioned on the broker?)"
                )
            if now > give_up:
                raise ConnectionError(
                    f"cannot connect every device to MQTT at {self.cfg.mqtt_host}:"
                    f"{self.cfg.mqtt_port}"
                )
            await asyncio.sleep(0.02)

    async def _tick(self) -> None:
        while not self.closing:
            for dev in self.devices.values():
                dev.tick()
            self._expire()
            await asyncio.sleep(0.5)

    def _expire(self) -> None:
        if not self._pending:
            return
        limit = time.monotonic() - self.cfg.give_up_after
        expired: list[tuple[str, int]] = take_expired(self._pending, self._given_up, limit)
        self.failed += len(expired)
        if not expired:
            return
        log.error(
            "MQTT: gave up %d message(s) unacknowledged for %.0f s",
            len(expired),
            self.cfg.give_up_after,
        )
        for device_id, mid in expired:
            self._messages.pop((device_id, mid), None)
            c: Any = self.devices[device_id].client
            # Drop them from paho's queue too (paho has no public API for it).
            with contextlib.suppress(Exception), c._out_message_mutex:
                msg = c._out_messages.pop(mid, None)
                if msg is not None and msg.state == mqtt.mqtt_ms_wait_for_puback:
                    c._inflight_messages = max(0, c._inflight_messages - 1)

    async def publish(
        self, device_id: str, payload: bytes, *, token: str | None, expect_reject: bool
    ) -> None:
        if self.in_flight >= self.window:
            await self._wait_window()
        dev = self.devices.get(device_id) or next(iter(self.devices.values()))
        topic = f"{self.cfg.mqtt_topic_prefix}devices/{device_id}/telemetry"
        self.sent += 1
        if not self._send(dev, topic, payload, expect_reject=expect_reject, first=None):
            self.failed += 1

    def _send(
        self,
        dev: _Device,
        topic: str,
        payload: bytes,
        *,
        expect_reject: bool,
        first: float | None,
    ) -> bool:
        """Publish one reading on ``dev``'s connection and track it until the broker answers
        (``first``: when it was first sent, for a reading sent again; None: now). False when
        paho refuses it outright."""
        info = dev.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("MQTT publish refused by the client: %s", mqtt.error_string(info.rc))
            return False
        # NO_CONN: paho keeps the message and sends it once reconnected.
        key = (dev.id, info.mid)
        self._rejectable.discard(key)  # a message id is reused once answered
        self._messages[key] = (topic, payload)
        if expect_reject:
            self._rejectable.add(key)
        if key in self._early:
            self._settle(key, self._early.pop(key))
        else:
            self._given_up.discard(key)
            self._pending[key] = time.monotonic() if first is None else first
        dev.flush_later()
        return True

    async def flush(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while self.in_flight > 0 and time.monotonic() < deadline:
            self._expire()
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        # With nothing left to re-send, each device ends its session (the broker forgets it).
        end = self.in_flight == 0
        for dev in self.devices.values():
            with contextlib.suppress(Exception):
                dev.client.disconnect()
                dev.client.loop_write()
            if dev.sock is not None:
                with contextlib.suppress(Exception):
                    dev.client.loop_read()
        if end:
            await asyncio.to_thread(self._end_sessions)

    def _end_sessions(self) -> None:
        """Connect each device once with a clean session, then disconnect."""
        for device_id, token in self.credentials:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
                client_id=device_id,
                protocol=mqtt.MQTTv5,
            )
            client.username_pw_set(device_id, token)
            with contextlib.suppress(Exception):
                # Clean start, session expiry 0: the broker drops the session at disconnect.
                client.connect(
                    self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=5, clean_start=True
                )
                client.disconnect()
                client.loop_write()
