"""The hub's ingest asks the broker for ``mqtt.receive_maximum`` unacknowledged records: with
Mosquitto's own 20 it committed 20 records at a time and, in a burst, the broker dropped what
overflowed its queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.hub.config import parse_hub_config
from edge_agent.hub.ingest import RecordIngest
from edge_agent.hub.model import IncomingRecord
from edge_agent.hub.store import open_hub_store
from simulators.broker import LocalMosquitto
from simulators.plant import SITE
from tests.hub.test_hub_cli import _footprint
from tests.hub.test_hub_leave import _publish


class GatedStore:
    """The real hub store; its first commit waits until released (a slow database)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.release = asyncio.Event()
        self.holding = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def add_records(self, records: Sequence[IncomingRecord]) -> list[bool]:
        self.holding += len(records)
        await self.release.wait()
        result: list[bool] = await self._store.add_records(records)
        return result


async def _nothing(_: Sequence[IncomingRecord]) -> None:
    return None


async def test_the_broker_sends_the_hub_up_to_receive_maximum(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    config = parse_hub_config(
        {
            "sites": [{"id": SITE, "topic_prefix": "acme"}],
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "hub-window",
                     "receive_maximum": 150},
            "store": {"url": f"sqlite:///{tmp_path / 'hub.db'}"},
            "footprint": _footprint(),
            "product_period": None,
        },
        tmp_path,
    )  # fmt: skip
    store = await open_hub_store(config.store)
    gated = GatedStore(store)
    ingest = RecordIngest(config, gated, _nothing)
    await ingest.start()
    runner = asyncio.create_task(ingest.run())
    try:
        await asyncio.wait_for(ingest.link.connected.wait(), 15)
        await asyncio.sleep(0.5)  # subscribed
        lots = await asyncio.to_thread(_publish, mosquitto, 200)

        def unacknowledged() -> int:
            return gated.holding + ingest.link.messages.qsize()

        for _ in range(200):
            if unacknowledged() >= 150:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert unacknowledged() == 150  # far more than Mosquitto's 20, and no more than asked
        gated.release.set()
        for _ in range(200):
            if ingest.stored == len(lots):
                break
            await asyncio.sleep(0.05)
        assert ingest.stored == len(lots)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await ingest.stop()
        await store.close()
