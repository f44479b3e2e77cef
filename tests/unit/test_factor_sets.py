"""Factor sets side by side, reported set, primary share, and gas volume conversion (issue 10)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge_agent.accounting import gas_conversion
from edge_agent.attribution.model import FactorUse
from edge_agent.attribution.records import build_order_record
from edge_agent.config.models import EmissionFactor, ModbusPoint
from tests.unit.test_records import CONTRACT, GAS, GRID, VALIDATOR, allocation, facts, steady

LOCATION = replace(GRID, set="location")
MARKET = replace(CONTRACT, set="market")


def _record(report_set: str) -> dict[str, object]:
    alloc = allocation(steady("m-laser", 18.0))  # 0.03 kWh, all measured
    energy = alloc.orders["o-1"].energy
    uses = {
        "electricity": {
            "location": [FactorUse(LOCATION, energy, energy, 0.0)],
            "market": [FactorUse(MARKET, energy, energy, 0.0)],
        }
    }
    record = build_order_record(
        facts(), [alloc], {"electricity": LOCATION}, "electricity", revision=1,
        factor_uses=uses, report_set=report_set,
    )  # fmt: skip
    payload = record.to_json_dict()
    VALIDATOR.validate(payload)
    return payload


def test_auto_reports_the_market_set_and_keeps_both() -> None:
    payload = _record("auto")
    assert payload["co2e_kg"] == pytest.approx(0.03 * 0.02, rel=1e-6)
    assert payload["co2e_by_set"] == {
        "location": pytest.approx(0.03 * 0.45, rel=1e-6),
        "market": pytest.approx(0.03 * 0.02, rel=1e-6),
    }
    # Measured activity x a contract (primary) factor: 100 % primary data.
    assert payload["primary_data_share"] == 1.0
    reported = [f for f in payload["factors"] if f["reported"]]  # type: ignore[union-attr, index]
    assert [f["set"] for f in reported] == ["market"]
    assert payload["carriers"][0]["set"] == "market"  # type: ignore[index]


def test_location_can_be_forced_and_a_grid_average_is_not_primary() -> None:
    payload = _record("location")
    assert payload["co2e_kg"] == pytest.approx(0.03 * 0.45, rel=1e-6)
    assert payload["primary_data_share"] == 0.0


def _gas_factor(conditions: str | None) -> EmissionFactor:
    return EmissionFactor(
        value=2.23, unit="kgCO2e/m3", source="s", version="1",
        reference_conditions=conditions,  # type: ignore[arg-type]
    )  # fmt: skip


def _gas_point(unit: str, conditions: object = None) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"address": 0, "type": "float32", "unit": unit, "role": "energy",
         "metering_conditions": conditions}
    )  # fmt: skip


def test_a_gas_volume_is_converted_to_the_factors_reference_conditions() -> None:
    # 1 m3 metered at 15 °C and 101.325 kPa is 273.15 / 288.15 Nm3 (0 °C).
    ratio, flag = gas_conversion(_gas_point("m3", "standard"), _gas_factor("normal"))
    assert ratio == pytest.approx(273.15 / 288.15, rel=1e-12)
    assert flag is None
    # A line at 2 kPa gauge and 20 °C.
    line = {"temperature_c": 20.0, "pressure_kpa": 103.325}
    ratio, _ = gas_conversion(_gas_point("m3", line), _gas_factor("normal"))
    assert ratio == pytest.approx((103.325 / 101.325) * (273.15 / 293.15), rel=1e-12)
    # Nm3 counters are at normal conditions; to a 15 °C factor they grow.
    ratio, _ = gas_conversion(_gas_point("Nm3"), _gas_factor("standard"))
    assert ratio == pytest.approx(288.15 / 273.15, rel=1e-12)
    # Unknown metering conditions: no conversion, and said so.
    ratio, flag = gas_conversion(_gas_point("m3"), _gas_factor("normal"))
    assert ratio == 1.0
    assert flag is not None
    assert flag.code == "gas_conditions_unknown"
    # A factor without reference conditions converts nothing.
    assert gas_conversion(_gas_point("m3", "standard"), _gas_factor(None)) == (1.0, None)


def test_a_converted_gas_factor_enters_the_co2e() -> None:
    alloc = allocation(steady("m-gas", 36.0, unit="m3", carrier="city_gas"))  # 0.06 m3
    volume = alloc.orders["o-1"].energy
    converted = replace(GAS, conversion=0.9)
    record = build_order_record(
        facts(), [alloc], {"city_gas": GAS}, "electricity", revision=1,
        factor_uses={"city_gas": {"location": [FactorUse(converted, volume, volume, 0.0)]}},
    ).to_json_dict()  # fmt: skip
    VALIDATOR.validate(record)
    assert record["co2e_kg"] == pytest.approx(volume * 0.9 * 2.23, rel=1e-9)
    (use,) = record["factors"]
    assert use["conversion"] == 0.9
    assert use["activity"] == pytest.approx(volume, rel=1e-9)
