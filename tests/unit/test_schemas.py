"""The generated JSON Schemas: up to date, and agreeing with the agent's own validation.

config.schema.json must accept every configuration the project ships (and the demo writes) and
reject what the agent rejects where a schema can say it; mes-event.schema.json must accept and
reject MES events as :func:`edge_agent.mes.events.parse_event` does, where a schema can say it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge_agent.config import MesConfig, parse_config
from edge_agent.config.yaml_loading import load_yaml_text
from edge_agent.errors import ConfigError, EventRejected
from edge_agent.mes.events import identifier_problem, parse_event
from edge_agent.schemas import SCHEMA_DIR, schema_path
from edge_agent.schemas.generate import (
    _NOT_PRINTABLE_RANGES,
    GENERATED,
    main,
    render,
    stale_files,
)
from simulators.modbus_meters import SimulatedPlant
from simulators.plant import ENCLOSURE_LINE, agent_config, build_plant, write_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config/example.yaml"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_path(name).read_text()))


CONFIG = validator("config")
MES = validator("mes-event")


def as_json(data: Any) -> Any:
    """What an editor validates: YAML's integer keys (state maps) are strings in JSON."""
    return json.loads(json.dumps(data))


def config_errors(data: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in CONFIG.iter_errors(as_json(data))
    ]


# -- generated files ---------------------------------------------------------------------------


def test_shipped_schemas_match_the_generator() -> None:
    stale = stale_files()
    assert not stale, f"{stale} out of date: run `python -m edge_agent.schemas.generate`"


def test_generator_writes_and_checks_a_folder(tmp_path: Path) -> None:
    assert main(["--output-dir", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(GENERATED)
    assert main(["--output-dir", str(tmp_path), "--check"]) == 0
    (tmp_path / "config.schema.json").write_text("{}\n")
    assert main(["--output-dir", str(tmp_path), "--check"]) == 1


def test_generator_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.schemas.generate", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.schema.json")), ids=lambda p: p.name)
def test_every_shipped_schema_is_a_valid_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert path.read_text() == render(schema) or path.name not in GENERATED


# -- configuration -----------------------------------------------------------------------------


def demo_config(tmp_path: Path) -> dict[str, Any]:
    """The configuration the demo writes, as it reads it back (no simulator is started)."""
    plant = SimulatedPlant()
    build_plant(plant, ENCLOSURE_LINE)
    config = agent_config(
        plant, mqtt_host="127.0.0.1", mqtt_port=1883, store_path=tmp_path / "demo.db"
    )
    path = write_config(config, tmp_path / "plant.yaml")
    loaded: dict[str, Any] = load_yaml_text(path.read_text())
    return loaded


def test_example_configuration_is_valid(tmp_path: Path) -> None:
    data = load_yaml_text(EXAMPLE.read_text())
    assert config_errors(data) == []
    parse_config(data, EXAMPLE.parent)  # and the agent agrees


def test_demo_configuration_is_valid(tmp_path: Path) -> None:
    data = demo_config(tmp_path)
    assert config_errors(data) == []
    parse_config(data, tmp_path)


def test_example_names_the_schema_for_editors() -> None:
    first = EXAMPLE.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    assert (EXAMPLE.parent / first.removeprefix(prefix)).resolve() == schema_path("config")


def test_shorthands_the_loader_accepts_are_valid() -> None:
    data: dict[str, Any] = {
        "site": {"id": "s"},
        "meters": [
            {"id": "m1", "protocol": "modbus_tcp", "host": "h", "profile": "sdm630"},
            {
                "id": "m2",
                "protocol": "modbus_rtu",
                "serial_port": "/dev/ttyUSB0",
                "profile": "em24",
                "points": {"energy": {"address": 52}, "extra": {"address": 1, "unit": "V"}},
            },
        ],
        "equipment": [
            {"id": "e1", "meters": ["m1", {"meter": "m2", "point": "energy"}], "max_power_kw": 5}
        ],
        "emission_factors": {
            "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
        },
    }
    assert config_errors(data) == []
    parse_config(data, REPO / "config")


