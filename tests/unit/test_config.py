"""Broken configurations and the exact errors they must produce."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import load_config, parse_config
from edge_agent.config.models import ModbusPoint
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def base_config() -> dict[str, Any]:
    return {
        "site": {"id": "plant-a", "name": "Plant A", "country": "JP"},
        "meters": [
            {"id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"},
            {
                "id": "m2",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "points": {
                    "energy": {"address": 0, "type": "uint32", "unit": "Wh", "role": "energy"},
                },
            },
        ],
        "equipment": [{"id": "laser", "meters": ["m1"], "max_power_kw": 40}],
        "emission_factors": {
            "electricity": {
                "value": 0.45,
                "unit": "kgCO2e/kWh",
                "source": "grid",
                "version": "2024",
            }
        },
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """Set a dotted path (``meters.1.points.energy.address``); ``value=...`` deletes the key."""
    data = base_config()
    node: Any = data
    keys = [int(part) if part.isdigit() else part for part in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = copy.deepcopy(value)
    return data


BROKEN = [
    pytest.param(
        with_change("meters.1.points.energy.address", 70000),
        "meters[1].points.energy.address: 70000 is not a register address (0..65535); write the "
        "0-based protocol address, e.g. 30343 in the maker's notation is input register 342",
        id="address-out-of-range",
    ),
    pytest.param(
        with_change("meters.1.points.energy.adress", 3),
        "meters[1].points.energy.adress: unknown key (check the spelling; see docs/configuration.md)",
        id="typo-is-unknown-key",
    ),
    pytest.param(
        with_change("meters.1.points.energy.type", "float"),
        "meters[1].points.energy.type: 'float' is not valid: input should be 'uint16', 'int16', "
        "'uint32', 'int32', 'uint64', 'int64', 'float32' or 'float64'",
        id="unknown-data-type",
    ),
    pytest.param(
        with_change("meters.1.points.energy.unit", "kW"),
        "meters[1].points.energy: unit 'kW' is not a counter unit for role 'energy' "
        "(expected one of Wh, kWh, MWh, m3, Nm3, kg, L)",
        id="power-unit-on-counter",
    ),
    pytest.param(
        with_change("meters.0.host", ...),
        "meters[0].host: required key is missing",
        id="missing-host",
    ),
    pytest.param(
        with_change("meters.0.protocol", "bacnet"),
        "meters[0]: {'id': 'm1', 'protocol': 'bacnet', 'host': '127.0.0.1', 'profile': 'sdm630'} "
        "is not valid: input tag 'bacnet' found using 'protocol' does not match any of the "
        "expected tags: 'modbus_tcp', 'modbus_rtu', 'opcua'",
        id="unknown-protocol",
    ),
    pytest.param(
        with_change("meters.0.profile", "sdm999"),
        "meters[0]: 'sdm999' is not a known profile (available: ",
        id="unknown-profile",
    ),
    pytest.param(
        with_change("meters.0.id", "m/1"),
        "meters[0].id: 'm/1' is not a valid id (letters, digits, '-' and '_', at most 64, no '/', "
        "'+', '#' or spaces because ids become MQTT topic levels)",
        id="id-with-slash",
    ),
    pytest.param(
        with_change("meters.1.id", "m1"),
        "meters[1].id: 'm1' is already used by meters[0]",
        id="duplicate-meter-id",
    ),
    pytest.param(
        with_change("equipment.0.meters", ["m9"]),
        "equipment[0].meters[0].meter: 'm9' is not a configured meter (known: m1, m2)",
        id="unknown-meter-reference",
    ),
    pytest.param(
        with_change("equipment.0.carrier", "natural_gas"),
        "equipment[0].carrier: 'natural_gas' has no entry in emission_factors (known: electricity)",
        id="carrier-without-factor",
    ),
    pytest.param(
        with_change("equipment.0.max_power_kw", -5),
        "equipment[0].max_power_kw: -5.0 is not a positive number",
        id="negative-max-power",
    ),
    pytest.param(
        with_change("meters.1.interval_s", 0),
        "meters[1].interval_s: 0 is not valid: input should be greater than or equal to 0.1",
        id="interval-too-short",
    ),
    pytest.param(
        with_change("mqtt", {"port": 70000}),
        "mqtt.port: 70000 is not valid: input should be less than or equal to 65535",
        id="broker-port",
    ),
    pytest.param(
        with_change("meters.1.points.energy.role", "state"),
        "meters[1].points.energy: a point with role 'state' needs a 'states' value map, e.g. {0: off}",
        id="state-without-map",
    ),
    pytest.param(
        with_change("meters.1.points.energy.address", 65535),
        "meters[1].points.energy: uint32 at address 65535 needs 2 registers and runs past 65535",
        id="value-runs-past-end",
    ),
    pytest.param(
        with_change("site.country", "Japan"),
        "site.country: 'Japan' is not valid: string should match pattern '^[A-Z]{2}$'",
        id="country-code",
    ),
    pytest.param(
        with_change("equipment.0.meters", [{"meter": "m1", "point": "voltage_l1"}]),
        "equipment[0].meters[0]: point 'voltage_l1' has role 'other', not energy or power",
        id="attributed-point-not-energy",
    ),
]


@pytest.mark.parametrize(("data", "expected"), BROKEN)
def test_broken_config_gives_exact_error(
    data: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path)
    assert any(problem.startswith(expected) for problem in caught.value.problems), (
        caught.value.problems
    )


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    data = base_config()
    data["meters"][1]["points"]["energy"]["address"] = -1
    data["meters"][1]["port"] = 0
    data["store"] = {"retention_dayz": 3}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path)
    assert len(caught.value.problems) == 3, caught.value.problems


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("site: {id: a}\nsite: {id: b}\nmeters: []\n")
    with pytest.raises(ConfigError, match="duplicate key 'site'"):
        load_config(config)


def test_yaml_off_stays_a_state_name(tmp_path: Path) -> None:
    """YAML 1.1 would read `off` as False and break every state map."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "site: {id: a}\n"
        "meters:\n"
        "  - id: m\n    protocol: modbus_tcp\n    host: 127.0.0.1\n"
        "    points:\n      state: {address: 1, role: state, states: {0: off, 1: on_hold_is_not_valid}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problems == [
        "meters[0].points.state.states[1]: 'on_hold_is_not_valid' is not valid: input should be "
        "'off', 'idle', 'running', 'setup', 'fault' or 'unknown'"
    ]


