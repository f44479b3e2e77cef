"""Typed views of published order and lot records (docs/contracts.md), for the footprints.

The builders take records as they were published (JSON objects) so that the agent's store and
the plant hub, which receives them over MQTT, feed them alike. Fields added after schema 1.0 —
``factors``, ``co2e_by_set``, ``co2e_set``, ``energy_direct_kwh``, ``energy_shared_kwh`` — are
used when present; without them the factors come from ``carriers[].emission_factor`` (no
geography, no reference year: the data-quality ratings then say "unknown").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from edge_agent.errors import FootprintError
from edge_agent.footprint.decimals import exact_decimal

__all__ = ["FactorUse", "LotRecord", "OrderRef", "StepRecord", "parse_lot", "steps_of_lot"]

FACTOR_SETS = ("location", "market")


@dataclass(frozen=True, slots=True)
class FactorUse:
    """One emission factor applied to part of a record's activity (one validity interval)."""

    carrier: str
    set: str  # GHG Protocol Scope 2 method: "location" or "market"
    value: Decimal
    unit: str
    source: str
    version: str
    primary: bool
    geography: str | None  # ISO 3166 country or subdivision code, "GLOBAL", or unknown
    reference_year: int | None
    valid_from: datetime | None
    valid_to: datetime | None
    activity: Decimal
    activity_unit: str
    co2e_kg: Decimal


@dataclass(frozen=True, slots=True)
class OrderRef:
    """A lot record's line for one of its steps (``orders[]``)."""

    order_id: str
    equipment_id: str
    record_id: str
    revision: int
    energy_kwh: Decimal
    co2e_kg: Decimal


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One process step of a lot: its order record, or only the lot's line for it when the
    order record is not available (``record_available`` false: no factors, no quality)."""

    order_id: str
    equipment_id: str
    record_id: str
    revision: int
    record_available: bool
    start: datetime | None
    end: datetime | None
    energy_kwh: Decimal
    energy_direct_kwh: Decimal | None
    energy_shared_kwh: Decimal | None
    co2e_kg: Decimal
    co2e_by_set: Mapping[str, Decimal]
    measured_share: Decimal | None
    primary_data_share: Decimal | None
    coverage: Decimal | None
    factors: tuple[FactorUse, ...]  # those of the reported set (the record's co2e_kg)
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LotRecord:
    record_id: str
    revision: int
    site_id: str
    lot_id: str
    product_id: str | None
    start: datetime | None
    end: datetime | None
    quantity_good: Decimal | None
    unit: str
    energy_kwh: Decimal
    co2e_kg: Decimal
    co2e_set: str | None
    co2e_by_set: Mapping[str, Decimal]
    measured_share: Decimal
    primary_data_share: Decimal
    coverage: Decimal
    incomplete: bool
    open_steps: int
    orders: tuple[OrderRef, ...]
    factors: tuple[FactorUse, ...]  # the lot's own list (reported set), for steps without one
    flags: tuple[str, ...]


class _Fields:
    """Reads one record's fields, naming the record in every error."""

    def __init__(self, payload: Mapping[str, Any], what: str) -> None:
        if not isinstance(payload, Mapping):
            raise FootprintError(f"{what}: not a JSON object")
        self.payload = payload
        self.what = what

    def problem(self, field: str, expected: str) -> FootprintError:
        value = self.payload.get(field, "<missing>")
        return FootprintError(f"{self.what}: {field} {value!r} is not {expected}")

    def text(self, field: str) -> str:
        value = self.payload.get(field)
        if not isinstance(value, str) or not value:
            raise self.problem(field, "a non-empty string")
        return value

    def optional_text(self, field: str) -> str | None:
        value = self.payload.get(field)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.problem(field, "a string or null")
        return value

    def integer(self, field: str) -> int:
        value = self.payload.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.problem(field, "an integer")
        return value

    def number(self, field: str) -> Decimal:
        value = self.payload.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.problem(field, "a number")
        try:
            return exact_decimal(value)
        except ValueError:
            raise self.problem(field, "a finite number") from None

    def optional_number(self, field: str) -> Decimal | None:
        return None if self.payload.get(field) is None else self.number(field)

    def time(self, field: str) -> datetime | None:
        value = self.optional_text(field)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.problem(field, "an RFC 3339 timestamp") from None
        if moment.tzinfo is None:
            raise self.problem(field, "a timestamp with a UTC offset")
        return moment.astimezone(UTC)

    def flags(self) -> tuple[str, ...]:
        codes: list[str] = []
        for flag in self.payload.get("flags") or []:
            code = flag.get("code") if isinstance(flag, Mapping) else flag
            if isinstance(code, str) and code:
                codes.append(code)
        return tuple(codes)

    def co2e_by_set(self) -> dict[str, Decimal]:
        by_set = self.payload.get("co2e_by_set")
        if by_set is None:
            return {}
        if not isinstance(by_set, Mapping):
            raise self.problem("co2e_by_set", "an object of set -> kg CO2e")
        return {
            str(name): _Fields(by_set, f"{self.what} co2e_by_set").number(str(name))
            for name in by_set
        }


