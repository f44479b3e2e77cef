from __future__ import annotations

import json

import pytest

from edge_agent.errors import EventRejected
from edge_agent.mes.events import parse_event

EQUIPMENT = {"laser-cutter", "press-brake"}
START = {
    "event_id": "e-1",
    "type": "start",
    "ts": "2026-01-31T08:00:00.250+09:00",
    "order_id": "o-1",
    "lot_id": "lot-1",
    "equipment_id": "laser-cutter",
    "product_id": "P-1",
}


def raw(**changes: object) -> bytes:
    body = {**START, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_valid_start_is_parsed_to_utc_nanoseconds() -> None:
    event = parse_event(raw(extra_field="kept"), EQUIPMENT)
    assert event.ts_ns == 1_769_814_000_250_000_000  # 2026-01-30T23:00:00.25Z
    assert event.unit == "piece"
    assert '"extra_field":"kept"' in event.raw_json


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (raw(type="begin"), "type: 'begin' is not valid"),
        (raw(ts="2026-01-31T08:00:00"), "has no UTC offset"),
        (raw(ts=12), "12 is not an RFC 3339 timestamp string"),
        (raw(event_id=...), "event_id: required field is missing"),
        (
            raw(equipment_id="oven"),
            "equipment_id 'oven' is not configured (known: laser-cutter, press-brake)",
        ),
        (raw(product_id=...), "product_id is required for a 'start' event"),
        (raw(type="stop", product_id=...), "quantity_good is required for a 'stop' event"),
        (raw(type="stop", quantity_good=-1, quantity_scrap=0), "quantity_good: -1 is not valid"),
        (raw(type="pause", order_id=...), "order_id is required for a 'pause' event"),
    ],
)
def test_malformed_events_are_rejected_with_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(EventRejected, match=None) as caught:
        parse_event(payload, EQUIPMENT)
    assert reason in str(caught.value), str(caught.value)


def test_lot_complete_needs_no_order_or_equipment() -> None:
    event = parse_event(
        json.dumps(
            {
                "event_id": "e-9",
                "type": "lot_complete",
                "ts": "2026-01-31T09:00:00Z",
                "lot_id": "lot-1",
            }
        ).encode(),
        EQUIPMENT,
    )
    assert event.order_id is None
    assert event.equipment_id is None
