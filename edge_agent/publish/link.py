"""A small typed asyncio API over paho-mqtt, whose client runs on the event loop.

paho's socket is watched by the event loop (``add_reader``/``add_writer``: paho's external-loop
API), so reading, writing and every callback run on the loop's thread, with no thread hop and
no lock handed back and forth with the GIL: a paho network thread (``loop_start``) cost a
quarter of a QoS 1 stream's rate, the event loop and paho's thread waking each other per
PUBACK. Only the (blocking) TCP and TLS connect runs in a worker thread. We reconnect ourselves,
1 s after a loss and then backing off to 30 s, as ``loop_start`` did; keep-alive pings and their
timeout are paho's ``loop_misc``, called every second.

Things paho does not do for us, and why we care:

- its session state lives in memory only: a process restart loses in-flight QoS 1 messages, so
  the SQLite outbox (not paho) is the source of truth and a record is marked sent only on PUBACK;
- its outgoing queue is unbounded: callers bound what they have in flight themselves;
- with ``manual_ack=True`` a received QoS 1 message is acknowledged only when we call
  :meth:`MqttLink.ack` — after the event is committed to SQLite;
- after a reconnect it re-sends what was in flight, under the old message ids: their PUBACKs
  belong to nobody (the futures failed on the disconnect) and must not be taken for the PUBACK
  of a later message that gets the same id once the 16-bit ids wrap around.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import read_secret
from edge_agent.config.models import TlsConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.tasks import stop_task, wait_event

log = logging.getLogger(__name__)

_RECONNECT_MIN_S = 1.0
_RECONNECT_MAX_S = 30.0
_MISC_EVERY_S = 1.0  # keep-alive pings and their timeout (paho's loop_misc)
_STOP_WAIT_S = 2.0


class ConnectionLost(EdgeAgentError):
    """The broker connection dropped before the PUBACK arrived; publish again later."""


class MqttSettings(Protocol):
    """The broker connection settings (the agent's ``mqtt`` section, the hub's)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password_env(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def tls(self) -> TlsConfig | None: ...
    @property
    def keepalive_s(self) -> int: ...
    @property
    def session_expiry_s(self) -> int: ...
    @property
    def max_inflight(self) -> int: ...


class HasMqtt(Protocol):
    @property
    def mqtt(self) -> MqttSettings: ...


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    user_properties: dict[str, str] = field(default_factory=dict)  # MQTT 5


class MqttLink:
    def __init__(
        self,
        config: HasMqtt,
        client_id: str,
        *,
        persistent_session: bool = False,
        manual_ack: bool = False,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: tuple[str, bytes] | None = None,
        on_connected: Any = None,
        on_acks: Callable[[list[tuple[int, int]]], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        receive_maximum: int | None = None,
    ) -> None:
        """``on_acks`` gets the PUBACKs of :meth:`publish_tracked` messages as (message id,
        reason code), in arrival order, several per call; ``on_lost(why)`` is called when the
        connection drops: the tracked messages without a PUBACK by then will get none."""
        self._config = config
        self.client_id = client_id
        self._persistent = persistent_session
        self._receive_maximum = receive_maximum
        self._subscriptions = list(subscriptions)
        self._on_connected = on_connected
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.messages: asyncio.Queue[Received] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early_acks: dict[int, int] = {}
        self._untracked: set[int] = set()  # QoS 1 messages nobody awaits (publish_nowait)
        self._tracked: set[int] = set()  # publish_tracked messages awaiting their PUBACK
        self._tracked_acks: list[tuple[int, int]] = []  # their PUBACKs, not handed over yet
        self._acks_due = False  # a hand-over to on_acks is scheduled on the event loop
        self._resent: set[int] = set()  # in flight at a disconnect: paho re-sends them
        self._on_acks = on_acks
        self._on_lost = on_lost
        self.untracked_acked = 0
        # The PUBACK bookkeeping above. Uncontended since paho's callbacks run on the event loop
        # (the connect's worker thread does not touch it); kept so the link stays safe if a
        # callback ever arrives from another thread.
        self._mutex = threading.Lock()
        self.connects = 0
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
        mqtt = config.mqtt
        if mqtt.username:
            client.username_pw_set(mqtt.username, read_secret(mqtt, "mqtt"))
        if mqtt.tls is not None:
            client.tls_set(
                ca_certs=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
                certfile=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
                keyfile=str(mqtt.tls.key_file) if mqtt.tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if mqtt.tls.insecure_skip_verify else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(mqtt.tls.insecure_skip_verify)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.max_inflight_messages_set(max(mqtt.max_inflight, 20))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._loop_thread = 0  # the event loop's thread id, once started
        self._fd: int | None = None  # the socket the event loop watches
        self._socket_closed = asyncio.Event()
        self._connecting: asyncio.Future[Any] | None = None  # a connect in a worker thread
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        mqtt = self._config.mqtt
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = mqtt.session_expiry_s if self._persistent else 0
        if self._receive_maximum is not None:
            # Without it Mosquitto sends an MQTT 5 client only max_inflight_messages (20)
            # unacknowledged messages: one commit per 20 messages caps a manual-ack stream.
            properties.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(
            mqtt.host,
            mqtt.port,
            keepalive=mqtt.keepalive_s,
            clean_start=not self._persistent,
            properties=properties,
        )  # stores the parameters only: the connect itself is _keep_connected's
        self._tasks = [
            asyncio.create_task(self._keep_connected(), name=f"mqtt-{self.client_id}"),
            asyncio.create_task(self._keep_alive(), name=f"mqtt-{self.client_id}-keepalive"),
        ]

    async def stop(self, *, final: tuple[str, bytes] | None = None) -> None:
        """Disconnect cleanly; ``final`` is published (retained, QoS 1) first if connected."""
        if final is not None and self.connected.is_set():
            with contextlib.suppress(ConnectionLost, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.publish(final[0], final[1], retain=True)
        self._stopping = True
        for task in self._tasks:
            await stop_task(task)
        if self._connecting is not None and not self._connecting.done():
            # A connect cannot be cancelled in its thread: let it end (paho's 5 s timeout).
            await asyncio.wait([self._connecting], timeout=10.0)
        try:
            if self._client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._client.loop_write()  # DISCONNECT now; paho closes the socket after it
                if not await wait_event(self._socket_closed, _STOP_WAIT_S):
                    self._close_socket()
        except (OSError, ValueError) as exc:  # a socket closed under paho (stopped mid-connect)
            log.debug("MQTT %s: disconnect: %r", self.client_id, exc)
            self._close_socket()
        self._fail_pending("link stopped")

    # -- the connection, on the event loop ---------------------------------------------------

    async def _keep_connected(self) -> None:
        """Connect, and connect again after a loss: 1 s later, doubling up to 30 s while the
        broker cannot be reached; each failed attempt is logged."""
        assert self._loop is not None
        delay = _RECONNECT_MIN_S
        while True:
            self._socket_closed.clear()
            connects = self.connects
            self._connecting = self._loop.run_in_executor(None, self._client.reconnect)
            try:
                await asyncio.shield(self._connecting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, unreachable, TLS: try again later
                log.warning(
                    "MQTT %s: cannot connect to %s:%s: %s (next attempt in %.0f s)",
                    self.client_id, self._config.mqtt.host, self._config.mqtt.port,
                    str(exc) or type(exc).__name__, delay,
                )  # fmt: skip
            else:
                await self._socket_closed.wait()
                if self.connects > connects:
                    delay = _RECONNECT_MIN_S  # it was up: the next loss starts at 1 s again
            await asyncio.sleep(delay)
            delay = min(_RECONNECT_MAX_S, delay * 2)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(_MISC_EVERY_S)
            if self._fd is not None:
                self._client.loop_misc()

    def _read(self) -> None:
        self._client.loop_read()
        sock = self._client.socket()
        pending = getattr(sock, "pending", None)
        if pending is not None and pending() > 0 and self._loop is not None:
            # TLS: bytes decrypted already are invisible to the selector; read them too.
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        self._client.loop_write()

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_socket_open(self, _: paho.Client, __: Any, sock: Any) -> None:
        # The connect's worker thread: watch the socket from the event loop.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        assert self._loop is not None
        if self._stopping:
            self._close_socket()
            return
        self._fd = fd
        self._loop.add_reader(fd, self._read)

    def _on_socket_close(self, _: paho.Client, __: Any, sock: Any) -> None:
        # Unwatched before paho closes the descriptor (it may be reused at once).
        if self._in_loop_thread():
            self._unwatch()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._unwatch)

    def _unwatch(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None
        self._socket_closed.set()

    def _close_socket(self) -> None:
        sock = self._client.socket()
        self._unwatch()
        if sock is not None:
            sock.close()

    def _on_socket_register_write(self, _: paho.Client, __: Any, sock: Any) -> None:
        if self._in_loop_thread():
            self._add_writer()
        elif self._loop is not None:  # the connect's thread queued CONNECT (after _watch)
            self._loop.call_soon_threadsafe(self._add_writer)

    def _add_writer(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.add_writer(self._fd, self._write)

    def _on_socket_unregister_write(self, _: paho.Client, __: Any, sock: Any) -> None:
        if self._in_loop_thread() and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        properties: Properties | None = None,
    ) -> None:
        """Publish; returns when the broker acknowledged it (PUBACK for QoS 1).

        ``properties``: MQTT 5 PUBLISH properties (content type, user properties), if any.
        """
        assert self._loop is not None
        if not self.connected.is_set():
            raise ConnectionLost(
                f"not connected to {self._config.mqtt.host}:{self._config.mqtt.port}"
            )
        future: asyncio.Future[None] = self._loop.create_future()
        # publish() is not called under our mutex: paho calls _on_publish holding its own
        # locks, and the opposite order could deadlock. A PUBACK that beats the registration
        # below is parked in _early_acks.
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        with self._mutex:
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = future
        if early is not None:
            self._check_reason(topic, early)
            return
        await future

    def publish_nowait(self, topic: str, payload: bytes) -> bool:
        """QoS 1 without waiting for the PUBACK (best-effort traffic such as dead letters).

        False when not connected (nothing is queued then: paho's own queue is unbounded).
        ``unacknowledged`` says how many such messages still wait for their PUBACK.
        """
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        with self._mutex:
            if self._early_acks.pop(info.mid, None) is None:
                self._untracked.add(info.mid)
            else:
                self.untracked_acked += 1
        return True

    def publish_tracked(
        self, topic: str, payload: bytes, *, properties: Properties | None = None
    ) -> int:
        """QoS 1 without a future: returns the message id; its PUBACK reaches ``on_acks``,
        batched with the others that arrived meanwhile (one event-loop wake-up per batch, not a
        future, a task and a wake-up per message). Raises ConnectionLost when not connected."""
        assert self._loop is not None
        if not self.connected.is_set():
            raise ConnectionLost(
                f"not connected to {self._config.mqtt.host}:{self._config.mqtt.port}"
            )
        info = self._client.publish(topic, payload, qos=1, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        hand_over = False
        with self._mutex:  # not around publish(): see the lock order in publish()
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                self._tracked.add(info.mid)
            else:
                self._tracked_acks.append((info.mid, early))
                hand_over, self._acks_due = not self._acks_due, True
        if hand_over:
            self._loop.call_soon(self._hand_over_acks)
        return info.mid

    @property
    def unacknowledged(self) -> int:
        return len(self._untracked)

    @staticmethod
    def _check_reason(topic: str, reason: int) -> None:
        if reason >= 0x80:
            raise ConnectionLost(f"broker refused the message on {topic} (reason code {reason})")

    def ack(self, message: Received) -> None:
        self._client.ack(message.mid, message.qos)

    # -- paho callbacks (the event loop's thread; handled in a later iteration) -------------

    def _on_connect(self, client: paho.Client, _: Any, flags: Any, reason: Any, __: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT %s: broker refused the connection: %s", self.client_id, reason)
            return
        self.connects += 1
        log.info(
            "MQTT %s connected to %s:%s (session present: %s)",
            self.client_id,
            self._config.mqtt.host,
            self._config.mqtt.port,
            getattr(flags, "session_present", False),
        )
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos=qos)
        self._call(self.connected.set)
        if self._on_connected is not None:
            self._call(self._on_connected)

    def _on_disconnect(self, _: paho.Client, __: Any, ___: Any, reason: Any, ____: Any) -> None:
        # A disconnect we asked for (reason 0) is routine; anything else is worth a warning.
        level = logging.INFO if int(getattr(reason, "value", 0) or 0) == 0 else logging.WARNING
        log.log(level, "MQTT %s disconnected: %s", self.client_id, reason)
        self._call(self.connected.clear)
        self._call(self._fail_pending, f"disconnected: {reason}")

    def _on_publish(self, _: paho.Client, __: Any, mid: int, reason: Any, ___: Any) -> None:
        code = int(getattr(reason, "value", 0) or 0)
        hand_over = False
        with self._mutex:
            future = self._pending.pop(mid, None)
            if future is None:
                if mid in self._tracked:
                    self._tracked.discard(mid)
                    self._tracked_acks.append((mid, code))
                    hand_over, self._acks_due = not self._acks_due, True
                elif mid in self._untracked:
                    self._untracked.discard(mid)
                    self.untracked_acked += 1
                elif mid in self._resent:
                    # paho cannot give the id to a new message before this PUBACK frees it.
                    self._resent.discard(mid)
                else:
                    self._early_acks[mid] = code
        if future is not None:
            self._call(self._resolve, future, code)
        elif hand_over:
            self._call(self._hand_over_acks)

    def _on_message(self, _: paho.Client, __: Any, message: paho.MQTTMessage) -> None:
        user = getattr(message.properties, "UserProperty", None) if message.properties else None
        received = Received(
            message.topic,
            bytes(message.payload),
            message.mid,
            message.qos,
            message.retain,
            dict(user) if user else {},
        )
        self._call(self.messages.put_nowait, received)

    # -- event loop side --------------------------------------------------------------------

    def _call(self, function: Any, *args: Any) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if self._in_loop_thread():
            self._loop.call_soon(function, *args)
        else:
            self._loop.call_soon_threadsafe(function, *args)

    def _hand_over_acks(self) -> None:
        with self._mutex:
            acks, self._tracked_acks = self._tracked_acks, []
            self._acks_due = False
        if acks and self._on_acks is not None:
            self._on_acks(acks)

    @staticmethod
    def _resolve(future: asyncio.Future[None], code: int) -> None:
        if future.done():
            return
        if code >= 0x80:
            future.set_exception(ConnectionLost(f"broker refused the message (reason code {code})"))
        else:
            future.set_result(None)

    def _fail_pending(self, why: str) -> None:
        with self._mutex:
            pending, self._pending = self._pending, {}
            # paho re-sends what it has in flight, under the same ids; nobody awaits them now.
            self._resent.update(pending, self._tracked, self._untracked)
            self._early_acks.clear()
            self._untracked.clear()
            self._tracked.clear()
        self._hand_over_acks()  # the PUBACKs that did arrive still count
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(why))
        if self._on_lost is not None:
            self._on_lost(why)