def _example() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml_text(EXAMPLE.read_text())
    return loaded


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is ...:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("site.id", "osaka plant"),  # a space: ids are topic levels
        ("site.idd", "x"),  # unknown key
        ("site.country", "jp"),
        ("meters.0.port", 70000),
        ("meters.0.protocol", "modbus_udp"),
        ("meters.2.points.energy.adress", 3),
        ("meters.2.points.energy.address", 70000),
        ("meters.2.points.energy.unit", "V"),  # role energy needs a counter unit
        ("meters.2.points.power.unit", "kWh"),  # role power needs a power unit
        ("meters.2.points.state.states", ...),  # role state needs a state map
        ("meters.2.points.state.states", {0: "stopped"}),
        ("meters.2.points", {}),  # no profile: at least one point
        ("meters.1.points.energy.type", "float16"),
        ("meters.1.baudrate", 14400),
        ("meters.3.points.energy.node", ""),
        ("opcua_endpoints.0.url", "http://192.0.2.20"),
        ("equipment.0.meters", []),
        ("equipment.0.meters", ["m laser"]),
        ("equipment.0.max_power_kw", 0),
        ("equipment.0.overlap_split", "time"),
        ("equipment.1.state.running_above_kw", 0),
        ("mqtt.password_env", "MQTT_PASSWORD"),  # and password_file: one, not both
        ("mqtt.keepalive_s", 1),
        ("mes.max_json_depth", 1),
        ("store.retention_days", 0),
        ("emission_factors.electricity.source", ""),
        ("emission_factors.electricity.value", -1),
        ("meters", []),
    ],
)
def test_schema_rejects_what_the_agent_rejects(path: str, value: Any) -> None:
    data = _example()
    _set(data, path, value)
    assert config_errors(data), f"schema accepted {path} = {value!r}"
    with pytest.raises(ConfigError):
        parse_config(copy.deepcopy(data), EXAMPLE.parent)


def test_errors_name_the_key_path() -> None:
    data = _example()
    _set(data, "meters.0.port", 70000)
    best = jsonschema.exceptions.best_match(CONFIG.iter_errors(as_json(data)))
    assert best is not None
    assert list(best.absolute_path) == ["meters", 0, "port"], best


# -- MES events --------------------------------------------------------------------------------

EQUIPMENT = {"laser-cutter"}
NOW_NS = 1_769_814_000_250_000_000  # 2026-01-30T23:00:00.25Z
START: dict[str, Any] = {
    "event_id": "8d3c",
    "type": "start",
    "ts": "2026-01-31T08:00:00.250+09:00",
    "order_id": "LOT-0001-laser-cutter",
    "lot_id": "LOT-0001",
    "equipment_id": "laser-cutter",
    "product_id": "ENCL-400x300",
}
STOP: dict[str, Any] = {
    **{key: value for key, value in START.items() if key != "product_id"},
    "event_id": "91aa",
    "type": "stop",
    "quantity_good": 20,
    "quantity_scrap": 1,
}
LOT_COMPLETE: dict[str, Any] = {
    "event_id": "a0f2",
    "type": "lot_complete",
    "ts": "2026-01-31T10:40:00+09:00",
    "lot_id": "LOT-0001",
}


