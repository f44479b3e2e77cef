"""MQTT 5 properties on every published record, received by an MQTT v5 subscriber through a real
Mosquitto: content type application/json and the user properties schema_version and kind."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import AgentConfig, parse_config
from edge_agent.publish.drainer import OutboxPublisher, record_properties
from edge_agent.store import OutboxRecord, OutboxRow, Store, open_store
from simulators.broker import LocalMosquitto


def config(broker: LocalMosquitto, tmp_path: Path) -> AgentConfig:
    return parse_config(
        {
            "site": {"id": "s"},
            "meters": [
                {"id": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}
            ],
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5},
        },
        tmp_path,
    )


class V5Subscriber:
    """Keeps each message's payload and properties (as plain values)."""

    def __init__(self, broker: LocalMosquitto) -> None:
        self.received: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="sub-v5",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe("records/#", qos=1)
        self._client.on_subscribe = lambda *_: self.subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _: Any, __: Any, message: paho.MQTTMessage) -> None:
        properties = message.properties
        self.received.append(
            {
                "topic": message.topic,
                "payload": json.loads(message.payload),
                "content_type": getattr(properties, "ContentType", None),
                "format": getattr(properties, "PayloadFormatIndicator", None),
                "user": list(getattr(properties, "UserProperty", [])),
            }
        )

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


RECORDS = [
    ("r-order", "order", {"record_id": "r-order", "schema_version": "1.0", "kind": "order"}),
    ("r-lot", "lot", {"record_id": "r-lot", "schema_version": "1.0", "kind": "lot"}),
    ("r-bal", "balance", {"record_id": "r-bal", "schema_version": "1.0", "kind": "balance"}),
]


async def _wait_sent(store: Store, count: int) -> None:
    for _ in range(200):
        if (await store.outbox_stats()).sent_count == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("records not acknowledged in time")


async def test_every_record_carries_content_type_and_user_properties(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    subscriber = V5Subscriber(mosquitto)
    assert await asyncio.to_thread(subscriber.subscribed.wait, 5)
    async with await open_store(tmp_path / "o.db") as store:
        for index, (record_id, kind, payload) in enumerate(RECORDS):
            await store.enqueue_record(
                OutboxRecord(
                    record_id, 1, kind, "LOT-1", None, f"records/{index}", json.dumps(payload), 0
                )
            )
        settings = config(mosquitto, tmp_path)
        publisher = OutboxPublisher(settings, store)
        await publisher.start()
        try:
            await _wait_sent(store, len(RECORDS))
        finally:
            await publisher.stop()
    for _ in range(100):
        if len(subscriber.received) >= len(RECORDS):
            break
        await asyncio.sleep(0.05)
    subscriber.close()
    by_id = {message["payload"]["record_id"]: message for message in subscriber.received}
    assert sorted(by_id) == sorted(record_id for record_id, _, _ in RECORDS)
    for seq, (record_id, kind, _) in enumerate(RECORDS, start=1):
        message = by_id[record_id]
        assert message["content_type"] == "application/json"
        assert message["format"] == 1
        # The gateway and its outbox sequence number: a hub finds holes in what it received.
        assert message["user"] == [
            ("schema_version", "1.0"), ("kind", kind),
            ("gateway", settings.client_id), ("seq", str(seq)),
        ]  # fmt: skip


def _row(payload: str, kind: str = "order") -> OutboxRow:
    return OutboxRow(1, "r", 1, kind, "LOT-1", None, "t", payload, 0, None)


def test_properties_come_from_the_payload_and_fall_back_to_the_row() -> None:
    properties = record_properties(_row('{"schema_version": "1.1", "kind": "lot"}', "order"))
    assert properties.ContentType == "application/json"
    assert properties.UserProperty == [("schema_version", "1.1"), ("kind", "lot")]
    # A payload without the fields (or not JSON at all) still says what kind the row is.
    assert record_properties(_row('{"n": 1}', "balance")).UserProperty == [("kind", "balance")]
    assert record_properties(_row("not json", "order")).UserProperty == [("kind", "order")]
