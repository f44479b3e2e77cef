"""Generate the JSON Schemas derived from the code: ``python -m edge_agent.schemas.generate``.

- ``config.schema.json``: the configuration file, from the pydantic models
  (:class:`edge_agent.config.models.AgentConfig`), plus what the loader accepts before
  validation — a Modbus meter's ``profile:`` (its ``points`` then only override profile points,
  field by field) and an equipment's ``meters:`` written as plain meter ids — and the rules the
  models check in code that a schema can state (id pattern, register address range, the units a
  point's role needs).
- ``mes-event.schema.json``: one MES order event, from :mod:`edge_agent.mes.events` and the
  default bounds of :class:`edge_agent.config.models.MesConfig`.

Both are for editors and integrators; the agent itself validates with its own code (``edge-agent
check``), which also checks what no schema can (references between sections, a profile's
points, topic templates, timestamps within the accepted window). ``--check`` exits 1 when a
shipped file differs from what this module generates (the test suite checks the same).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from edge_agent.config import models
from edge_agent.config.models import (
    COUNTER_UNITS,
    ID_PATTERN,
    POWER_UNITS_TO_KW,
    AgentConfig,
    MesConfig,
)
from edge_agent.config.profiles import PACKAGED_PROFILE_DIR, available_profiles
from edge_agent.mes.events import ID_FIELDS, KNOWN_FIELDS, TEXT_FIELDS, EventType
from edge_agent.schemas import SCHEMA_DIR

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://github.com/edge-agent/edge-agent/schemas/"

# What the models' after-validators check, by validator name, as JSON Schema keywords.
_AFTER_VALIDATORS: dict[str, dict[str, Any]] = {
    "_check_id": {"pattern": ID_PATTERN.pattern},
    "_check_address": {"minimum": 0, "maximum": 65535},
    "_check_positive": {"exclusiveMinimum": 0},
}

# Characters Python's str.isprintable() refuses that an exact MES identifier may not contain:
# C0/C1 controls, every space but the ASCII one, line and paragraph separators, format
# (invisible) characters and private use. Basic Multilingual Plane only, as \uXXXX ranges, so
# that both Python's re and ECMA-262 regular expressions (editors) read the pattern alike.
_NOT_PRINTABLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F),
    (0x007F, 0x00A0),
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x08E2, 0x08E2),
    (0x1680, 0x1680),
    (0x180E, 0x180E),
    (0x2000, 0x200F),
    (0x2028, 0x202F),
    (0x205F, 0x206F),
    (0x3000, 0x3000),
    (0xE000, 0xF8FF),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
)


class _ConfigSchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, plus the checks the models make in after-validators."""

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        name = getattr(schema["function"]["function"], "__name__", "")
        return {**inner, **_AFTER_VALIDATORS.get(name, {})}