def event(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {**base, **changes}
    return {key: value for key, value in body.items() if value is not ...}


VALID_EVENTS = [
    START,
    STOP,
    LOT_COMPLETE,
    event(LOT_COMPLETE, quantity_good=19, supersedes="a0f1"),
    event(LOT_COMPLETE, order_id=None, equipment_id=None),
    event(STOP, quantity_good=19.5, quantity_scrap=0, supersedes="91a9", unit="kg"),
    event(START, type="pause", product_id=...),
    event(START, type="resume", product_id=None),
    event(START, type="cancel", product_id=..., supersedes="b7e0"),
    event(START, order_id="受注 0001", product_id="筐体-400"),  # unicode, a space inside
    event(START, ts="2026-01-31 08:00:00+09:00"),
    event(START, ts="2026-01-31t08:00:00.123456789z"),
    event(START, ts="2026-01-31T08:00:00-00:00"),
    event(START, extra_field="kept", nested={"a": [1, 2]}),
    event(START, **{f"x{i}": i for i in range(32)}),
    event(START, event_id="e" * 128, product_id="P" * 128),
]

INVALID_EVENTS = [
    event(START, event_id=...),
    event(START, type="begin"),
    event(START, type=None),
    event(START, ts="2026-01-31T08:00:00"),  # no offset
    event(START, ts="1769846400"),
    event(START, ts=1769846400),
    event(START, ts="2026-13-01T08:00:00Z"),
    event(START, ts="2026-01-31T24:00:00Z"),
    event(START, ts="2026-01-31T08:00:00+24:00"),
    event(START, ts="2026-01-31T08:00:00.1234567890Z"),
    event(START, lot_id=...),
    event(START, product_id=...),
    event(START, product_id=None),
    event(START, type="pause", order_id=...),
    event(START, type="cancel", equipment_id=None),
    event(STOP, quantity_good=...),
    event(STOP, quantity_scrap=None),
    event(STOP, quantity_good="5"),
    event(STOP, quantity_good=True),
    event(STOP, quantity_good=-1),
    event(START, unit=None),
    event(START, unit=""),
    event(START, equipment_id="laser-cutter "),
    event(START, order_id=" o-1"),
    event(START, order_id=""),
    event(START, lot_id="lot\u00001"),
    event(START, lot_id="lot\n1"),
    event(START, event_id="e\u200b1"),
    event(START, event_id="\ufeffe1"),
    event(START, equipment_id="laser\u00a0cutter"),
    event(START, product_id="P\u3000"),
    event(START, event_id="e" * 129),
    event(START, product_id="P" * 129),
    event(START, order_id=12),
    event(START, **{f"x{i}": i for i in range(44)}),
]


def parser_accepts(payload: dict[str, Any]) -> bool:
    try:
        parse_event(json.dumps(payload).encode(), EQUIPMENT, limits=MesConfig(), now_ns=NOW_NS)
    except EventRejected:
        return False
    return True


@pytest.mark.parametrize("payload", VALID_EVENTS)
def test_mes_schema_accepts_what_the_parser_accepts(payload: dict[str, Any]) -> None:
    assert parser_accepts(payload)
    errors = [error.message for error in MES.iter_errors(payload)]
    assert errors == []


@pytest.mark.parametrize("payload", INVALID_EVENTS)
def test_mes_schema_rejects_what_the_parser_rejects(payload: dict[str, Any]) -> None:
    assert not parser_accepts(payload)
    assert not MES.is_valid(payload), payload


def test_mes_schema_examples_are_the_contracts_examples() -> None:
    schema = json.loads(schema_path("mes-event").read_text())
    for example in schema["examples"]:
        assert MES.is_valid(example)
        assert parser_accepts(example)


def test_characters_refused_by_the_schema_are_refused_by_the_parser() -> None:
    """The schema is never stricter than the agent: every excluded character is one that
    str.isprintable() refuses (Python 3.11's Unicode database or later)."""
    for low, high in _NOT_PRINTABLE_RANGES:
        for code in range(low, high + 1):
            character = chr(code)
            assert identifier_problem(f"a{character}b", None) is not None, (
                f"U+{code:04X} {unicodedata.name(character, '?')}"
            )


def test_word_and_byte_order_shorthand_is_valid() -> None:
    from edge_agent.config import models

    if not hasattr(models, "ORDER_SHORTHAND"):
        pytest.skip("no order shorthand in this version")
    data = _example()
    data["meters"][2]["points"]["power"]["order"] = "CDAB"
    del data["meters"][2]["points"]["power"]["word_order"]
    data["meters"][1]["points"]["energy"]["order"] = "badc"  # over a profile point
    assert config_errors(data) == []
    parse_config(data, EXAMPLE.parent)
    data["meters"][2]["points"]["power"]["order"] = "ACBD"
    assert config_errors(data)
