"""The pure rules behind the probe's "implausible" and the four word/byte-order decodings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge_agent.accounting import implausible_flags
from edge_agent.attribution.model import Interval
from edge_agent.cli import ProbeRow, counter_resolution_kwh, format_probe_row, format_registers
from edge_agent.config import parse_config
from edge_agent.config.models import EquipmentConfig, MeterRef, ModbusPoint
from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample
from edge_agent.plausibility import (
    FLOAT_COUNTER_STEP_KWH,
    PowerLimit,
    check_counter_moves,
    check_sample,
    counter_check_wanted,
    meter_power_limits,
)
from edge_agent.sources.modbus.decode import decode_every_order, encode_value

LIMIT = PowerLimit(40.0, ("laser",))


def sample(
    value: float, role: PointRole = PointRole.POWER, unit: str = "W", t_s: float = 0.0
) -> Sample:
    point = "power" if role is PointRole.POWER else "energy"
    return Sample(int(t_s * NS_PER_S), "m-laser", point, role, unit, value)


def test_limits_sum_the_equipment_a_meter_serves() -> None:
    def equipment(name: str, kw: float, *meters: str) -> EquipmentConfig:
        refs = [MeterRef(meter=m) for m in meters]
        return EquipmentConfig(id=name, meters=refs, max_power_kw=kw)

    limits = meter_power_limits([equipment("a", 40, "m1"), equipment("b", 10, "m1", "m2")])
    assert limits["m1"] == PowerLimit(50.0, ("a", "b"))
    assert limits["m2"] == PowerLimit(10.0, ("b",))
    assert limits["m1"].describe() == "50 kW, the sum of max_power_kw of equipment a, b"


@pytest.mark.parametrize(
    ("value", "unit", "code"),
    [(41_000.0, "W", "power_above_max"), (0.041, "MW", "power_above_max"),
     (-41.0, "kW", "power_above_max"), (1.35e38, "W", "power_above_max"),
     (math.nan, "W", "power_not_finite"), (2.3e-39, "W", "float_debris")],
)  # fmt: skip
def test_implausible_power(value: float, unit: str, code: str) -> None:
    found = check_sample(sample(value, unit=unit), LIMIT)
    assert found is not None
    assert found.code == code
    assert found.describe().startswith("meter m-laser point power: ")


def test_power_above_max_names_value_limit_and_equipment() -> None:
    found = check_sample(sample(45_000.0), LIMIT)
    assert found is not None
    assert found.reason == (
        "power 45000 W = 45 kW is above max_power_kw 40 of equipment laser (expected at most 40 kW)"
    )


@pytest.mark.parametrize(
    ("value", "unit"), [(39_999.0, "W"), (0.0, "W"), (-3.0, "kW"), (0.04, "MW")]
)
def test_plausible_power(value: float, unit: str) -> None:
    assert check_sample(sample(value, unit=unit), LIMIT) is None


def test_power_without_equipment_is_only_checked_for_debris() -> None:
    assert check_sample(sample(1e9), None) is None
    assert check_sample(sample(1e-40), None) is not None


@pytest.mark.parametrize(
    ("value", "unit", "code"),
    [(-0.5, "kWh", "counter_negative"), (math.inf, "kWh", "counter_not_finite"),
     (math.nan, "Wh", "counter_not_finite"), (1.35e38, "kWh", "counter_too_large"),
     (2e15, "Wh", "counter_too_large"), (1.7e-39, "kWh", "float_debris")],
)  # fmt: skip
def test_implausible_counter(value: float, unit: str, code: str) -> None:
    found = check_sample(sample(value, PointRole.ENERGY, unit), LIMIT)
    assert found is not None
    assert found.code == code
    assert "expected" in found.reason


@pytest.mark.parametrize(
    ("value", "unit"), [(0.0, "kWh"), (12.0, "kWh"), (9e11, "kWh"), (5e5, "m3")]
)
def test_plausible_counter(value: float, unit: str) -> None:
    assert check_sample(sample(value, PointRole.ENERGY, unit), LIMIT) is None


def test_samples_that_are_not_good_are_not_judged() -> None:
    bad = Sample(0, "m", "energy", PointRole.ENERGY, "kWh", None, Quality.DECODE_ERROR)
    assert check_sample(bad, LIMIT) is None


def test_counter_check_only_when_power_is_high_and_rise_resolvable() -> None:
    assert counter_check_wanted(22.0, LIMIT, 1e-6, 1.5)
    assert not counter_check_wanted(1.9, LIMIT, 1e-6, 1.5)  # below 5 % of 40 kW
    assert not counter_check_wanted(45.0, LIMIT, 1e-6, 1.5)  # the power itself is implausible
    assert not counter_check_wanted(22.0, LIMIT, 0.1, 1.5)  # a 0.1 kWh register cannot show it
    assert not counter_check_wanted(22.0, None, 1e-6, 1.5)
    assert not counter_check_wanted(math.nan, LIMIT, 1e-6, 1.5)


def counter(value: float, t_s: float) -> Sample:
    return sample(value, PointRole.ENERGY, "kWh", t_s)


def test_counter_moving_with_power_is_plausible() -> None:
    # 22 kW for 1.5 s is 9.17 Wh
    assert check_counter_moves(counter(12.0, 0), counter(12.00917, 1.5), 22.0, LIMIT, 1e-3) is None


@pytest.mark.parametrize(
    ("second", "code"),
    [(12.0, "counter_stuck"), (12.0002, "counter_stuck"), (11.99, "counter_backwards"),
     (12.5, "counter_too_fast")],
)  # fmt: skip
def test_counter_not_moving_as_power_says(second: float, code: str) -> None:
    found = check_counter_moves(counter(12.0, 0), counter(second, 1.5), 22.0, LIMIT, 1e-3)
    assert found is not None
    assert found.code == code
    assert "while power was 22 kW" in found.reason
    assert "expected a rise of about 0.00917 kWh" in found.reason


def test_counter_check_skips_unresolvable_rise() -> None:
    # an integer 0.1 kWh register cannot show 9 Wh
    assert check_counter_moves(counter(12.0, 0), counter(12.0, 1.5), 22.0, LIMIT, 0.1) is None


def test_resolution_of_counter_registers() -> None:
    def point(**fields: object) -> ModbusPoint:
        return ModbusPoint.model_validate({"address": 0, "unit": "kWh", "role": "energy", **fields})

    assert counter_resolution_kwh(point(type="uint32", scale=0.1), 12.0) == pytest.approx(0.1)
    assert counter_resolution_kwh(point(type="int64", unit="Wh"), 12.0) == pytest.approx(0.001)
    assert counter_resolution_kwh(point(type="float32"), 12.0) == FLOAT_COUNTER_STEP_KWH
    assert counter_resolution_kwh(point(type="float32"), 1e6) == 0.0625  # float32's own step


def test_every_order_decodes_the_same_words() -> None:
    point = ModbusPoint.model_validate(
        {"address": 72, "type": "float32", "register": "input", "unit": "kWh"}
    )
    words = encode_value(12.0, point)  # 0x4140 0x0000
    decoded = {d.order: d for d in decode_every_order(words, point)}
    assert list(decoded) == ["ABCD", "CDAB", "BADC", "DCBA"]
    assert decoded["ABCD"].value == 12.0
    assert decoded["ABCD"].configured
    assert decoded["BADC"].value == pytest.approx(3.015625)
    assert not any(decoded[name].configured for name in ("CDAB", "BADC", "DCBA"))


def test_nan_decoding_is_reported_not_raised() -> None:
    point = ModbusPoint.model_validate({"address": 0, "type": "float32", "order": "CDAB"})
    decoded = {d.order: d for d in decode_every_order([0xFFFF, 0x7FC0], point)}
    assert decoded["ABCD"].value is None
    assert "not a number" in decoded["ABCD"].error
    assert decoded["CDAB"].configured


def test_probe_lines_show_registers_and_four_decodings() -> None:
    point = ModbusPoint.model_validate(
        {"address": 72, "type": "float32", "register": "input", "unit": "kWh", "order": "CDAB"}
    )
    first = sample(2.3e-38, PointRole.ENERGY, "kWh")
    finding = check_sample(first, LIMIT)
    row = ProbeRow(first, point, (0x4140, 0x0000), finding)
    assert "IMPLAUSIBLE (float_debris): counter 2.3e-38 kWh" in format_probe_row(first, finding)
    registers, decoded = format_registers(row)
    assert registers.strip() == "registers input 72..73 (float32): 0x4140 0x0000"
    assert decoded.strip().startswith("as float32 kWh: ABCD 12 | CDAB (configured) 2.34073e-41 |")
    assert "BADC 3.01562" in decoded
    assert "DCBA" in decoded


def test_single_register_points_get_no_decoding_lines() -> None:
    point = ModbusPoint.model_validate({"address": 0, "type": "uint16"})
    assert format_registers(ProbeRow(sample(1.0), point, (1,))) == []


def test_order_records_flag_implausible_readings_in_their_window(tmp_path: Path) -> None:
    config = parse_config(
        {
            "site": {"id": "s"},
            "meters": [
                {
                    "id": "m-laser",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "profile": "sdm630",
                }
            ],
            "equipment": [{"id": "laser", "meters": ["m-laser"], "max_power_kw": 40}],
            "emission_factors": {
                "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "t", "version": "1"}
            },
        },
        tmp_path,
    )
    samples = [
        sample(3000.0, t_s=1),
        sample(1.35e38, t_s=2),  # above max: flagged once, at its first instant
        sample(2e38, t_s=3),
        sample(-1.0, PointRole.ENERGY, "kWh", t_s=4),
        sample(-5.0, PointRole.ENERGY, "kWh", t_s=20),  # outside the window
    ]
    flags = implausible_flags(config, samples, Interval(0, 10 * NS_PER_S))
    assert [(f.code, f.t_ns) for f in flags] == [
        ("implausible_value", 2 * NS_PER_S),
        ("implausible_value", 4 * NS_PER_S),
    ]
    assert flags[0].detail.startswith("meter m-laser point power: power 1.35e+38 W")
    assert "counter -1 kWh is negative" in flags[1].detail
    assert implausible_flags(config, samples[:1], Interval(0, 10 * NS_PER_S)) == []