def config_schema() -> dict[str, Any]:
    """The configuration file's schema (what ``edge-agent check`` accepts, as far as a schema
    can say)."""
    generated = AgentConfig.model_json_schema(schema_generator=_ConfigSchemaGenerator)
    _tidy(generated)
    defs: dict[str, Any] = generated["$defs"]
    for name in ("ModbusPoint", "OpcUaPoint"):
        defs[name]["allOf"] = _role_rules(complete=True)
    # ``order: CDAB``, read by a before-validator of ModbusPoint (any letter case).
    shorthands: dict[str, Any] = getattr(models, "ORDER_SHORTHAND", {})
    if shorthands:
        either_case = "|".join(
            "".join(f"[{c.upper()}{c.lower()}]" for c in name) for name in shorthands
        )
        defs["ModbusPoint"]["properties"]["order"] = {
            "type": "string",
            "title": "Order",
            "description": (
                "Word and byte order in the names other tools use, short for word_order and "
                "byte_order: "
                + ", ".join(f"{name} = {word}/{byte}" for name, (word, byte) in shorthands.items())
            ),
            "pattern": f"^(?:{either_case})$",
            "examples": list(shorthands),
        }
    override = copy.deepcopy(defs["ModbusPoint"])
    del override["required"]
    override["title"] = "ModbusPointOverride"
    override["description"] = (
        "A point of a meter with a 'profile': the fields given override the profile point's "
        "(e.g. {address: 342} moves only the address). A point the profile does not have must "
        "be complete (at least 'address')."
    )
    override["allOf"] = _role_rules(complete=False)
    defs["ModbusPointOverride"] = override
    profiles = available_profiles([PACKAGED_PROFILE_DIR])
    for name in ("ModbusTcpMeter", "ModbusRtuMeter"):
        meter = defs[name]
        meter["properties"]["profile"] = {
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}],
            "default": None,
            "title": "Profile",
            "description": (
                "A register map shipped with the agent ("
                + ", ".join(profiles)
                + ") or from a profiles/ folder beside the configuration file."
            ),
            "examples": profiles,
        }
        meter["properties"]["points"] = {
            "type": "object",
            "title": "Points",
            "description": "Points by name; merged over the profile's points, field by field.",
            "propertyNames": {"pattern": ID_PATTERN.pattern},
            "additionalProperties": {"$ref": "#/$defs/ModbusPointOverride"},
        }
        meter["if"] = {
            "required": ["profile"],
            "properties": {"profile": {"type": "string"}},
        }
        meter["else"] = {
            "required": ["points"],
            "properties": {
                "points": {
                    "minProperties": 1,
                    "additionalProperties": {"$ref": "#/$defs/ModbusPoint"},
                }
            },
        }
    meter_ref = {
        "anyOf": [
            {
                "type": "string",
                "pattern": ID_PATTERN.pattern,
                "description": "A meter id: short for {meter: <id>}.",
            },
            {"$ref": "#/$defs/MeterRef"},
        ]
    }
    defs["EquipmentConfig"]["properties"]["meters"]["items"] = meter_ref
    for key in ("meters", "subtract"):
        defs["SharedEquipmentConfig"]["properties"][key]["items"] = meter_ref
    # One factor, or a list with one per set (a before-validator makes a list of one).
    factors = generated["properties"]["emission_factors"]
    listed = factors["additionalProperties"]
    factors["additionalProperties"] = {"anyOf": [listed["items"], listed]}
    named = {
        "type": "string",
        "enum": list(models.REFERENCE_CONDITIONS),
        "description": "Named conditions: "
        + ", ".join(
            f"{name} = {t:g} °C, {p:g} kPa" for name, (t, p) in models.REFERENCE_CONDITIONS.items()
        ),
    }
    for owner, key in (
        ("EmissionFactor", "reference_conditions"),
        ("PointBase", "metering_conditions"),
        ("ModbusPoint", "metering_conditions"),
        ("OpcUaPoint", "metering_conditions"),
    ):
        prop = defs.get(owner, {}).get("properties", {}).get(key)
        if prop is not None:
            prop["anyOf"] = [named, *prop["anyOf"]]
    for name in ("MqttConfig", "OpcUaEndpoint"):
        defs[name]["not"] = {
            "description": "password_env and password_file: give one, not both",
            "required": ["password_env", "password_file"],
            "properties": {
                "password_env": {"type": "string", "minLength": 1},
                "password_file": {"type": "string"},
            },
        }
    return {
        "$schema": DRAFT,
        "$id": BASE_ID + "config.schema.json",
        "title": "edge-agent configuration",
        "description": (
            "The edge-agent configuration file (docs/configuration.md). Generated from the "
            "agent's models by `python -m edge_agent.schemas.generate`; `edge-agent check -c "
            "FILE` also checks what a schema cannot (references between sections, profile "
            "points, topic templates)."
        ),
        **{key: value for key, value in generated.items() if key not in ("title", "description")},
    }


