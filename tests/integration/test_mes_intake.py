"""MES intake against a real Mosquitto: commit before ack, persistent session, rejections."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import AgentConfig, parse_config
from edge_agent.engine import BatchResult, LateRejection, Outcome
from edge_agent.mes.events import OrderEvent
from edge_agent.mes.intake import MesIntake
from simulators.broker import LocalMosquitto
from simulators.mes import MesPublisher


def config(
    broker: LocalMosquitto, tmp_path: Path, mes: dict[str, Any] | None = None
) -> AgentConfig:
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
            "mes": mes or {},
        },
        tmp_path,
    )


def start_event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "start",
        "ts": datetime.now(UTC).isoformat(),
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


class RecordingSink:
    """Stands in for the engine (the MQTT path under test is real): commits by recording."""

    def __init__(self, fail: Any = None) -> None:
        self.committed: list[str] = []
        self.counted: Counter[str] = Counter()
        self.calls = 0
        self._fail = fail

    async def handle_batch(
        self, events: Sequence[OrderEvent], rejected: Mapping[str, int] | None = None
    ) -> BatchResult:
        self.calls += 1
        if self._fail is not None:
            self._fail(events)
        self.committed.extend(e.event_id for e in events)
        self.counted.update(rejected or {})
        return BatchResult([Outcome("accepted") for _ in events], [])

    async def expire_held(self) -> list[LateRejection]:
        return []


def disk_full(_: Sequence[OrderEvent]) -> None:
    raise OSError("disk full")


async def failing_probe() -> None:
    raise OSError("disk full")


class GatedSink(RecordingSink):
    """Holds its first commit until released: what a slow disk does to the intake."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = 0  # messages in the batches waiting for release

    async def handle_batch(
        self, events: Sequence[OrderEvent], rejected: Mapping[str, int] | None = None
    ) -> BatchResult:
        self.holding += len(events) + sum((rejected or {}).values())
        await self.release.wait()
        return await super().handle_batch(events, rejected)


async def test_the_broker_sends_up_to_receive_maximum_while_a_commit_runs(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """The MES link asks for ``mes.receive_maximum`` unacknowledged messages (MQTT 5 Receive
    Maximum). Without it Mosquitto sends an MQTT 5 client only its max_inflight_messages (20):
    one commit per 20 messages, too slow for a burst, and the broker drops what overflows its
    queue. While the first commit hangs, the broker must deliver far more than 20."""
    cfg = config(mosquitto, tmp_path, mes={"receive_maximum": 150})
    sink = GatedSink()
    intake = MesIntake(cfg, sink)
    await intake.start()
    await asyncio.wait_for(intake.link.connected.wait(), 10)
    mes = MesPublisher(mosquitto.host, mosquitto.port, "p/s1/mes/orders")
    try:
        events = [start_event(f"r{i}") for i in range(200)]
        await asyncio.gather(*(mes.publish(event) for event in events))

        # The first batch (whatever had arrived) is held; the others wait in the link's queue.
        def unacknowledged() -> int:
            return sink.holding + intake.link.messages.qsize()

        await wait_until(lambda: unacknowledged() >= 150)
        await asyncio.sleep(0.5)
        assert unacknowledged() == 150  # exactly Receive Maximum, no more
        sink.release.set()
        await wait_until(lambda: len(sink.committed) == 200)
        assert sorted(sink.committed) == sorted(e["event_id"] for e in events)
    finally:
        mes.close()
        await intake.stop()


async def test_database_failure_blocks_loudly_and_acknowledges_nothing(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """While the database fails (the probe write fails too) the stream waits, says so, and
    acknowledges nothing; the broker redelivers the event to the next intake on the same
    persistent session, which commits it. Nothing is dead-lettered meanwhile."""
    cfg = config(mosquitto, tmp_path)
    broken_sink = RecordingSink(fail=disk_full)
    broken = MesIntake(cfg, broken_sink, probe=failing_probe)
    await broken.start()
    await asyncio.wait_for(broken.link.connected.wait(), 10)
    mes = MesPublisher(mosquitto.host, mosquitto.port, "p/s1/mes/orders")
    try:
        await mes.publish(start_event("e1"))
        await wait_until(lambda: broken_sink.calls >= 3)  # batch, then alone, retried
        assert broken.blocked_since is not None
        assert broken.accepted == 0
        assert not broken.rejected
        await broken.stop()
        healthy_sink = RecordingSink()
        healthy = MesIntake(cfg, healthy_sink)
        await healthy.start()
        await wait_until(lambda: healthy_sink.committed == ["e1"])
        assert healthy.blocked_since is None
        await healthy.stop()
    finally:
        mes.close()


async def test_a_message_that_keeps_failing_is_dead_lettered_not_blocking(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """The database works (the probe commits), one message's processing fails every time: after
    mes.max_attempts it is dead-lettered as unprocessable and the stream goes on."""
    cfg = config(mosquitto, tmp_path)

    def poison(events: Sequence[OrderEvent]) -> None:
        if any(e.event_id == "poison" for e in events):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

    sink = RecordingSink(fail=poison)

    async def probe() -> None:
        return None

    letters = DeadLetterWatcher(mosquitto)
    intake = MesIntake(cfg, sink, probe=probe)
    await intake.start()
    await asyncio.wait_for(intake.link.connected.wait(), 10)
    mes = MesPublisher(mosquitto.host, mosquitto.port, "p/s1/mes/orders")
    try:
        await mes.publish(start_event("poison"))
        await mes.publish(start_event("after"))
        await wait_until(lambda: "after" in sink.committed and len(letters.received) == 1)
        assert letters.received[0]["code"] == "unprocessable"
        assert "OverflowError" in letters.received[0]["reason"]
        assert intake.rejected == {"unprocessable": 1}
        assert sink.counted["unprocessable"] == 1
        await intake.stop()
    finally:
        mes.close()
        letters.close()


class DeadLetterWatcher:
    def __init__(self, broker: LocalMosquitto) -> None:
        self.received: list[dict[str, Any]] = []
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dl-watch")
        client.on_message = lambda *args: self.received.append(json.loads(args[2].payload))
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect(broker.host, broker.port)
        client.subscribe("p/s1/mes/dead-letter", qos=1)
        client.loop_start()
        assert subscribed.wait(10), "dead-letter watcher not subscribed"  # no letter missed
        self._client = client

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


async def test_events_while_down_are_delivered_and_bad_ones_dead_lettered(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    cfg = config(mosquitto, tmp_path)
    sink = RecordingSink()
    letters = DeadLetterWatcher(mosquitto)
    first = MesIntake(cfg, sink)
    await first.start()  # creates the persistent session
    await asyncio.wait_for(first.link.connected.wait(), 10)
    await first.stop()
    mes = MesPublisher(mosquitto.host, mosquitto.port, "p/s1/mes/orders")
    try:
        await mes.publish(start_event("while-down"))
        await mes.publish_raw(b"{broken json")
        await mes.publish({**start_event("x"), "equipment_id": "oven"})
        second = MesIntake(cfg, sink)
        await second.start()
        await wait_until(lambda: sink.committed == ["while-down"] and len(letters.received) == 2)
        assert dict(second.rejected) == {"bad_json": 1, "unknown_equipment": 1}
        assert sink.counted == {"bad_json": 1, "unknown_equipment": 1}  # committed with the batch
        reasons = sorted(letter["reason"] for letter in letters.received)
        assert any("not valid JSON" in reason for reason in reasons)
        assert any("'oven' is not configured" in reason for reason in reasons)
        await second.stop()
    finally:
        mes.close()
        letters.close()
