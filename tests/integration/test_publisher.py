"""The outbox publisher against a real Mosquitto and a real SQLite outbox."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import AgentConfig, parse_config
from edge_agent.publish.drainer import OutboxPublisher
from edge_agent.store import OutboxRecord, Store, open_store
from simulators.broker import LocalMosquitto


def config(broker: LocalMosquitto, tmp_path: Path, inflight: int) -> AgentConfig:
    return parse_config(
        {
            "site": {"id": "s"},
            "meters": [
                {"id": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}
            ],
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "max_inflight": inflight,
                "keepalive_s": 5,
            },
        },
        tmp_path,
    )


class Subscriber:
    def __init__(self, broker: LocalMosquitto) -> None:
        self.received: list[dict[str, Any]] = []
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="sub-1", clean_session=False
        )
        self._client.on_message = lambda *args: self.received.append(json.loads(args[2].payload))
        self._client.on_connect = lambda c, *_: c.subscribe("records/#", qos=1)
        self._client.reconnect_delay_set(1, 2)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


async def fill(store: Store, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        payload = json.dumps({"record_id": f"r{index}", "n": index})
        await store.enqueue_record(
            OutboxRecord(f"r{index}", 1, "order", "lot", None, f"records/{index}", payload, 0)
        )


async def wait_until(predicate: Any, timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_drains_many_records_in_order_with_many_in_flight(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """500 queued records, 20 in flight: all PUBACKed, marked sent, received in order.
    (Regression: publishing under our own lock deadlocked against paho's thread.)"""
    subscriber = Subscriber(mosquitto)
    await asyncio.sleep(0.3)
    async with await open_store(tmp_path / "o.db") as store:
        await fill(store, 500)
        publisher = OutboxPublisher(config(mosquitto, tmp_path, 20), store)
        await publisher.start()
        try:
            await wait_until(lambda: _unsent_is(store, 0), 20)
        finally:
            await publisher.stop()
    await asyncio.sleep(0.3)
    subscriber.close()
    numbers = [r["n"] for r in subscriber.received]
    assert numbers == list(range(500))


async def _unsent_is(store: Store, count: int) -> bool:
    return (await store.outbox_stats()).unsent_count == count


async def test_broker_outage_mid_drain_loses_nothing(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    subscriber = Subscriber(mosquitto)
    await asyncio.sleep(0.3)
    async with await open_store(tmp_path / "o.db") as store:
        publisher = OutboxPublisher(config(mosquitto, tmp_path, 5), store)
        await publisher.start()
        await fill(store, 50)
        publisher.notify()
        await wait_until(lambda: _unsent_is(store, 0), 10)
        mosquitto.stop()
        await fill(store, 50, start=50)  # produced while the broker is away: wait in the outbox
        publisher.notify()
        await asyncio.sleep(1.0)
        assert (await store.outbox_stats()).unsent_count == 50
        mosquitto.start()
        await wait_until(lambda: _unsent_is(store, 0), 20)
        await publisher.stop()
    await asyncio.sleep(0.5)
    subscriber.close()
    seen = {r["record_id"] for r in subscriber.received}
    assert seen == {f"r{i}" for i in range(100)}
