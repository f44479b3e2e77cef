"""A drain stopped while it marks PUBACKs sent loses none of them (they would be published
again after a restart)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.publish.drainer import OutboxPublisher
from edge_agent.store import OutboxRow
from edge_agent.store.sqlite import OutboxMessage


class SlowOutbox:
    """Marks after ``release``; a cancelled mark marks nothing (the transaction rolls back)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.marked: list[int] = []

    async def unsent_messages(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        return []

    async def mark_sent_many(self, seqs: Sequence[int], sent_ns: int) -> None:
        await self.release.wait()
        self.marked += seqs

    async def published_since(
        self, since_ns: int | None, from_seq: int | None, after_seq: int, limit: int
    ) -> list[OutboxRow]:
        return []


async def test_a_flush_cancelled_mid_mark_keeps_its_pubacks(tmp_path: Path) -> None:
    config = parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {"id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}
            ],
        },
        tmp_path,
    )
    outbox = SlowOutbox()
    publisher = OutboxPublisher(config, outbox)
    publisher._acked = [1, 2, 3]
    flush = asyncio.create_task(publisher._flush_acks())
    await asyncio.sleep(0.01)  # inside mark_sent_many
    flush.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flush
    assert outbox.marked == []
    assert publisher._acked == [1, 2, 3]  # kept for stop()'s flush
    publisher._acked.append(4)
    outbox.release.set()
    await publisher._flush_acks()
    assert outbox.marked == [1, 2, 3, 4]
