"""MES order events from MQTT: validated, committed in batches, then acknowledged.

The subscription uses a persistent session (fixed client id, clean start off, session expiry
from the config), so events the MES publishes while the agent is down wait at the broker.

No single message can stop, flood or fool the stream:

* Messages are taken in batches (whatever has arrived, up to ``mes.batch_max_messages``),
  parsed — any failure of one message rejects that message only — and committed in **one**
  durable transaction with the batch's rejection counts; only then is each message
  acknowledged (PUBACK), in the order received.
* If a batch cannot be committed, its messages are retried one by one. A message that keeps
  failing while the database accepts a probe write is the message's fault: after
  ``mes.max_attempts`` it is dead-lettered as ``unprocessable`` and acknowledged. If the probe
  fails too, the database itself is down (disk full, I/O error): nothing is acknowledged or
  dead-lettered, the stream waits with backoff and says so at ERROR (``blocked_since``).
* Dead letters are published in the background, never awaited one by one; rejections are
  logged at WARNING for the first few per code and minute, then summarised, so a burst of junk
  cannot flood the journal either.
* Events whose start is unknown are held by the engine; when their time runs out they come
  back here as late rejections and are dead-lettered then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.domain import iso_from_ns
from edge_agent.engine import BatchResult, LateRejection
from edge_agent.errors import EventRejected
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.publish.link import MqttLink, Received
from edge_agent.publish.topics import dead_letter_topic, mes_topic
from edge_agent.tasks import stop_task

log = logging.getLogger(__name__)

_MAX_RETRY_S = 30.0
_DEAD_LETTER_QUEUE = 10_000
_DEAD_LETTERS_UNACKNOWLEDGED = 1_000
_HOLD_CHECK_S = 1.0
_LOG_PER_CODE_PER_MINUTE = 5


class EventSink(Protocol):
    """What the intake needs from the engine (the real one is :class:`OrderEngine`)."""

    async def handle_batch(
        self, events: Sequence[OrderEvent], rejected: Mapping[str, int] | None = None
    ) -> BatchResult: ...

    async def expire_held(self) -> list[LateRejection]: ...


class _RejectionLog:
    """WARNING for the first few rejections per code and minute, then one summary line."""

    def __init__(self) -> None:
        self._window_start = time.monotonic()
        self._seen: Counter[str] = Counter()

    def note(self, code: str, reason: str, preview: str) -> None:
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            suppressed = {c: n - _LOG_PER_CODE_PER_MINUTE for c, n in self._seen.items()
                          if n > _LOG_PER_CODE_PER_MINUTE}  # fmt: skip
            if suppressed:
                log.warning(
                    "MES events rejected in the last minute, not logged one by one: %s",
                    ", ".join(f"{c} {n}" for c, n in sorted(suppressed.items())),
                )
            self._window_start, self._seen = now, Counter()
        self._seen[code] += 1
        if self._seen[code] <= _LOG_PER_CODE_PER_MINUTE:
            log.warning("MES event rejected (%s): %s — payload: %s", code, reason, preview)


class MesIntake:
    def __init__(
        self,
        config: AgentConfig,
        engine: EventSink,
        *,
        probe: Callable[[], Awaitable[None]] | None = None,
        clock: Clock | None = None,
        report_problem: Callable[[str, str | None], None] | None = None,
    ) -> None:
        """``probe`` makes a small durable write: it tells a failing database (wait) from a
        message that cannot be processed (dead-letter after ``mes.max_attempts``).
        ``report_problem`` shows a blocked stream in the agent's status (None clears it)."""
        self._config = config
        self._engine = engine
        self._probe = probe
        self._clock = clock or SystemClock()
        self._report_problem = report_problem
        self._known_equipment = frozenset(item.id for item in config.equipment)
        self._topic = mes_topic(config)
        self._dead_letter = dead_letter_topic(config)
        self.link = MqttLink(
            config,
            f"{config.client_id}-mes",
            persistent_session=True,
            manual_ack=True,
            subscriptions=[(self._topic, 1)],
            receive_maximum=config.mes.receive_maximum,
        )
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.held = 0
        self.duplicates = 0
        self.batches = 0
        self.dead_letters_sent = 0
        self.dead_letters_lost = 0
        self.blocked_since: float | None = None  # monotonic; set while the database fails
        self._letters: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_DEAD_LETTER_QUEUE)
        self._log = _RejectionLog()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.link.start()
        self._tasks = [
            asyncio.create_task(self._consume(), name="mes-intake"),
            asyncio.create_task(self._publish_letters(), name="mes-dead-letters"),
            asyncio.create_task(self._expire_held(), name="mes-held-expiry"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        await self.link.stop()

    @property
    def dead_letters_pending(self) -> int:
        return self._letters.qsize()

    # -- the stream -------------------------------------------------------------------------

    async def _consume(self) -> None:
        queue = self.link.messages
        limit = self._config.mes.batch_max_messages
        while True:
            batch = [await queue.get()]
            while len(batch) < limit and not queue.empty():
                batch.append(queue.get_nowait())
            await self.process(batch)

    async def process(self, batch: Sequence[Received]) -> None:
        """Parse, commit and acknowledge one batch (public for tests and benchmarks)."""
        self.batches += 1
        items = [self._parse(message) for message in batch]
        try:
            result = await self._commit(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # isolate the failing message below
            if len(batch) > 1:
                log.warning(
                    "MES batch of %d messages not committed (%r); retrying one by one",
                    len(batch),
                    exc,
                )
            for message, item in zip(batch, items, strict=True):
                await self._process_alone(message, item)
            return
        self._finish(batch, items, result)

    def _parse(self, message: Received) -> OrderEvent | EventRejected:
        try:
            return parse_event(
                message.payload,
                self._known_equipment,
                limits=self._config.mes,
                now_ns=self._clock.now_ns(),
            )
        except EventRejected as exc:
            return exc

    async def _commit(self, items: Sequence[OrderEvent | EventRejected]) -> BatchResult:
        events = [item for item in items if isinstance(item, OrderEvent)]
        counts = Counter(item.code for item in items if isinstance(item, EventRejected))
        return await self._engine.handle_batch(events, counts)

    async def _process_alone(self, message: Received, item: OrderEvent | EventRejected) -> None:
        attempts = 0
        delay = 0.5
        while True:
            try:
                result = await self._commit([item])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the probe decides whose fault
                if await self._database_works():
                    attempts += 1
                    if attempts < self._config.mes.max_attempts:
                        log.warning(
                            "MES message failed (attempt %d of %d): %r",
                            attempts,
                            self._config.mes.max_attempts,
                            exc,
                        )
                        await asyncio.sleep(0.05 * attempts)
                        continue
                    reason = (
                        f"processing failed {attempts} times while the database works: "
                        f"{type(exc).__name__}: {exc}"
                    )[:500]
                    await self._count_unprocessable()
                    self._reject(message, "unprocessable", reason)
                    self.link.ack(message)
                    return
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                    if self._report_problem is not None:
                        self._report_problem(
                            "mes_intake_blocked",
                            f"the database cannot commit MES events since "
                            f"{iso_from_ns(self._clock.now_ns())}: {exc!r}"[:300],
                        )
                log.error(
                    "MES intake blocked: the database cannot commit (%r); the message stays "
                    "unacknowledged and is retried in %.1f s (blocked for %.0f s)",
                    exc,
                    delay,
                    time.monotonic() - self.blocked_since,
                )
                await asyncio.sleep(delay)
                delay = min(_MAX_RETRY_S, delay * 2)
                continue
            if self.blocked_since is not None:
                log.warning(
                    "MES intake unblocked after %.0f s", time.monotonic() - self.blocked_since
                )
                self.blocked_since = None
                if self._report_problem is not None:
                    self._report_problem("mes_intake_blocked", None)
            self._finish([message], [item], result)
            return

    async def _database_works(self) -> bool:
        if self._probe is None:
            return True
        try:
            await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure of the probe: the database is down
            return False
        return True

    async def _count_unprocessable(self) -> None:
        try:
            await self._engine.handle_batch([], {"unprocessable": 1})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the counter in memory still has it
            log.warning("could not count an unprocessable MES message: %r", exc)

    def _finish(
        self,
        batch: Sequence[Received],
        items: Sequence[OrderEvent | EventRejected],
        result: BatchResult,
    ) -> None:
        outcomes = iter(result.outcomes)
        for message, item in zip(batch, items, strict=True):
            if isinstance(item, EventRejected):
                self._reject(message, item.code, item.reason)
                continue
            outcome = next(outcomes)
            if outcome.status == "rejected":
                self._reject(message, outcome.code, outcome.reason)
            elif outcome.status == "held":
                self.held += 1
                log.info(
                    "MES %s %s for order %r held: its start is not known yet",
                    item.type,
                    item.event_id,
                    item.order_id,
                )
            elif outcome.status == "duplicate":
                self.duplicates += 1
            else:
                self.accepted += 1
        for late in result.late:
            self._late(late)
        for message in batch:  # committed: acknowledge, in the order received
            self.link.ack(message)

    # -- rejections and dead letters --------------------------------------------------------

    def _reject(self, message: Received, code: str, reason: str) -> None:
        self.rejected[code] += 1
        preview = message.payload[:200].decode("utf-8", errors="replace")
        self._log.note(code, reason, preview)
        self._queue_letter(code, reason, message.topic, message.payload)

    def _late(self, late: LateRejection) -> None:
        self.rejected[late.code] += 1
        self._log.note(late.code, late.reason, late.payload[:200])
        self._queue_letter(late.code, late.reason, self._topic, late.payload.encode())

    def _queue_letter(self, code: str, reason: str, topic: str, payload: bytes) -> None:
        if self._dead_letter is None:
            return
        limit = self._config.mes.max_payload_bytes
        body: dict[str, object] = {
            "reason": reason,
            "code": code,
            "topic": topic,
            "rejected_at": iso_from_ns(self._clock.now_ns()),
            "payload": payload[:limit].decode("utf-8", errors="replace"),
        }
        if len(payload) > limit:
            body["payload_bytes"] = len(payload)
            body["payload_truncated"] = True
        try:
            self._letters.put_nowait(json.dumps(body).encode())
        except asyncio.QueueFull:
            self.dead_letters_lost += 1
            if self.dead_letters_lost % 1000 == 1:
                log.warning(
                    "dead-letter queue full (%d): %d dead letters not published "
                    "(the rejections are still counted)",
                    _DEAD_LETTER_QUEUE,
                    self.dead_letters_lost,
                )

    async def _publish_letters(self) -> None:
        """Dead letters go out QoS 1 without awaiting each PUBACK; paho keeps the window."""
        while True:
            letter = await self._letters.get()
            if self._dead_letter is None:
                continue
            try:
                async with asyncio.timeout(10.0):
                    await self.link.connected.wait()
                    # Polled: an Event set per PUBACK would cost a wake-up each.
                    while self.link.unacknowledged >= _DEAD_LETTERS_UNACKNOWLEDGED:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            except TimeoutError:
                pass
            if self.link.publish_nowait(self._dead_letter, letter):
                self.dead_letters_sent += 1
            else:
                self.dead_letters_lost += 1
                if self.dead_letters_lost % 1000 == 1:
                    log.warning(
                        "dead letters not published: not connected to the broker "
                        "(the rejections are still counted; %d lost so far)",
                        self.dead_letters_lost,
                    )

    # -- events held for their start --------------------------------------------------------

    async def _expire_held(self) -> None:
        while True:
            await asyncio.sleep(_HOLD_CHECK_S)
            try:
                late = await self._engine.expire_held()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # tried again next time
                log.warning("expiring held MES events failed: %r", exc)
                continue
            for rejection in late:
                self._late(rejection)