def test_profile_points_merge_with_overrides(tmp_path: Path) -> None:
    data = base_config()
    data["meters"][0]["points"] = {"energy": {"address": 342}, "extra": {"address": 9, "unit": "V"}}
    config = parse_config(data, tmp_path)
    points = config.meters[0].points
    energy = points["energy"]
    assert isinstance(energy, ModbusPoint)
    assert (energy.address, energy.register_type, energy.type) == (342, "input", "float32")
    assert points["extra"].unit == "V"
    assert "power" in points


def test_integer_counter_modulus_defaults_to_type_range(tmp_path: Path) -> None:
    data = with_change(
        "meters.1.points.energy",
        {"address": 0, "type": "uint16", "scale": 0.1, "unit": "kWh", "role": "energy"},
    )
    point = parse_config(data, tmp_path).meters[1].points["energy"]
    assert isinstance(point, ModbusPoint)
    assert point.effective_counter_modulus == pytest.approx(6553.6)


def test_store_path_is_relative_to_config_file(tmp_path: Path) -> None:
    config = parse_config(base_config(), tmp_path)
    assert config.store.path == tmp_path / "edge-agent.db"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_shipped_example_configs_validate(name: str) -> None:
    load_config(REPO / "config" / name)


@pytest.mark.parametrize(
    "profile", sorted(p.stem for p in (REPO / "edge_agent" / "profiles").glob("*.yaml"))
)
def test_every_shipped_profile_validates_and_has_an_energy_counter(
    profile: str, tmp_path: Path
) -> None:
    data = base_config()
    data["meters"][0]["profile"] = profile
    config = parse_config(data, tmp_path)
    roles = {point.role.value for point in config.meters[0].points.values()}
    assert {"energy", "power"} <= roles