def _factor_entry(entry: Any, what: str, default_set: str) -> tuple[FactorUse, bool | None]:
    """A ``factors[]`` entry and its ``reported`` mark (None when the record has none)."""
    fields = _Fields(entry, what)
    factor_set = fields.optional_text("set") or default_set
    if factor_set not in FACTOR_SETS:
        raise fields.problem("set", "location or market")
    primary = entry.get("primary")
    if not isinstance(primary, bool):
        raise fields.problem("primary", "true or false")
    reference_year = entry.get("reference_year")
    if reference_year is not None and (
        isinstance(reference_year, bool) or not isinstance(reference_year, int)
    ):
        raise fields.problem("reference_year", "a year or null")
    reported = entry.get("reported")
    use = FactorUse(
        carrier=fields.text("carrier"),
        set=factor_set,
        value=fields.number("value"),
        unit=fields.text("unit"),
        source=fields.text("source"),
        version=fields.text("version"),
        primary=primary,
        geography=fields.optional_text("geography") or None,
        reference_year=reference_year,
        valid_from=fields.time("valid_from"),
        valid_to=fields.time("valid_to"),
        activity=fields.number("activity"),
        activity_unit=fields.optional_text("activity_unit") or "",
        co2e_kg=fields.number("co2e_kg"),
    )
    return use, reported if isinstance(reported, bool) else None


def _carrier_factors(fields: _Fields, default_set: str) -> list[FactorUse]:
    """Factors of a record without ``factors[]``: one per carrier, from ``carriers[]``."""
    uses: list[FactorUse] = []
    for index, carrier in enumerate(fields.payload.get("carriers") or []):
        line = _Fields(carrier, f"{fields.what} carriers[{index}]")
        factor = carrier.get("emission_factor")
        factor_fields = _Fields(factor, f"{line.what}.emission_factor")
        primary = factor.get("primary")
        if not isinstance(primary, bool):
            raise factor_fields.problem("primary", "true or false")
        uses.append(
            FactorUse(
                carrier=line.text("carrier"),
                set=line.optional_text("set") or default_set,
                value=factor_fields.number("value"),
                unit=factor_fields.text("unit"),
                source=factor_fields.text("source"),
                version=factor_fields.text("version"),
                primary=primary,
                geography=None,
                reference_year=None,
                valid_from=None,
                valid_to=None,
                activity=line.number("quantity"),
                activity_unit=line.optional_text("unit") or "",
                co2e_kg=line.number("co2e_kg"),
            )
        )
    return uses


def _reported_factors(fields: _Fields) -> tuple[FactorUse, ...]:
    """The factors behind the record's ``co2e_kg``.

    ``factors[]`` lists every set side by side (location and market); the reported ones are
    those marked ``reported``, else those of each carrier's ``carriers[].set``, else of the
    record's ``co2e_set``; a record with one set only needs none of these marks.
    """
    co2e_set = fields.optional_text("co2e_set")
    default_set = co2e_set if co2e_set in FACTOR_SETS else "location"
    entries = fields.payload.get("factors")
    if not entries:  # schema 1.0, or a record that lists none: its carriers' factors
        return tuple(_carrier_factors(fields, default_set))
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise fields.problem("factors", "a list")
    marked = [
        _factor_entry(entry, f"{fields.what} factors[{index}]", default_set)
        for index, entry in enumerate(entries)
    ]
    if all(reported is not None for _, reported in marked):
        return tuple(use for use, reported in marked if reported)
    uses = [use for use, _ in marked]
    carrier_sets = {
        carrier.get("carrier"): carrier.get("set")
        for carrier in fields.payload.get("carriers") or []
        if isinstance(carrier, Mapping) and carrier.get("set") in FACTOR_SETS
    }
    if carrier_sets:
        return tuple(use for use in uses if carrier_sets.get(use.carrier, use.set) == use.set)
    if co2e_set in FACTOR_SETS:
        return tuple(use for use in uses if use.set == co2e_set)
    sets = {use.set for use in uses}
    if len(sets) <= 1:
        return tuple(uses)
    # Both sets and no mark at all: the set whose CO2e adds up to the record's co2e_kg.
    total = fields.number("co2e_kg")
    closest = min(
        sorted(sets), key=lambda name: abs(sum(u.co2e_kg for u in uses if u.set == name) - total)
    )
    return tuple(use for use in uses if use.set == closest)


