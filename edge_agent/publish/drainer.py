"""Drain the SQLite outbox to MQTT: in order, QoS 1, bounded in flight, sent only on PUBACK.

After a reconnect or a restart the drain starts again from the oldest unsent record, so a
record whose PUBACK was lost is sent twice — harmless, consumers de-duplicate on ``record_id``.
A retained status message says ``online``; the Last Will turns it ``offline`` if the agent dies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.domain import ns_from_iso
from edge_agent.publish.link import ConnectionLost, MqttLink
from edge_agent.publish.topics import resync_topic, status_topic
from edge_agent.store import OutboxRow
from edge_agent.tasks import stop_task, wait_event

log = logging.getLogger(__name__)

_IDLE_POLL_S = 2.0
_ACK_FLUSH_S = 0.05
RECORD_CONTENT_TYPE = "application/json"


class Outbox(Protocol):
    async def unsent(self, limit: int, after_seq: int = 0) -> list[OutboxRow]: ...
    async def mark_sent_many(self, seqs: Sequence[int], sent_ns: int) -> None: ...
    async def published_since(
        self, since_ns: int | None, from_seq: int | None, after_seq: int, limit: int
    ) -> list[OutboxRow]: ...


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    """Re-publish the records created since ``since_ns`` and/or numbered from ``from_seq``."""

    since_ns: int | None
    from_seq: int | None
    requester: str
    request_id: str


def parse_resync(payload: bytes, client_id: str) -> ResyncRequest | None:
    """A re-sync request on the command topic; None when it is for another gateway. Raises
    ValueError naming the field, the value and what was expected."""
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    gateway = body.get("gateway")
    if gateway is not None and gateway != client_id:
        return None
    since = body.get("since")
    from_seq = body.get("from_seq")
    if since is None and from_seq is None:
        raise ValueError("give 'since' (RFC 3339 date-time) and/or 'from_seq' (integer >= 1)")
    since_ns = None
    if since is not None:
        try:
            since_ns = ns_from_iso(str(since))
        except ValueError:
            raise ValueError(f"since: {since!r} is not an RFC 3339 date-time") from None
    if from_seq is not None and (
        not isinstance(from_seq, int) or isinstance(from_seq, bool) or from_seq < 1
    ):
        raise ValueError(f"from_seq: {from_seq!r} is not an integer >= 1")
    return ResyncRequest(
        since_ns,
        from_seq,
        str(body.get("requester", "?"))[:128],
        str(body.get("request_id", ""))[:128],
    )


def status_payload(
    config: AgentConfig, state: str, problems: Mapping[str, str] | None = None
) -> bytes:
    """The retained status; ``problems`` (code -> detail) says what is wrong while online."""
    body: dict[str, object] = {
        "state": state,
        "client_id": config.client_id,
        "site_id": config.site.id,
    }
    if state == "online":
        body["problems"] = [{"code": c, "detail": d} for c, d in sorted((problems or {}).items())]
    return json.dumps(body).encode()


def record_properties(row: OutboxRow, gateway: str | None = None) -> Properties:
    """MQTT 5 properties of a record's PUBLISH, so a consumer can route or reject a message
    without parsing it: content type ``application/json`` (UTF-8 payload) and the user
    properties ``schema_version`` and ``kind`` — the payload's own fields (``kind`` falls back
    to the outbox row's; ``schema_version`` is left out if the payload has none) — and, with
    ``gateway`` (the agent's client id), ``gateway`` and ``seq`` (the outbox sequence number:
    a hub sees a hole in a gateway's sequence and asks for a re-sync)."""
    try:
        payload = json.loads(row.payload)
    except ValueError:
        payload = None
    fields = payload if isinstance(payload, dict) else {}
    kind = fields.get("kind")
    schema_version = fields.get("schema_version")
    user: list[tuple[str, str]] = []
    if isinstance(schema_version, str):
        user.append(("schema_version", schema_version))
    user.append(("kind", kind if isinstance(kind, str) else row.kind))
    if gateway is not None:
        user += [("gateway", gateway), ("seq", str(row.seq))]
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = RECORD_CONTENT_TYPE
    properties.PayloadFormatIndicator = 1  # UTF-8 text
    properties.UserProperty = user
    return properties


class OutboxPublisher:
    def __init__(self, config: AgentConfig, outbox: Outbox, clock: Clock | None = None) -> None:
        self._config = config
        self._outbox = outbox
        self.started = False
        self._clock = clock or SystemClock()
        self._wake = asyncio.Event()
        self._status_topic = status_topic(config)
        self._resync_topic = resync_topic(config)
        self.link = MqttLink(
            config,
            f"{config.client_id}-pub",
            will=(self._status_topic, status_payload(config, "offline")),
            on_connected=self.notify,
            subscriptions=[(self._resync_topic, 1)] if self._resync_topic else [],
        )
        self._resync_task: asyncio.Task[None] | None = None
        self.resent = 0  # records re-published on re-sync requests
        self._task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self.problems: dict[str, str] = {}
        self._acked: list[int] = []
        self._inflight = asyncio.Semaphore(config.mqtt.max_inflight)
        self.published = 0
        # Outbox-to-PUBACK latency of recent records (bounded), for metrics and benchmarks.
        self.latencies_s: deque[float] = deque(maxlen=10_000)

    def notify(self) -> None:
        """Something new is in the outbox (or the link came back): drain now."""
        self._wake.set()

    def report_problem(self, code: str, detail: str | None) -> None:
        """Set (or clear, with None) a problem shown in the retained status message."""
        before = dict(self.problems)
        if detail is None:
            self.problems.pop(code, None)
        else:
            self.problems[code] = detail
        idle = self._status_task is None or self._status_task.done()
        if self.problems != before and self.link.connected.is_set() and idle:
            self._status_task = asyncio.create_task(self._publish_status(), name="status")

    async def _publish_status(self) -> None:
        sent = b""
        try:
            while (payload := self._online()) != sent:  # problems may change meanwhile
                async with asyncio.timeout(5.0):
                    await self.link.publish(self._status_topic, payload, retain=True)
                sent = payload
        except (ConnectionLost, TimeoutError) as exc:
            log.info("status not published: %s (sent again on reconnect)", exc)

    def _online(self) -> bytes:
        return status_payload(self._config, "online", self.problems)

    async def start(self) -> None:
        self.started = True  # from here on, stop() has a link to close (even if start fails)
        await self.link.start()
        self._task = asyncio.create_task(self._run(), name="outbox-publisher")
        if self._resync_topic:
            self._resync_task = asyncio.create_task(self._serve_resync(), name="resync")

    async def stop(self) -> None:
        for task in (self._task, self._status_task, self._resync_task):
            if task is not None:
                await stop_task(task)
        await self._flush_acks()
        await self.link.stop(final=(self._status_topic, status_payload(self._config, "offline")))

    async def _run(self) -> None:
        while True:
            await self.link.connected.wait()
            try:
                await self.link.publish(self._status_topic, self._online(), retain=True)
                await self._drain_while_connected()
            except ConnectionLost as exc:
                log.info("publisher paused: %s", exc)
                await self._flush_acks()
                await asyncio.sleep(0.2)

    async def _drain_while_connected(self) -> None:
        after_seq = 0
        while True:
            self._wake.clear()
            rows = await self._outbox.unsent(limit=500, after_seq=after_seq)
            if not rows:
                await self._flush_acks()
                await wait_event(self._wake, _IDLE_POLL_S)
                after_seq = 0  # rescan: a failed publish may have left an older row unsent
                continue
            tasks = []
            for row in rows:
                await self._inflight.acquire()
                if not self.link.connected.is_set():
                    self._inflight.release()
                    raise ConnectionLost("disconnected while draining")
                tasks.append(asyncio.create_task(self._publish_one(row)))
                after_seq = row.seq
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await self._flush_acks()
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise ConnectionLost(str(failures[0]))

    async def _publish_one(self, row: OutboxRow) -> None:
        try:
            await self.link.publish(
                row.topic,
                row.payload.encode(),
                qos=1,
                properties=record_properties(row, self._config.client_id),
            )
        finally:
            self._inflight.release()
        self._acked.append(row.seq)
        self.published += 1
        self.latencies_s.append((self._clock.now_ns() - row.created_ns) / 1e9)
        if len(self._acked) >= 200:
            await self._flush_acks()

    async def _serve_resync(self) -> None:
        """Answer re-sync requests: re-publish the stored records asked for, in outbox order,
        with their sequence numbers, within the same in-flight bound as new records. Each
        request is logged; a bad one is logged with what is wrong and ignored."""
        while True:
            message = await self.link.messages.get()
            try:
                request = parse_resync(message.payload, self._config.client_id)
            except ValueError as exc:
                log.warning("re-sync request on %s ignored: %s", message.topic, exc)
                continue
            if request is None:
                continue
            try:
                count = await self._resend(request)
            except ConnectionLost as exc:
                log.warning("re-sync for %s interrupted: %s (ask again)", request.requester, exc)
                continue
            self.resent += count
            log.info(
                "re-sync for %s (request %s): %d records re-published",
                request.requester, request.request_id or "-", count,
            )  # fmt: skip

    async def _resend(self, request: ResyncRequest) -> int:
        after_seq, count = 0, 0
        while True:
            rows = await self._outbox.published_since(
                request.since_ns, request.from_seq, after_seq, 500
            )
            if not rows:
                return count
            for row in rows:
                async with self._inflight:
                    await self.link.publish(
                        row.topic,
                        row.payload.encode(),
                        qos=1,
                        properties=record_properties(row, self._config.client_id),
                    )
                after_seq = row.seq
                count += 1

    async def _flush_acks(self) -> None:
        if self._acked:
            seqs, self._acked = self._acked, []
            await self._outbox.mark_sent_many(seqs, self._clock.now_ns())