def _role_rules(*, complete: bool) -> list[dict[str, Any]]:
    """The units a point's role needs; a complete point also needs its unit and state map
    (an override may leave them to its profile)."""

    def role_is(role: str) -> dict[str, Any]:
        return {"required": ["role"], "properties": {"role": {"const": role}}}

    def then(required: str, extra: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"properties": {required: extra}}
        if complete:
            out["required"] = [required]
        return out

    return [
        {"if": role_is("energy"), "then": then("unit", {"enum": list(COUNTER_UNITS)})},
        {"if": role_is("power"), "then": then("unit", {"enum": list(POWER_UNITS_TO_KW)})},
        {"if": role_is("state"), "then": then("states", {"type": "object", "minProperties": 1})},
    ]


def _tidy(node: Any) -> None:
    """Rewrite what pydantic writes that validators read differently from the models.

    ``format: path`` (file paths) is known to no validator or editor: dropped. A mapping whose
    keys are ids comes as ``patternProperties``, which lets a key that does not match through
    unchecked: ``propertyNames`` rejects it. A state map's integer keys are strings in JSON.
    """
    if isinstance(node, dict):
        if node.get("format") == "path":
            del node["format"]
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1 and "additionalProperties" not in node:
            ((pattern, value),) = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {"pattern": pattern}
            node["additionalProperties"] = value
        if node.get("additionalProperties") == {"$ref": "#/$defs/MachineState"}:
            node["propertyNames"] = {"pattern": r"^-?[0-9]+$"}
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for value in node:
            _tidy(value)


def identifier_pattern() -> str:
    """Non-empty, no leading or trailing whitespace, no control or invisible character (a
    space inside is allowed): :func:`edge_agent.mes.events.identifier_problem` without the
    length, which ``maxLength`` bounds."""
    ranges = "".join(
        f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}"
        for low, high in _NOT_PRINTABLE_RANGES
    )
    edge = f"[^\\u0020{ranges}]"  # neither first nor last: no ASCII space either
    inner = f"[^{ranges}]"
    return f"^{edge}(?:{inner}*{edge})?$"


