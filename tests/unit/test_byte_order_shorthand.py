"""``order: ABCD|CDAB|BADC|DCBA`` in a Modbus point: shorthand for word_order/byte_order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.config.models import ORDER_SHORTHAND, ModbusPoint
from edge_agent.errors import ConfigError
from edge_agent.sources.modbus.decode import decode_registers, encode_value


def config_with(meter: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": {"id": "plant-a"},
        "meters": [{"id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1", **meter}],
    }


def errors(meter: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(meter), tmp_path)
    return caught.value.problems


@pytest.mark.parametrize(
    ("order", "word_order", "byte_order"),
    [("ABCD", "big", "big"), ("CDAB", "little", "big"), ("BADC", "big", "little"),
     ("DCBA", "little", "little"), ("cdab", "little", "big")],
)  # fmt: skip
def test_shorthand_sets_both_orders(order: str, word_order: str, byte_order: str) -> None:
    point = ModbusPoint.model_validate({"address": 0, "type": "float32", "order": order})
    assert (point.word_order, point.byte_order) == (word_order, byte_order)
    assert point.order == order.upper()


def test_point_without_shorthand_names_its_order() -> None:
    point = ModbusPoint.model_validate({"address": 0, "type": "int32", "word_order": "little"})
    assert point.order == "CDAB"


def test_agreeing_explicit_setting_is_accepted() -> None:
    point = ModbusPoint.model_validate(
        {"address": 0, "type": "float32", "order": "CDAB", "word_order": "little"}
    )
    assert (point.word_order, point.byte_order) == ("little", "big")


def test_conflicting_explicit_setting_names_the_key(tmp_path: Path) -> None:
    points = {"power": {"address": 0, "type": "float32", "order": "CDAB", "word_order": "big",
                        "unit": "W", "role": "power"}}  # fmt: skip
    assert errors({"points": points}, tmp_path) == [
        "meters[0].points.power: word_order: 'big' conflicts with order CDAB (which means "
        "word_order little, byte_order big); remove one of the two"
    ]


def test_conflicting_byte_order_names_byte_order(tmp_path: Path) -> None:
    points = {"p": {"address": 0, "type": "int32", "order": "BADC", "byte_order": "big"}}
    (problem,) = errors({"points": points}, tmp_path)
    assert problem.startswith("meters[0].points.p: byte_order: 'big' conflicts with order BADC")


def test_unknown_shorthand_names_value_and_expectation(tmp_path: Path) -> None:
    points = {"p": {"address": 0, "type": "int32", "order": "ACBD"}}
    assert errors({"points": points}, tmp_path) == [
        "meters[0].points.p: order: 'ACBD' is not a word/byte order (expected ABCD, CDAB, "
        "BADC or DCBA; ABCD = most significant word and byte first)"
    ]


def test_meter_shorthand_overrides_profile_orders(tmp_path: Path) -> None:
    # sdm630's defaults say word_order: big, byte_order: big; the meter's own order wins.
    config = parse_config(
        config_with({"profile": "sdm630", "points": {"energy": {"order": "DCBA"}}}), tmp_path
    )
    energy = config.meters[0].points["energy"]
    assert isinstance(energy, ModbusPoint)
    assert (energy.word_order, energy.byte_order, energy.address) == ("little", "little", 72)
    power = config.meters[0].points["power"]
    assert isinstance(power, ModbusPoint)
    assert power.order == "ABCD"  # untouched profile points keep the profile's order


def test_meter_explicit_order_overrides_profile(tmp_path: Path) -> None:
    config = parse_config(
        config_with({"profile": "em24", "points": {"energy": {"word_order": "big"}}}), tmp_path
    )
    energy = config.meters[0].points["energy"]
    assert isinstance(energy, ModbusPoint)
    assert energy.order == "ABCD"


@pytest.mark.parametrize("order", sorted(ORDER_SHORTHAND))
def test_shorthand_decodes_like_the_explicit_pair(order: str) -> None:
    word_order, byte_order = ORDER_SHORTHAND[order]
    short = ModbusPoint.model_validate({"address": 0, "type": "float32", "order": order})
    explicit = ModbusPoint.model_validate(
        {"address": 0, "type": "float32", "word_order": word_order, "byte_order": byte_order}
    )
    words = encode_value(1234.5, explicit)
    assert decode_registers(words, short) == 1234.5
