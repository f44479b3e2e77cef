"""MES intake against a real Mosquitto: commit before ack, persistent session, rejections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import AgentConfig, parse_config
from edge_agent.mes.events import OrderEvent
from edge_agent.mes.intake import MesIntake
from simulators.broker import LocalMosquitto
from simulators.mes import MesPublisher


def config(broker: LocalMosquitto, tmp_path: Path) -> AgentConfig:
    return parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {
                    "id": "m1",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "points": {
                        "energy": {"address": 0, "type": "uint32", "unit": "Wh", "role": "energy"}
                    },
                }
            ],
            "equipment": [{"id": "laser", "meters": ["m1"], "max_power_kw": 10}],
            "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": "p"},
            "emission_factors": {
                "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
            },
        },
        tmp_path,
    )


def start_event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "start",
        "ts": "2026-01-31T08:00:00+09:00",
        "order_id": f"o-{event_id}",
        "lot_id": "lot-1",
        "equipment_id": "laser",
        "product_id": "P",
    }


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_ack_only_after_commit_and_redelivery(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """A first intake whose database fails never acknowledges; the broker redelivers the event
    to the next intake on the same persistent session, which commits it."""
    cfg = config(mosquitto, tmp_path)
    attempts: list[str] = []

    async def failing(event: OrderEvent) -> None:
        attempts.append(event.event_id)
        raise OSError("disk full")

    committed: list[str] = []

    async def working(event: OrderEvent) -> None:
        committed.append(event.event_id)

    broken = MesIntake(cfg, failing)
    await broken.start()
    await asyncio.wait_for(broken.link.connected.wait(), 10)
    mes = MesPublisher(mosquitto.host, mosquitto.port, "p/s1/mes/orders")
    try:
        await mes.publish(start_event("e1"))
        await wait_until(lambda: len(attempts) >= 2)  # retried locally, still not acknowledged
        await broken.stop()
        healthy = MesIntake(cfg, working)
        await healthy.start()
        await wait_until(lambda: committed == ["e1"])
        assert broken.accepted == 0
        await healthy.stop()
    finally:
        mes.close()


async def test_events_while_down_are_delivered_and_bad_ones_dead_lettered(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    cfg = config(mosquitto, tmp_path)
    committed: list[str] = []

    async def handler(event: OrderEvent) -> None:
        committed.append(event.event_id)

    letters: list[dict[str, Any]] = []
    watcher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dl-watch")
    watcher.on_message = lambda *args: letters.append(json.loads(args[2].payload))
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe("p/s1/mes/dead-letter", qos=1)
    watcher.loop_start()

    first = MesIntake(cfg, handler)
    await first.start()  # creates the persistent session
    await asyncio.wait_for(first.link.connected.wait(), 10)
    await first.stop()
    mes = MesPublisher(mosquitto.host, mosquitto.port, "p/s1/mes/orders")
    try:
        await mes.publish(start_event("while-down"))
        await mes.publish_raw(b"{broken json")
        await mes.publish({**start_event("x"), "equipment_id": "oven"})
        second = MesIntake(cfg, handler)
        await second.start()
        await wait_until(lambda: committed == ["while-down"] and len(letters) == 2)
        assert dict(second.rejected) == {"bad_json": 1, "unknown_equipment": 1}
        assert "not valid JSON" in letters[0]["reason"]
        assert "'oven' is not configured" in letters[1]["reason"]
        await second.stop()
    finally:
        mes.close()
        watcher.loop_stop()
        watcher.disconnect()