def mes_event_schema() -> dict[str, Any]:
    """One MES order event (docs/contracts.md), with the default bounds of section ``mes``."""
    limits = MesConfig()
    pattern = identifier_pattern()

    def exact(what: str, bound: str, max_length: int) -> dict[str, Any]:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": max_length,
            "pattern": pattern,
            "description": (
                f"{what}, matched exactly: 1 to {max_length} characters (mes.{bound}), no "
                "leading or trailing whitespace, no control or invisible character"
            ),
        }

    def nullable(ref: str) -> dict[str, Any]:
        return {"anyOf": [{"$ref": ref}, {"type": "null"}]}

    def when_type(value: str) -> dict[str, Any]:
        return {"required": ["type"], "properties": {"type": {"const": value}}}

    types = list(get_args(EventType))
    properties: dict[str, Any] = {
        "event_id": {"$ref": "#/$defs/id"},
        "type": {"enum": types},
        "ts": {"$ref": "#/$defs/timestamp"},
        "order_id": nullable("#/$defs/id"),
        "lot_id": {"$ref": "#/$defs/id"},
        "equipment_id": nullable("#/$defs/id"),
        "product_id": nullable("#/$defs/text"),
        "quantity_good": nullable("#/$defs/quantity"),
        "quantity_scrap": nullable("#/$defs/quantity"),
        "unit": {"$ref": "#/$defs/text", "default": "piece"},
        "supersedes": nullable("#/$defs/id"),
    }
    described = set(properties)
    if described != set(KNOWN_FIELDS) or not set(ID_FIELDS + TEXT_FIELDS) <= described:
        raise RuntimeError(f"MES event fields changed: {sorted(KNOWN_FIELDS)}")
    return {
        "$schema": DRAFT,
        "$id": BASE_ID + "mes-event.schema.json",
        "title": "edge-agent MES order event",
        "description": (
            "One MES order event, a JSON object published on mqtt.mes_topic (docs/contracts.md). "
            "Bounds are the defaults of the agent's section 'mes'. Fields the contract does not "
            f"define are allowed (at most {limits.max_extra_fields} of them; maxProperties is the "
            "bound that implies). Not expressible here, checked by the agent: payload size, JSON "
            "nesting depth, a field written twice, 'supersedes' naming the event itself, a 'ts' "
            "that is not a real date or lies outside the accepted window, equipment_id not "
            "configured, and characters Python's str.isprintable() refuses outside the Basic "
            "Multilingual Plane or unassigned in Unicode."
        ),
        "type": "object",
        "required": ["event_id", "type", "ts", "lot_id"],
        "properties": properties,
        "maxProperties": len(KNOWN_FIELDS) + limits.max_extra_fields,
        "allOf": [
            {
                "description": "every type but lot_complete names its order and equipment",
                "if": when_type("lot_complete"),
                "else": {
                    "required": ["order_id", "equipment_id"],
                    "properties": {
                        "order_id": {"$ref": "#/$defs/id"},
                        "equipment_id": {"$ref": "#/$defs/id"},
                    },
                },
            },
            {
                "description": "a start names its product",
                "if": when_type("start"),
                "then": {
                    "required": ["product_id"],
                    "properties": {"product_id": {"$ref": "#/$defs/text"}},
                },
            },
            {
                "description": "a stop carries both quantities",
                "if": when_type("stop"),
                "then": {
                    "required": ["quantity_good", "quantity_scrap"],
                    "properties": {
                        "quantity_good": {"$ref": "#/$defs/quantity"},
                        "quantity_scrap": {"$ref": "#/$defs/quantity"},
                    },
                },
            },
        ],
        "$defs": {
            "id": exact("An id", "max_id_length", limits.max_id_length),
            "text": exact("A text", "max_text_length", limits.max_text_length),
            "timestamp": {
                "type": "string",
                "description": (
                    "RFC 3339 date-time with a UTC offset or Z, e.g. 2026-01-31T08:00:00.250+09:00"
                ),
                "pattern": (
                    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:"
                    r"[0-5]\d(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
                ),
            },
            "quantity": {
                "type": "number",
                "minimum": 0,
                "description": "A JSON number >= 0 (not a string, not true/false)",
            },
        },
        "examples": [
            {
                "event_id": "8d3c",
                "type": "start",
                "ts": "2026-01-31T08:00:00.250+09:00",
                "order_id": "LOT-0001-laser-cutter",
                "lot_id": "LOT-0001",
                "equipment_id": "laser-cutter",
                "product_id": "ENCL-400x300",
            },
            {
                "event_id": "91aa",
                "type": "stop",
                "ts": "2026-01-31T08:12:31.900+09:00",
                "order_id": "LOT-0001-laser-cutter",
                "lot_id": "LOT-0001",
                "equipment_id": "laser-cutter",
                "quantity_good": 20,
                "quantity_scrap": 1,
            },
            {
                "event_id": "a0f2",
                "type": "lot_complete",
                "ts": "2026-01-31T10:40:00+09:00",
                "lot_id": "LOT-0001",
                "quantity_good": 19,
            },
        ],
    }


GENERATED: dict[str, Callable[[], dict[str, Any]]] = {
    "config.schema.json": config_schema,
    "mes-event.schema.json": mes_event_schema,
}


def render(schema: dict[str, Any]) -> str:
    """The text of a schema file: stable across runs (2-space indent, ASCII, final newline)."""
    return json.dumps(schema, indent=2, ensure_ascii=True) + "\n"


def stale_files(folder: Path = SCHEMA_DIR) -> list[str]:
    """The generated files in ``folder`` that differ from what the code generates now."""
    stale = []
    for name, build in GENERATED.items():
        path = folder / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != render(build()):
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent.schemas.generate",
        description="Write the JSON Schemas generated from the code (config, MES event).",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=SCHEMA_DIR, help=f"default: {SCHEMA_DIR}"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    folder: Path = args.output_dir
    if args.check:
        stale = stale_files(folder)
        for name in stale:
            print(f"{folder / name} is out of date: run python -m edge_agent.schemas.generate")
        return 1 if stale else 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in GENERATED.items():
        path = folder / name
        path.write_text(render(build()), encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
