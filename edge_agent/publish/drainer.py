"""Drain the SQLite outbox to MQTT: in order, QoS 1, bounded in flight, sent only on PUBACK.

After a reconnect or a restart the drain starts again from the oldest unsent record, so a
record whose PUBACK was lost is sent twice — harmless, consumers de-duplicate on ``record_id``.
A retained status message says ``online``; the Last Will turns it ``offline`` if the agent dies.

The drain keeps its in-flight window full: the next batch of rows is read while the current one
goes out, PUBACKs come back in batches (:meth:`MqttLink.publish_tracked`, no future or task per
record), and acknowledged records are marked sent in a background transaction per batch.
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
from edge_agent.errors import StoreError
from edge_agent.publish.link import ConnectionLost, MqttLink
from edge_agent.publish.properties import (
    RECORD_CONTENT_TYPE,
    message_publish_properties,
    record_publish_properties,
    record_user_properties,
)
from edge_agent.publish.topics import resync_topic, status_topic
from edge_agent.store import OutboxRow
from edge_agent.store.sqlite import OutboxMessage
from edge_agent.tasks import stop_task, wait_event

log = logging.getLogger(__name__)

# With nothing to send and nothing in flight, look at the outbox again this often even if not
# notified: a safety net only, every enqueue notifies (notify() wakes the drain at once).
_IDLE_POLL_S = 2.0
_FETCH_ROWS = 500  # rows read per query (the next query runs while these go out)
# Once all is acknowledged, wait this long for a new record before marking the PUBACKs sent:
# a record finalised meanwhile goes out first instead of queueing behind that transaction.
# PUBACKs older than _MARK_WITHIN_S are marked before anything else, though.
_ACK_FLUSH_S = 0.05
_MARK_WITHIN_S = 1.0
_MARK_BATCH = 500  # PUBACKs marked sent per transaction while draining

__all__ = ["RECORD_CONTENT_TYPE", "OutboxPublisher", "ResyncRequest", "parse_resync"]


class Outbox(Protocol):
    async def unsent_messages(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]: ...
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
    a hub sees a hole in a gateway's sequence and asks for a re-sync).

    The publisher sends the same properties pre-encoded (``record_publish_properties``)."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = RECORD_CONTENT_TYPE
    properties.PayloadFormatIndicator = 1  # UTF-8 text
    properties.UserProperty = record_user_properties(row.payload, row.kind, row.seq, gateway)
    return properties


class OutboxPublisher:
    def __init__(self, config: AgentConfig, outbox: Outbox, clock: Clock | None = None) -> None:
        self._config = config
        self._outbox = outbox
        self.started = False
        self._clock = clock or SystemClock()
        self._wake = asyncio.Event()
        self._gateway = config.client_id
        self._status_topic = status_topic(config)
        self._resync_topic = resync_topic(config)
        self.link = MqttLink(
            config,
            f"{config.client_id}-pub",
            will=(self._status_topic, status_payload(config, "offline")),
            on_connected=self.notify,
            subscriptions=[(self._resync_topic, 1)] if self._resync_topic else [],
            on_acks=self._on_acks,
            on_lost=self._on_lost,
        )
        self._resync_task: asyncio.Task[None] | None = None
        self.resent = 0  # records re-published on re-sync requests
        self._task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self.problems: dict[str, str] = {}
        self._acked: list[int] = []  # seqs acknowledged, not yet marked sent
        self._first_unmarked_s = 0.0  # event-loop time of the oldest PUBACK in _acked
        self._marking: asyncio.Task[None] | None = None  # a background mark_sent_many
        # Shared by the drain and re-sync requests: at most max_inflight unacknowledged.
        self._inflight = asyncio.Semaphore(config.mqtt.max_inflight)
        self._window: dict[int, OutboxMessage] = {}  # the drain's records in flight, by mid
        self._failure: str | None = None  # why the current drain must stop
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
        await self._flush_acks()  # PUBACKs that came in while stopping

    async def _run(self) -> None:
        while True:
            await self.link.connected.wait()
            try:
                await self.link.publish(self._status_topic, self._online(), retain=True)
                await self._drain_while_connected()
            except ConnectionLost as exc:
                log.info("publisher paused: %s", exc)
                await self._settle()
                await self._flush_acks()
                await asyncio.sleep(0.2)

    def _fetch(self, after_seq: int) -> asyncio.Task[list[OutboxMessage]]:
        # A notify() from here on wakes the drain even if this query misses its record.
        self._wake.clear()
        return asyncio.create_task(self._outbox.unsent_messages(_FETCH_ROWS, after_seq))

    async def _drain_while_connected(self) -> None:
        """Publish unsent records in seq order until the connection fails (ConnectionLost).

        Starts from the oldest unsent; afterwards reads only past the last record taken, except
        when idle with nothing in flight and every PUBACK marked: then it rescans from the start
        (nothing can be published twice then), as a safety net."""
        self._failure = None
        after_seq = 0
        fetch = self._fetch(after_seq)
        try:
            while True:
                messages = await fetch
                if messages:
                    after_seq = messages[-1].seq
                    fetch = self._fetch(after_seq)  # read the next batch while these go out
                    await self._publish_in_order(messages)
                    continue
                self._raise_if_failed()
                if self._window:  # wait for new records, the last PUBACK or a failure
                    await self._wake.wait()
                elif self._may_defer_marking() and await wait_event(self._wake, _ACK_FLUSH_S):
                    pass  # a new record: publish it, mark the PUBACKs later
                else:
                    await self._flush_acks()
                    await wait_event(self._wake, _IDLE_POLL_S)
                    after_seq = 0
                fetch = self._fetch(after_seq)
        finally:
            if not fetch.done():
                fetch.cancel()
            elif not fetch.cancelled():
                fetch.exception()  # retrieved: an error of an abandoned read is not news

    async def _publish_in_order(self, messages: list[OutboxMessage]) -> None:
        link, window, inflight, gateway = self.link, self._window, self._inflight, self._gateway
        for message in messages:
            await inflight.acquire()
            try:
                self._raise_if_failed()
                properties = message_publish_properties(message, gateway)
                window[
                    link.publish_tracked(message.topic, message.payload, properties=properties)
                ] = message
            except BaseException as exc:
                inflight.release()
                if isinstance(exc, ValueError):  # a property the MQTT encoding cannot carry
                    raise ConnectionLost(f"record {message.seq} not published: {exc}") from exc
                raise
            if len(self._acked) >= _MARK_BATCH:
                self._mark_in_background()

    def _may_defer_marking(self) -> bool:
        loop_time = asyncio.get_running_loop().time()
        return bool(self._acked) and loop_time - self._first_unmarked_s < _MARK_WITHIN_S

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise ConnectionLost(self._failure)
        if not self.link.connected.is_set():
            raise ConnectionLost("disconnected while draining")

    def _on_acks(self, acks: list[tuple[int, int]]) -> None:
        """PUBACKs of the drain's records (event loop, a batch per wake-up)."""
        window, now = self._window, self._clock.now_ns()
        if not self._acked:
            self._first_unmarked_s = asyncio.get_running_loop().time()
        for mid, code in acks:
            message = window.pop(mid, None)
            if message is None:
                continue
            self._inflight.release()
            if code >= 0x80:
                self._failure = self._failure or (
                    f"broker refused record {message.seq} on {message.topic} (reason code {code})"
                )
                continue
            self._acked.append(message.seq)
            self.published += 1
            self.latencies_s.append((now - message.created_ns) / 1e9)
        if not window or self._failure is not None:
            self._wake.set()

    def _on_lost(self, why: str) -> None:
        """The connection dropped: what is still in flight will get no PUBACK here."""
        for _ in self._window:
            self._inflight.release()
        self._window.clear()
        self._failure = self._failure or why
        self._wake.set()

    async def _settle(self) -> None:
        """Wait until nothing of the drain is in flight (PUBACKs in, or the connection lost)."""
        while self._window:
            self._wake.clear()
            await self._wake.wait()

    def _mark_in_background(self) -> None:
        """Mark the acknowledged records sent without stopping the drain; one at a time."""
        if self._marking is not None:
            if not self._marking.done():
                return
            marking, self._marking = self._marking, None
            try:
                marking.result()
            except StoreError as exc:  # pause and retry, as for a failed publish
                raise ConnectionLost(f"marking records sent failed: {exc}") from exc
        seqs, self._acked = self._acked, []
        self._marking = asyncio.create_task(
            self._outbox.mark_sent_many(seqs, self._clock.now_ns()), name="mark-sent"
        )

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
                        properties=record_publish_properties(
                            row.payload, row.kind, row.seq, self._gateway
                        ),
                    )
                after_seq = row.seq
                count += 1

    async def _flush_acks(self) -> None:
        """Mark every PUBACK so far sent. Cancelled (the drain stopped mid-flush), it loses
        nothing: a background marking goes on (shielded) and PUBACKs not yet marked are kept
        for the next flush, stop()'s; a record whose mark was lost is published again after a
        restart."""
        if self._marking is not None:
            marking = self._marking
            try:
                await asyncio.shield(marking)
            finally:
                if marking.done():
                    self._marking = None
        if self._acked:
            seqs, self._acked = self._acked, []
            try:
                await self._outbox.mark_sent_many(seqs, self._clock.now_ns())
            except BaseException:
                self._acked[:0] = seqs  # not marked (rolled back): the next flush tries again
                raise
