"""Lots assembled from the records of several gateways (pure part of the hub, issue 11)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.hub.assemble import merge_lot, period_label, period_of, same_footprint
from tests.unit.footprint_support import SITE, WORKED_STEPS, lot_record, order_record

S = 1_000_000_000


def _gateways() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The worked example's five steps: laser and press behind gateway A, the rest behind B."""
    orders = [order_record(eq, co2e, step=i) for i, (eq, co2e) in enumerate(WORKED_STEPS)]
    return orders[:2], orders[2:]


def test_a_lot_behind_two_gateways_is_complete_with_both_lot_records() -> None:
    a, b = _gateways()
    records = [*a, *b, lot_record(a), lot_record(b)]
    merged = merge_lot(SITE, "LOT-0001", records)
    assert merged.complete, merged.why_not
    assert merged.lot is not None
    assert merged.lot["steps"] == 5
    assert merged.lot["co2e_kg"] == pytest.approx(1.68, rel=1e-9)
    assert merged.lot["quantity_good"] == 20
    assert merged.lot["co2e_kg_per_unit"] == pytest.approx(0.084, rel=1e-9)


def test_the_lot_waits_for_every_gateway_and_every_listed_revision() -> None:
    a, b = _gateways()
    only_a = merge_lot(SITE, "LOT-0001", [*a, *b, lot_record(a)])
    assert not only_a.complete
    assert "no lot record yet" in only_a.why_not
    assert "LOT-0001-welding-robot" in only_a.why_not
    # B's lot record lists revision 2 of the welding order, which has not arrived.
    revised = order_record("welding-robot", 0.80, step=2, revision=2)
    listed = lot_record([revised, *b[1:]])
    waiting = merge_lot(SITE, "LOT-0001", [*a, *b, lot_record(a), listed])
    assert not waiting.complete
    assert "revision 2 has not arrived" in waiting.why_not
    # It arrives: the newer revision counts.
    done = merge_lot(SITE, "LOT-0001", [*a, *b, revised, lot_record(a), listed])
    assert done.complete
    assert done.lot is not None
    assert done.lot["co2e_kg"] == pytest.approx(1.68 - 0.83 + 0.80, rel=1e-9)
    assert merge_lot(SITE, "LOT-0001", list(a)).why_not.startswith("no lot record yet")
    incomplete = lot_record(a, open_steps=1)
    assert "incomplete" in merge_lot(SITE, "LOT-0001", [*a, incomplete]).why_not


def test_a_cancelled_order_is_no_step_of_the_lot() -> None:
    a, b = _gateways()
    cancelled = dict(b[0], flags=[{"code": "order_cancelled", "detail": "cancelled"}])
    merged = merge_lot(SITE, "LOT-0001", [*a, cancelled, *b[1:], lot_record(a), lot_record(b)])
    assert merged.complete
    assert merged.lot is not None
    assert merged.lot["steps"] == 4


def test_footprints_compare_without_their_ids_and_dates() -> None:
    first = {"id": "1", "created": "2026-01-01T00:00:00Z", "pcf": {"x": "1"}, "status": "Active"}
    again = {
        "id": "2",
        "created": "2026-02-01T00:00:00Z",
        "pcf": {"x": "1"},
        "precedingPfIds": ["1"],
    }
    assert same_footprint(first, again)
    assert not same_footprint(first, {**again, "pcf": {"x": "2"}})


@pytest.mark.parametrize(
    ("moment", "period", "start", "end", "label"),
    [
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "month", datetime(2026, 12, 1, tzinfo=UTC),
         datetime(2027, 1, 1, tzinfo=UTC), "2026-12"),
        (datetime(2026, 5, 2, tzinfo=UTC), "quarter", datetime(2026, 4, 1, tzinfo=UTC),
         datetime(2026, 7, 1, tzinfo=UTC), "2026-Q2"),
        (datetime(2026, 11, 2, tzinfo=UTC), "quarter", datetime(2026, 10, 1, tzinfo=UTC),
         datetime(2027, 1, 1, tzinfo=UTC), "2026-Q4"),
        (datetime(2026, 5, 2, tzinfo=UTC), "year", datetime(2026, 1, 1, tzinfo=UTC),
         datetime(2027, 1, 1, tzinfo=UTC), "2026"),
    ],
)  # fmt: skip
def test_calendar_periods(
    moment: datetime, period: str, start: datetime, end: datetime, label: str
) -> None:
    assert period_of(int(moment.timestamp()) * S, period) == (start, end)
    assert period_label(start, period) == label


def test_a_rows_filter_columns_follow_pact() -> None:
    from edge_agent.hub.assemble import footprint_row

    footprint = {
        "id": "x",
        "productIds": ["urn:a"],
        "companyIds": ["urn:c"],
        "productClassifications": ["urn:cpc:1"],
        "pcf": {
            "geographyCountrySubdivision": "JP-27",
            "referencePeriodEnd": "2026-01-31T00:00:00Z",
        },
    }
    row = footprint_row(footprint, "lot:s:l", 1, "P", 0)
    assert row.geography == ("JP-27", "JP")  # found by a filter on the country too
    start = datetime(2026, 1, 31, tzinfo=UTC)
    assert row.validity_start_ns == int(start.timestamp()) * S
    # No validity period: 3 years from the end of the reference period.
    assert row.validity_end_ns == int(datetime(2029, 1, 31, tzinfo=UTC).timestamp()) * S
