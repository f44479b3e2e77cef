from __future__ import annotations

import json

import pytest

from edge_agent.config import MesConfig
from edge_agent.errors import EventRejected
from edge_agent.mes.events import json_depth, parse_event

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
    assert event.raw_json == raw(extra_field="kept").decode()  # the MES's own text, unchanged


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (raw(type="begin"), "type: 'begin' is not valid"),
        (raw(ts="2026-01-31T08:00:00"), "has no UTC offset"),
        (raw(ts=12), "12 is not an RFC 3339 timestamp"),
        (raw(ts="1769846400"), "'1769846400' is not an RFC 3339 timestamp"),
        (raw(type="stop", quantity_good="5", quantity_scrap=0), "quantity_good: '5' is not valid"),
        (
            raw(type="stop", quantity_good=True, quantity_scrap=0),
            "quantity_good: True is not valid",
        ),
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


# -- bounds and exact identifiers (issue 7) ----------------------------------------------------

LIMITS = MesConfig()
NOW_NS = 1_769_814_000_250_000_000  # the START event's own ts


def rejected(payload: bytes, **kwargs: object) -> EventRejected:
    with pytest.raises(EventRejected) as caught:
        parse_event(payload, EQUIPMENT, limits=LIMITS, now_ns=NOW_NS, **kwargs)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "too_deep", "nested deeper than 16"),
        (b"[" * 100_000 + b"]" * 100_000, "payload_too_large", "200000 bytes"),
        (raw(extra={"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}), "too_deep", "16 levels"),
        (raw(ts="9999-12-31T23:59:59Z"), "ts_out_of_range", "9999-12-31T23:59:59+00:00"),
        (raw(ts="2025-12-01T00:00:00Z"), "ts_out_of_range", "30 days before"),
        (raw(equipment_id="laser-cutter "), "invalid_id", "leading or trailing whitespace"),
        (raw(order_id=" o-1"), "invalid_id", "order_id"),
        (raw(lot_id="lot\u00001"), "invalid_id", "control or invisible"),
        (raw(event_id="e\u200b1"), "invalid_id", "control or invisible"),
        (raw(order_id=""), "invalid_id", "empty"),
        (raw(product_id="P" * 129), "invalid_id", "129 characters long (at most 128)"),
        (raw(unit="x" * 1000), "invalid_id", "unit"),
        (raw(product_id="P" * 1_000_000), "payload_too_large", "at most 65536"),
        (raw(**{f"x{i}": i for i in range(33)}), "too_many_fields", "33 unknown fields"),
        (b'{"event_id": "a", "event_id": "b"}', "duplicate_field", "'event_id' appears twice"),
        (
            raw(type="stop", quantity_good=1, quantity_scrap=0, supersedes="e-1"),
            "invalid_field",
            "names the event itself",
        ),
        (b"\xff\xfe", "bad_json", "not valid JSON"),
    ],
)
def test_bounds_and_exact_ids_are_checked_with_codes(payload: bytes, code: str, words: str) -> None:
    error = rejected(payload)
    assert error.code == code, error.reason
    assert words in error.reason, error.reason


def test_ts_window_edges_are_accepted() -> None:
    day_ns = 86_400 * 1_000_000_000
    assert parse_event(raw(), EQUIPMENT, limits=LIMITS, now_ns=NOW_NS + 30 * day_ns).ts_ns
    assert parse_event(raw(), EQUIPMENT, limits=LIMITS, now_ns=NOW_NS - day_ns).ts_ns
    with pytest.raises(EventRejected):
        parse_event(raw(), EQUIPMENT, limits=LIMITS, now_ns=NOW_NS - day_ns - 1)


def test_identifiers_are_kept_exactly_and_unicode_is_welcome() -> None:
    event = parse_event(
        raw(order_id="受注 0001", product_id="筐体-400", supersedes="e-0"),
        EQUIPMENT,
        limits=LIMITS,
        now_ns=NOW_NS,
    )
    assert (event.order_id, event.product_id, event.supersedes) == ("受注 0001", "筐体-400", "e-0")


def test_cancel_needs_its_order_and_equipment() -> None:
    assert rejected(raw(type="cancel", order_id=...)).code == "missing_field"
    event = parse_event(raw(type="cancel", product_id=...), EQUIPMENT, limits=LIMITS)
    assert event.type == "cancel"


def test_deep_nesting_is_a_rejection_even_without_bounds() -> None:
    with pytest.raises(EventRejected) as caught:
        parse_event(b"[" * 100_000 + b"]" * 100_000, EQUIPMENT)  # json.loads: RecursionError
    assert caught.value.code == "too_deep"


def test_json_depth_counts_outside_strings() -> None:
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 2) == 1
    assert json_depth(b'{"a": [{"b": "\\"[["}]}', 5) == 3