def parse_lot(payload: Mapping[str, Any]) -> LotRecord:
    """A published lot record (kind ``lot``) as typed values; FootprintError names what is
    wrong with it."""
    what = f"lot record {payload.get('lot_id', '?')!s}" if isinstance(payload, Mapping) else "?"
    fields = _Fields(payload, what)
    if payload.get("kind") != "lot":
        raise fields.problem("kind", "'lot'")
    orders: list[OrderRef] = []
    for index, line in enumerate(payload.get("orders") or []):
        ref = _Fields(line, f"{what} orders[{index}]")
        orders.append(
            OrderRef(
                order_id=ref.text("order_id"),
                equipment_id=ref.text("equipment_id"),
                record_id=ref.text("record_id"),
                revision=ref.integer("revision"),
                energy_kwh=ref.number("energy_kwh"),
                co2e_kg=ref.number("co2e_kg"),
            )
        )
    incomplete = payload.get("incomplete", False)
    return LotRecord(
        record_id=fields.text("record_id"),
        revision=fields.integer("revision"),
        site_id=fields.text("site_id"),
        lot_id=fields.text("lot_id"),
        product_id=fields.optional_text("product_id") or None,
        start=fields.time("start"),
        end=fields.time("end"),
        quantity_good=fields.optional_number("quantity_good"),
        unit=fields.optional_text("unit") or "piece",
        energy_kwh=fields.number("energy_kwh"),
        co2e_kg=fields.number("co2e_kg"),
        co2e_set=fields.optional_text("co2e_set"),
        co2e_by_set=fields.co2e_by_set(),
        measured_share=fields.number("measured_share"),
        primary_data_share=fields.number("primary_data_share"),
        coverage=fields.number("coverage"),
        incomplete=bool(incomplete),
        open_steps=0 if payload.get("open_steps") is None else fields.integer("open_steps"),
        orders=tuple(orders),
        factors=_reported_factors(fields),
        flags=fields.flags(),
    )


def _step_from_order(ref: OrderRef, payload: Mapping[str, Any], lot_id: str) -> StepRecord:
    fields = _Fields(payload, f"order record {ref.order_id} of lot {lot_id}")
    return StepRecord(
        order_id=ref.order_id,
        equipment_id=fields.optional_text("equipment_id") or ref.equipment_id,
        record_id=ref.record_id,
        revision=fields.integer("revision"),
        record_available=True,
        start=fields.time("start"),
        end=fields.time("end"),
        energy_kwh=fields.number("energy_kwh"),
        energy_direct_kwh=fields.optional_number("energy_direct_kwh"),
        energy_shared_kwh=fields.optional_number("energy_shared_kwh"),
        co2e_kg=fields.number("co2e_kg"),
        co2e_by_set=fields.co2e_by_set(),
        measured_share=fields.number("measured_share"),
        primary_data_share=fields.number("primary_data_share"),
        coverage=fields.number("coverage"),
        factors=_reported_factors(fields),
        flags=fields.flags(),
    )


def _step_from_line(ref: OrderRef) -> StepRecord:
    return StepRecord(
        order_id=ref.order_id,
        equipment_id=ref.equipment_id,
        record_id=ref.record_id,
        revision=ref.revision,
        record_available=False,
        start=None,
        end=None,
        energy_kwh=ref.energy_kwh,
        energy_direct_kwh=None,
        energy_shared_kwh=None,
        co2e_kg=ref.co2e_kg,
        co2e_by_set={},
        measured_share=None,
        primary_data_share=None,
        coverage=None,
        factors=(),
        flags=(),
    )


def steps_of_lot(
    lot: LotRecord, order_records: Sequence[Mapping[str, Any]]
) -> tuple[StepRecord, ...]:
    """The lot's steps in the order of its ``orders[]``, each from the revision of its order
    record that the lot summed (else the highest revision given), or from the lot's own line
    when no record of the order is given."""
    by_record: dict[str, list[Mapping[str, Any]]] = {}
    for payload in order_records:
        if isinstance(payload, Mapping) and isinstance(payload.get("record_id"), str):
            by_record.setdefault(payload["record_id"], []).append(payload)
    steps: list[StepRecord] = []
    for ref in lot.orders:
        candidates = by_record.get(ref.record_id, [])
        named = [p for p in candidates if p.get("revision") == ref.revision]
        if named:
            steps.append(_step_from_order(ref, named[0], lot.lot_id))
        elif candidates:
            newest = max(candidates, key=lambda p: int(p.get("revision") or 0))
            steps.append(_step_from_order(ref, newest, lot.lot_id))
        else:
            steps.append(_step_from_line(ref))
    return tuple(steps)
