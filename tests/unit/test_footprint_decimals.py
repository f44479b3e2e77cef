"""Record floats as PACT decimal strings: deterministic, no float noise, no exponent; and the
footprint's pcf times the good quantity gives back the lot's CO2e to the stated rounding."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.footprint import SIGNIFICANT_DIGITS, build_pact_v3, decimal_string
from edge_agent.footprint.decimals import decimal_places_string, percent_string
from tests.unit.footprint_support import info, lot_record, order_record

PACT_DECIMAL = re.compile(r"^[+-]?\d+(\.\d+)?$")  # components.schemas.Decimal of 3.0.3
CREATED = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (0.1 + 0.2, "0.3"),  # 0.30000000000000004: float noise below 9 digits
        (1.68 / 20, "0.084"),
        (20, "20"),
        (20.0, "20"),
        (0.0, "0"),
        (-0.0, "0"),
        (1e-7, "0.0000001"),  # never 1e-07
        (1.23456789012e-12, "0.00000000000123456789"),
        (1e21, "1000000000000000000000"),
        (123456789.123, "123456789"),
        (2.5e-10, "0.00000000025"),
        (0.1234567895, "0.12345679"),  # read as written, a tie: half-even rounds 9 up
        (Decimal("0.1234567885"), "0.123456788"),  # an exact tie goes to the even digit
        (Decimal("0.1234567875"), "0.123456788"),
    ],
)
def test_decimal_strings(value: float | Decimal, text: str) -> None:
    assert decimal_string(value) == text
    assert PACT_DECIMAL.match(text)


def test_shares_and_ratings() -> None:
    assert percent_string(0.129) == "12.9"
    assert percent_string(1.0) == "100"
    assert percent_string(0.0) == "0"
    assert decimal_places_string(Decimal("1.333333")) == "1.33"
    assert decimal_places_string(Decimal("2.005")) == "2"  # half-even: 2.00
    assert decimal_places_string(Decimal(3)) == "3"


def test_non_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        decimal_string(float("nan"))
    with pytest.raises(TypeError):
        decimal_string(True)


@given(st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_any_float_gives_a_pact_decimal_within_the_rounding(value: float) -> None:
    text = decimal_string(value)
    assert PACT_DECIMAL.match(text), text
    exact = Decimal(repr(value))
    assert abs(Decimal(text) - exact) <= abs(exact) * Decimal("5e-9")


quantities = st.one_of(
    st.integers(min_value=1, max_value=1_000_000),
    st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False),
)
co2e_values = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(co2e=co2e_values, quantity=quantities)
def test_pcf_times_quantity_is_the_lots_co2e(co2e: float, quantity: float) -> None:
    """pcf is rounded half-even to 9 significant digits, so pcf x quantity differs from the
    lot's co2e_kg (read exactly, as its JSON text) by at most 5e-9 of it."""
    orders = [order_record("laser-cutter", co2e, quantity_good=quantity)]
    lot = lot_record(orders, quantity_good=quantity)
    lot["co2e_kg"] = co2e  # exactly the float under test, whatever the fixture's rounding
    pcf = build_pact_v3(lot, orders, info(), created_at=CREATED)["pcf"]
    text = pcf["pcfExcludingBiogenicUptake"]
    assert PACT_DECIMAL.match(text)
    assert len(Decimal(text).normalize().as_tuple().digits) <= SIGNIFICANT_DIGITS
    expected = Decimal(repr(co2e))
    product = Decimal(text) * Decimal(repr(quantity))
    assert abs(product - expected) <= expected * Decimal("5e-9")
    assert text == pcf["fossilGhgEmissions"] == pcf["pcfIncludingBiogenicUptake"]
