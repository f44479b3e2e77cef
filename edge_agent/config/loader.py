"""Load and validate a configuration file, reporting every problem with its key path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from edge_agent.config.factor_tables import load_factor_tables
from edge_agent.config.models import (
    AgentConfig,
    EquipmentConfig,
    ModbusRtuMeter,
    ModbusTcpMeter,
    OpcUaMeter,
    PointBase,
)
from edge_agent.config.yaml_loading import load_yaml_text
from edge_agent.domain import PointRole
from edge_agent.errors import ConfigError

_DISCRIMINATOR_TAGS = {"modbus_tcp", "modbus_rtu", "opcua"}
# Union members pydantic names in locations when a field accepts several shapes.
_UNION_TAGS = {"StateSource", "DerivedState", "str", "int", "function-after[_check_id(), str]"}


def format_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (isinstance(previous, int) and item in _DISCRIMINATOR_TAGS) or item in _UNION_TAGS:
            pass  # pydantic adds the union member's tag; the user never wrote it
        else:
            parts.append(f".{item}" if parts else str(item))
        previous = item
    return "".join(parts) or "(top level)"


def format_error(error: ErrorDetails) -> str:
    path = format_path(tuple(error["loc"]))
    kind = error["type"]
    if kind == "edge_agent":
        return f"{path}: {error['msg']}"
    if kind == "extra_forbidden":
        return f"{path}: unknown key (check the spelling; see docs/configuration.md)"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return f"{path}: {error.get('input')!r} is not valid: {message[0].lower()}{message[1:]}"


def parse_config(data: Any, base_dir: Path) -> AgentConfig:
    """Validate a mapping; raises ConfigError with every problem found."""
    if not isinstance(data, dict):
        raise ConfigError(
            [f"(top level): expected a mapping of sections, got {type(data).__name__}"]
        )
    profile_dirs = [base_dir / "profiles"]
    try:
        config = AgentConfig.model_validate(
            data, context={"profile_dirs": profile_dirs, "profiles": {}}
        )
    except ValidationError as exc:
        problems = [format_error(error) for error in exc.errors()]
        raise ConfigError(sorted(set(problems), key=problems.index)) from None
    config = _resolve_relative_paths(config, base_dir)
    problems = cross_check(config)
    tables, table_problems = load_factor_tables(config)
    problems += table_problems
    if problems:
        raise ConfigError(problems)
    config.factor_tables.update(tables)
    return config


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file ({exc.strerror})"]) from exc
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_config(data, path.resolve().parent)


def _resolve_relative_paths(config: AgentConfig, base_dir: Path) -> AgentConfig:
    """Relative paths in the file are relative to the file, not to the working directory."""
    store_path = config.store.path
    if not store_path.is_absolute():
        store = config.store.model_copy(update={"path": base_dir / store_path})
        config = config.model_copy(update={"store": store})
    factors = {
        carrier: [
            f.model_copy(update={"table": base_dir / f.table})
            if f.table is not None and not f.table.is_absolute()
            else f
            for f in listed
        ]
        for carrier, listed in config.emission_factors.items()
    }
    return config.model_copy(update={"emission_factors": factors})


def cross_check(config: AgentConfig) -> list[str]:
    """Rules that span sections: unique ids, references, units against carriers."""
    problems: list[str] = []
    problems += _duplicates("meters", [meter.id for meter in config.meters])
    problems += _duplicates("equipment", [item.id for item in config.equipment])
    problems += _duplicates("opcua_endpoints", [item.id for item in config.opcua_endpoints])
    meters = {meter.id: meter for meter in config.meters}
    endpoints = {endpoint.id for endpoint in config.opcua_endpoints}
    for index, meter in enumerate(config.meters):
        if isinstance(meter, OpcUaMeter) and meter.endpoint not in endpoints:
            problems.append(
                f"meters[{index}].endpoint: {meter.endpoint!r} is not in opcua_endpoints "
                f"(known: {', '.join(sorted(endpoints)) or 'none'})"
            )
    for index, item in enumerate(config.equipment):
        problems += _check_equipment(f"equipment[{index}]", item, meters, config)
    problems += _duplicates(
        "shared_equipment",
        [item.id for item in config.shared_equipment],
    )
    equipment_ids = {item.id for item in config.equipment}
    for index, shared in enumerate(config.shared_equipment):
        path = f"shared_equipment[{index}]"
        if shared.id in equipment_ids:
            problems.append(f"{path}.id: {shared.id!r} is already an equipment id")
        for served_index, served in enumerate(shared.serves):
            if served not in equipment_ids:
                problems.append(
                    f"{path}.serves[{served_index}]: {served!r} is not a configured equipment "
                    f"(known: {', '.join(sorted(equipment_ids)) or 'none'})"
                )
        if config.balance.period_s % shared.interval_s:
            problems.append(
                f"{path}.interval_s: {shared.interval_s} does not divide balance.period_s "
                f"({config.balance.period_s}): balances must split whole intervals"
            )
        as_equipment = EquipmentConfig(
            id=shared.id, carrier=shared.carrier, meters=shared.meters,
            max_power_kw=shared.max_power_kw,
        )  # fmt: skip
        problems += _check_equipment(path, as_equipment, meters, config)
        for sub_index, ref in enumerate(shared.subtract):
            if ref.meter not in meters:
                problems.append(
                    f"{path}.subtract[{sub_index}].meter: {ref.meter!r} is not a configured meter"
                )
    seen_standards: dict[tuple[str, str | None], int] = {}
    for index, standard in enumerate(config.standards.items):
        path = f"standards.items[{index}]"
        if standard.equipment_id is not None and standard.equipment_id not in equipment_ids:
            problems.append(
                f"{path}.equipment_id: {standard.equipment_id!r} is not a configured equipment"
            )
        key = (standard.product_id, standard.equipment_id)
        if key in seen_standards:
            problems.append(
                f"{path}: product {standard.product_id!r} on "
                f"{standard.equipment_id or 'the whole lot'} already has a standard "
                f"(standards.items[{seen_standards[key]}])"
            )
        seen_standards.setdefault(key, index)
    for carrier, factors in config.emission_factors.items():
        units = config.carrier_units(carrier)
        if not factors:
            problems.append(f"emission_factors.{carrier}: an empty list (give one factor)")
        first_of_set: dict[str, int] = {}
        for index, factor in enumerate(factors):
            if factor.set in first_of_set:
                problems.append(
                    f"emission_factors.{carrier}[{index}].set: {factor.set!r} is already used "
                    f"by emission_factors.{carrier}[{first_of_set[factor.set]}] (one factor per "
                    "set: location, market)"
                )
            first_of_set.setdefault(factor.set, index)
            per = factor.unit.partition("/")[2] if factor.unit.startswith("kgCO2e/") else ""
            if not per or (units is not None and per not in units):
                expected = ", ".join(f"kgCO2e/{unit}" for unit in units or ("<unit>",))
                problems.append(
                    f"emission_factors.{carrier}[{index}].unit: {factor.unit!r} is not a "
                    f"factor unit of {carrier} (expected {expected})"
                )
    for index, meter_id in enumerate(config.balance.exclude_meters):
        if meter_id not in meters:
            problems.append(
                f"balance.exclude_meters[{index}]: {meter_id!r} is not a configured meter "
                f"(known: {', '.join(sorted(meters))})"
            )
    return problems


def _duplicates(section: str, ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for index, item in enumerate(ids):
        if item in seen:
            problems.append(
                f"{section}[{index}].id: {item!r} is already used by {section}[{seen[item]}]"
            )
        seen.setdefault(item, index)
    return problems


def _check_equipment(
    path: str,
    item: EquipmentConfig,
    meters: dict[str, ModbusTcpMeter | ModbusRtuMeter | OpcUaMeter],
    config: AgentConfig,
) -> list[str]:
    problems: list[str] = []
    if item.carrier not in config.emission_factors:
        problems.append(
            f"{path}.carrier: {item.carrier!r} has no entry in emission_factors "
            f"(known: {', '.join(sorted(config.emission_factors)) or 'none'})"
        )
    for ref_index, ref in enumerate(item.meters):
        ref_path = f"{path}.meters[{ref_index}]"
        meter = meters.get(ref.meter)
        if meter is None:
            problems.append(
                f"{ref_path}.meter: {ref.meter!r} is not a configured meter "
                f"(known: {', '.join(sorted(meters))})"
            )
            continue
        try:
            point_name = attributed_point_name(meter.points, ref.point)
        except LookupError as exc:
            problems.append(f"{ref_path}: {exc.args[0]}")
            continue
        point = meter.points[point_name]
        allowed = config.carrier_units(item.carrier)
        if point.role is PointRole.ENERGY and allowed and point.unit not in allowed:
            unit_family = "kWh, Wh, MWh" if "kWh" in allowed else ", ".join(allowed)
            if not (item.carrier == "electricity" and point.unit in ("Wh", "MWh")):
                problems.append(
                    f"{ref_path}: point {point_name!r} counts {point.unit!r} but carrier "
                    f"{item.carrier!r} is measured in {unit_family}"
                )
    state = item.state
    if state is not None:
        meter = meters.get(state.meter)
        if meter is None:
            problems.append(f"{path}.state.meter: {state.meter!r} is not a configured meter")
        elif state.point is not None and state.point not in meter.points:
            problems.append(
                f"{path}.state.point: {state.point!r} is not a point of meter {state.meter!r} "
                f"(points: {', '.join(sorted(meter.points))})"
            )
    return problems


def attributed_point_name(points: Mapping[str, PointBase], wanted: str | None) -> str:
    """The point whose readings are attributed: the named one, else energy, else power."""
    if wanted is not None:
        if wanted not in points:
            raise LookupError(
                f"point {wanted!r} is not defined (points: {', '.join(sorted(points))})"
            )
        if points[wanted].role not in (PointRole.ENERGY, PointRole.POWER):
            raise LookupError(
                f"point {wanted!r} has role {points[wanted].role.value!r}, not energy or power"
            )
        return wanted
    for role in (PointRole.ENERGY, PointRole.POWER):
        names = [name for name, point in points.items() if point.role is role]
        if names:
            return sorted(names)[0]
    raise LookupError("the meter has no point with role 'energy' or 'power' to attribute")


def shaping_power_point(points: Mapping[str, PointBase]) -> str | None:
    """The meter's total active power, read with its counter to place power steps between
    counter readings: its only power point, or the one named ``power``; None if ambiguous
    (per-phase powers alone would mislead)."""
    names = sorted(name for name, point in points.items() if point.role is PointRole.POWER)
    if len(names) == 1:
        return names[0]
    return "power" if "power" in names else None


class SecretSource(Protocol):
    @property
    def password_env(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...


def read_secret(ref: SecretSource, what: str) -> str | None:
    """Resolve a password from its environment variable or file, at start-up."""
    if ref.password_env:
        value = os.environ.get(ref.password_env)
        if value is None:
            raise ConfigError(
                [f"{what}.password_env: environment variable {ref.password_env!r} is not set"]
            )
        return value
    if ref.password_file:
        try:
            return ref.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                [f"{what}.password_file: cannot read {ref.password_file} ({exc.strerror})"]
            ) from exc
    return None
