"""MES order events from MQTT: validated, committed, then acknowledged.

The subscription uses a persistent session (fixed client id, clean start off, session expiry
from the config), so events the MES publishes while the agent is down wait at the broker. Each
message is acknowledged (PUBACK) only after the engine's handler returned — i.e. after the event
is committed to SQLite. A rejected event is logged with its reason, counted, dead-lettered and
acknowledged (a poison message must not come back forever); a failing database is retried with
backoff and the message stays unacknowledged meanwhile, so nothing acknowledged is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from edge_agent.config import AgentConfig
from edge_agent.errors import EventRejected
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.publish.link import ConnectionLost, MqttLink, Received
from edge_agent.publish.topics import dead_letter_topic, mes_topic
from edge_agent.tasks import stop_task

log = logging.getLogger(__name__)

EventHandler = Callable[[OrderEvent], Awaitable[None]]
_MAX_RETRY_S = 30.0


def rejection_code(reason: str) -> str:
    """A short, countable code for a rejection reason (the full text goes to the log)."""
    for code, marker in (
        ("bad_json", "not valid JSON"),
        ("not_an_object", "expected a JSON object"),
        ("unknown_equipment", "is not configured"),
        ("without_start", "without start"),
        ("equipment_mismatch", "does not match order"),
        ("missing_field", "required"),
    ):
        if marker in reason:
            return code
    return "invalid_field"


class MesIntake:
    def __init__(
        self,
        config: AgentConfig,
        handler: EventHandler,
        *,
        on_rejected: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        self._handler = handler
        self._on_rejected = on_rejected
        self._known_equipment = frozenset(item.id for item in config.equipment)
        self._topic = mes_topic(config)
        self._dead_letter = dead_letter_topic(config)
        self.link = MqttLink(
            config,
            f"{config.client_id}-mes",
            persistent_session=True,
            manual_ack=True,
            subscriptions=[(self._topic, 1)],
        )
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.link.start()
        self._task = asyncio.create_task(self._consume(), name="mes-intake")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
        await self.link.stop()

    async def _consume(self) -> None:
        while True:
            message = await self.link.messages.get()
            await self._process(message)

    async def _process(self, message: Received) -> None:
        delay = 0.5
        while True:
            try:
                event = parse_event(message.payload, self._known_equipment)
                await self._handler(event)
            except EventRejected as exc:
                await self._reject(message, str(exc))
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "MES event not committed; retrying in %.1f s (not acknowledged)", delay
                )
                await asyncio.sleep(delay)
                delay = min(_MAX_RETRY_S, delay * 2)
                continue
            self.accepted += 1
            break
        self.link.ack(message)

    async def _reject(self, message: Received, reason: str) -> None:
        code = rejection_code(reason)
        self.rejected[code] += 1
        preview = message.payload[:200].decode("utf-8", errors="replace")
        log.warning("MES event rejected (%s): %s — payload: %s", code, reason, preview)
        if self._on_rejected is not None:
            with contextlib.suppress(Exception):
                await self._on_rejected(code)
        if self._dead_letter is not None:
            letter = json.dumps(
                {
                    "reason": reason,
                    "code": code,
                    "topic": message.topic,
                    "payload": message.payload.decode("utf-8", errors="replace"),
                }
            ).encode()
            try:
                async with asyncio.timeout(5.0):
                    await self.link.publish(self._dead_letter, letter)
            except (ConnectionLost, TimeoutError) as exc:
                log.warning("dead-letter publish failed: %s", exc)
