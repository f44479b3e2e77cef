"""The publisher's fast path for MQTT 5 record properties gives exactly what the plain path
gives: the bytes paho's ``Properties.pack`` makes, and, where SQLite reads the payload's fields,
the values ``json.loads`` reads (a real SQLite outbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.publish import properties
from edge_agent.publish.properties import (
    RECORD_CONTENT_TYPE,
    message_publish_properties,
    pack_properties,
    record_user_properties,
)
from edge_agent.store import OutboxRecord, open_store

PAYLOADS = [
    '{"schema_version":"1.1","kind":"lot","n":[1,2,{"a":null}]}',
    '{"kind":"order"}',
    '{"kind":"é"}',  # non-ASCII, unescaped
    json.dumps({"kind": "😀é"}),  # escaped: left to json.loads
    '{"kind":1}',
    '{"kind":{"a":1}}',
    '{"schema_version":2}',
    '{"x":{"kind":"inner"}}',
    '{"schema_version":"1.1","kind":"lot","x":{"kind":"inner"}}',
    '{"kind":"a","kind":"b"}',  # json.loads keeps the last
    '{"schema_version":"x","schema_version":"y"}',
    '{"ki\\u006ed":"escaped key"}',
    '{"kind":"a\\u0000b"}',
    '{"kind":"\\"kind\\""}',
    '{"a":NaN,"kind":"x"}',  # json.loads accepts NaN, SQLite does not
    '{"kind":"x"} ',
    "[1,2]",
    '"text"',
    "{}",
    "",
    "not json",
    '{"kind":"x",}',
    '{"type":"kind","kind":"x"}',
    '{"kind":"x","y":"\\u00e9"}',
    '{"kind":"x","n":1e999}',
]


def test_packed_properties_are_the_bytes_paho_packs() -> None:
    for user in (
        [("kind", "order")],
        [("schema_version", "1.1"), ("kind", "lot"), ("gateway", "gw-1"), ("seq", "123456")],
        [("kind", "Ø8 – 😀"), ("gateway", "g" * 300), ("seq", "1")],
    ):
        paho_properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        paho_properties.ContentType = RECORD_CONTENT_TYPE
        paho_properties.PayloadFormatIndicator = 1
        paho_properties.UserProperty = user
        assert pack_properties(RECORD_CONTENT_TYPE, user) == paho_properties.pack()  # type: ignore[no-untyped-call]


async def test_fields_read_by_sqlite_match_json_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await open_store(tmp_path / "o.db") as store:
        for index, payload in enumerate(PAYLOADS):
            await store.enqueue_record(
                OutboxRecord(f"r{index}", 1, "balance", "L", None, "t", payload, index)
            )
        messages = await store.unsent_messages(100)
    assert [m.payload.decode() for m in messages] == PAYLOADS
    for message, payload in zip(messages, PAYLOADS, strict=True):
        for gateway in ("gw-1", None):
            expected = record_user_properties(payload, "balance", message.seq, gateway)
            packed = message_publish_properties(message, gateway).pack()
            assert packed == pack_properties(RECORD_CONTENT_TYPE, expected), payload

    # Records like the agent's take the fast path: the payload is not parsed whole.
    def no_whole_parse(*_: object) -> list[tuple[str, str]]:
        raise AssertionError("payload parsed whole")

    monkeypatch.setattr(properties, "record_user_properties", no_whole_parse)
    for message in messages[:3]:
        message_publish_properties(message, "gw-1")
    assert [properties.message_user_properties(m, "gw-1") for m in messages[:3]] == [
        [("schema_version", "1.1"), ("kind", "lot"), ("gateway", "gw-1"), ("seq", "1")],
        [("kind", "order"), ("gateway", "gw-1"), ("seq", "2")],
        [("kind", "é"), ("gateway", "gw-1"), ("seq", "3")],
    ]
