"""Factor tables and the new configuration sections: every problem names the key, the file
and line, the value and what was expected (issue 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.accounting import schedules
from edge_agent.config import parse_config
from edge_agent.config.factor_tables import FactorTableError, parse_factor_table
from edge_agent.errors import ConfigError

GOOD = (
    "valid_from,valid_to,value\n"
    "2026-07-01T00:00:00+09:00,2026-07-01T01:00:00+09:00,0.452\n"
    "2026-07-01T01:00:00+09:00,2026-07-01T02:00:00+09:00,0.441\n"
)


def test_a_table_parses_to_utc_rows_in_order() -> None:
    rows = parse_factor_table(GOOD, "grid.csv")
    assert len(rows) == 2
    assert rows[0][1] == rows[1][0]  # contiguous
    assert rows[0][0] == 1782831600 * 10**9  # 2026-06-30T15:00:00Z
    assert rows[1][2] == 0.441


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from,to,value\n", "grid.csv:1: header"),
        ("valid_from,valid_to,value\n2026-07-01T00:00:00,2026-07-01T01:00:00Z,1\n",
         "grid.csv:2 valid_from: '2026-07-01T00:00:00' has no UTC offset"),
        ("valid_from,valid_to,value\n2026-07-01T01:00:00Z,2026-07-01T00:00:00Z,1\n",
         "grid.csv:2 valid_to: '2026-07-01T00:00:00Z' is not after valid_from"),
        ("valid_from,valid_to,value\n2026-07-01T00:00:00Z,2026-07-01T01:00:00Z,-1\n",
         "grid.csv:2 value: '-1' must be a finite number >= 0"),
        ("valid_from,valid_to,value\n2026-07-01T00:00:00Z,2026-07-01T01:00:00Z,abc\n",
         "grid.csv:2 value: 'abc' is not a number"),
        ("valid_from,valid_to,value\n2026-07-01T00:00:00Z,2026-07-01T02:00:00Z,1\n"
         "2026-07-01T01:00:00Z,2026-07-01T03:00:00Z,1\n",
         "grid.csv:3 valid_from: '2026-07-01T01:00:00Z' is before the previous row's valid_to"),
        ("valid_from,valid_to,value\n", "grid.csv: no rows"),
    ],
)  # fmt: skip
def test_a_bad_table_names_the_line_the_value_and_what_was_expected(
    text: str, expected: str
) -> None:
    with pytest.raises(FactorTableError) as caught:
        parse_factor_table(text, "grid.csv")
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def _config(**sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "site": {"id": "s"},
        "meters": [
            {"id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": 5020,
             "points": {"energy": {"address": 0, "type": "float32", "unit": "kWh",
                                   "role": "energy"}}},
            {"id": "m2", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": 5021,
             "points": {"energy": {"address": 0, "type": "float32", "unit": "kWh",
                                   "role": "energy"}}},
        ],
        "equipment": [{"id": "laser", "meters": ["m1"], "max_power_kw": 40}],
        "emission_factors": {
            "electricity": {"table": "grid.csv", "unit": "kgCO2e/kWh", "source": "s",
                            "version": "1"}
        },
    }  # fmt: skip
    config.update(sections)
    return config


def test_a_configuration_loads_its_table_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text(GOOD)
    config = parse_config(_config(), tmp_path)
    (schedule,) = schedules(config)["electricity"].values()
    assert [f.value for f in schedule] == [0.452, 0.441]


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({}, "emission_factors.electricity[0].table: cannot read"),
        ({"emission_factors": {"electricity": {"value": 0.4, "table": "grid.csv", "unit":
          "kgCO2e/kWh", "source": "s", "version": "1"}}},
         "emission_factors.electricity[0]: give either 'value' (a constant) or 'table'"),
        ({"emission_factors": {"electricity": {"value": 0.4, "unit": "kgCO2e/m3",
          "source": "s", "version": "1"}}},
         "emission_factors.electricity[0].unit: 'kgCO2e/m3' is not a factor unit of electricity"),
        ({"emission_factors": {"electricity": [
            {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"},
            {"value": 0.3, "unit": "kgCO2e/kWh", "source": "s", "version": "2"}]}},
         "emission_factors.electricity[1].set: 'location' is already used by "
         "emission_factors.electricity[0]"),
        ({"emission_factors": {"electricity": {"value": 0.4, "unit": "kgCO2e/kWh",
          "source": "s", "version": "1"}},
          "shared_equipment": [{"id": "air", "meters": ["m2"], "serves": ["press"]}]},
         "shared_equipment[0].serves[0]: 'press' is not a configured equipment"),
        ({"emission_factors": {"electricity": {"value": 0.4, "unit": "kgCO2e/kWh",
          "source": "s", "version": "1"}},
          "shared_equipment": [{"id": "air", "meters": ["m2"], "serves": ["laser"],
                                "interval_s": 7}]},
         "shared_equipment[0].interval_s: 7 does not divide a day"),
        ({"emission_factors": {"electricity": {"value": 0.4, "unit": "kgCO2e/kWh",
          "source": "s", "version": "1"}},
          "standards": {"items": [{"product_id": "P", "equipment_id": "drill",
                                   "kwh_per_unit": 1}]}},
         "standards.items[0].equipment_id: 'drill' is not a configured equipment"),
    ],
)  # fmt: skip
def test_bad_carbon_configuration_names_the_key(
    tmp_path: Path, sections: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(**sections), tmp_path)
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
