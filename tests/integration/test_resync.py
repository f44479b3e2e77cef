"""Re-synchronisation (issue 11): a gateway re-publishes its stored records when asked on its
command topic — every record since a time, or from a sequence number — with their sequence
numbers; a request for another gateway or a malformed one changes nothing (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as single
import pytest

from edge_agent.domain import iso_from_ns
from edge_agent.publish.drainer import OutboxPublisher, parse_resync
from edge_agent.store import OutboxRecord, open_store
from simulators.broker import LocalMosquitto
from tests.integration.test_record_properties import RECORDS, V5Subscriber, config

S = 1_000_000_000


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_records_are_republished_on_request_with_their_sequence_numbers(
    mosquitto: LocalMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.publish.drainer")
    subscriber = V5Subscriber(mosquitto)
    assert await asyncio.to_thread(subscriber.subscribed.wait, 5)
    settings = config(mosquitto, tmp_path)
    topic = f"{settings.mqtt.topic_prefix}/{settings.site.id}/cmd/resync"

    def ask(body: object) -> None:
        single.single(topic, json.dumps(body), qos=1, hostname=mosquitto.host, port=mosquitto.port)

    async with await open_store(tmp_path / "o.db") as store:
        for index, (record_id, kind, payload) in enumerate(RECORDS):
            await store.enqueue_record(
                OutboxRecord(record_id, 1, kind, "LOT-1", None, f"records/{index}",
                             json.dumps(payload), (index + 1) * 100 * S)
            )  # fmt: skip
        publisher = OutboxPublisher(settings, store)
        await publisher.start()
        try:
            await _until(lambda: len(subscriber.received) == 3)
            await _until(publisher.link.connected.is_set)
            await asyncio.sleep(0.3)  # the command subscription is in place
            # Another gateway's request and malformed ones: nothing is re-published.
            ask({"since": iso_from_ns(0), "gateway": "someone-else"})
            ask({"since": "yesterday"})
            ask({"from_seq": 0})
            ask([1, 2])
            await asyncio.sleep(0.5)
            assert len(subscriber.received) == 3
            # Since the second record's creation: records 2 and 3 again.
            ask({"since": iso_from_ns(200 * S), "requester": "hub-1", "request_id": "r1"})
            await _until(lambda: len(subscriber.received) == 5)
            # From sequence number 3 (a hole the hub saw): record 3 again.
            ask({"from_seq": 3, "gateway": settings.client_id, "requester": "hub-1"})
            await _until(lambda: len(subscriber.received) == 6)
            # Counted once the request's records are acknowledged, which may come a moment
            # after the subscriber has them.
            await _until(lambda: publisher.resent == 3)
        finally:
            await publisher.stop()
    subscriber.close()
    seqs = [dict(message["user"])["seq"] for message in subscriber.received]
    assert seqs == ["1", "2", "3", "2", "3", "3"]
    again = [message["payload"]["record_id"] for message in subscriber.received[3:]]
    assert again == ["r-lot", "r-bal", "r-bal"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("since: 'yesterday' is not an RFC 3339 date-time" in w for w in warnings)
    assert any("from_seq: 0 is not an integer >= 1" in w for w in warnings)
    assert any("expected a JSON object, got list" in w for w in warnings)


def test_a_request_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="give 'since'"):
        parse_resync(b"{}", "gw")
    assert parse_resync(b'{"from_seq": 5, "gateway": "other"}', "gw") is None
    request = parse_resync(b'{"from_seq": 5, "gateway": "gw", "requester": "hub"}', "gw")
    assert request is not None
    assert (request.from_seq, request.since_ns, request.requester) == (5, None, "hub")
