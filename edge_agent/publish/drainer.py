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
from typing import Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.publish.link import ConnectionLost, MqttLink
from edge_agent.publish.topics import status_topic
from edge_agent.store import OutboxRow
from edge_agent.tasks import stop_task, wait_event

log = logging.getLogger(__name__)

_IDLE_POLL_S = 2.0
_ACK_FLUSH_S = 0.05
RECORD_CONTENT_TYPE = "application/json"


class Outbox(Protocol):
    async def unsent(self, limit: int, after_seq: int = 0) -> list[OutboxRow]: ...
    async def mark_sent_many(self, seqs: Sequence[int], sent_ns: int) -> None: ...


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


def record_properties(row: OutboxRow) -> Properties:
    """MQTT 5 properties of a record's PUBLISH, so a consumer can route or reject a message
    without parsing it: content type ``application/json`` (UTF-8 payload) and the user
    properties ``schema_version`` and ``kind`` — the payload's own fields (``kind`` falls back
    to the outbox row's; ``schema_version`` is left out if the payload has none)."""
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
        self.link = MqttLink(
            config,
            f"{config.client_id}-pub",
            will=(self._status_topic, status_payload(config, "offline")),
            on_connected=self.notify,
        )
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

    async def stop(self) -> None:
        for task in (self._task, self._status_task):
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
                row.topic, row.payload.encode(), qos=1, properties=record_properties(row)
            )
        finally:
            self._inflight.release()
        self._acked.append(row.seq)
        self.published += 1
        self.latencies_s.append((self._clock.now_ns() - row.created_ns) / 1e9)
        if len(self._acked) >= 200:
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        if self._acked:
            seqs, self._acked = self._acked, []
            await self._outbox.mark_sent_many(seqs, self._clock.now_ns())
