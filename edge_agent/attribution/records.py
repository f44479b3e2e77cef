"""Order and lot records: the contract consumers code against (DESIGN §6), built purely.

Identity and numbers are kept apart: ``record_id`` is derived from site, kind, lot, order and
equipment only, so a re-send or a recomputation keeps the id (consumers de-duplicate on it) and a
correction carries a higher ``revision``.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.attribution.model import (
    ELECTRICITY,
    Factor,
    FactorUse,
    Flag,
    MeterAllocation,
    Reading,
    StateShare,
)
from edge_agent.attribution.standards import Standard, standard_json
from edge_agent.domain import iso_from_ns

__all__ = [
    "SCHEMA_VERSION",
    "Factor",
    "OrderFacts",
    "Record",
    "build_lot_record",
    "build_order_record",
    "co2e_kg",
    "record_id",
]

SCHEMA_VERSION = "1.1"
_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-4b8e-9a51-2f0d6c1e8b10")  # edge-agent record ids


def record_id(
    site_id: str, kind: str, lot_id: str, order_id: str | None, equipment_id: str | None
) -> str:
    """UUID v5 of the record's identity only — never of its numbers."""
    identity = "\x1f".join((site_id, kind, lot_id, order_id or "", equipment_id or ""))
    return str(uuid.uuid5(_NAMESPACE, identity))


def co2e_kg(activity: float, factor: Factor) -> float:
    """Activity in the carrier unit × kg CO2e per carrier unit."""
    return activity * factor.value


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What the MES and the configuration say about one order."""

    site_id: str
    line_id: str
    lot_id: str
    order_id: str
    equipment_id: str
    product_id: str | None
    start_ns: int
    end_ns: int
    quantity_good: float | None
    quantity_scrap: float | None
    unit: str


@dataclass(frozen=True, slots=True)
class Record:
    """A built record; ``payload`` is the JSON-ready mapping in contract order."""

    record_id: str
    revision: int
    kind: str
    energy_kwh: float
    co2e_kg: float
    payload: Mapping[str, Any]

    def to_json_dict(self) -> dict[str, Any]:
        """A fresh JSON-ready dict (stable key order); changing it leaves the record intact."""
        return copy.deepcopy(dict(self.payload))

    def to_json(self) -> str:
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False)


def _iso(ts_ns: int) -> str:
    return iso_from_ns(ts_ns)


def _round(value: float) -> float:
    # Twelve significant digits: far below any meter's resolution, stable across platforms.
    return float(f"{value:.12g}")


def _share(part: float, whole: float) -> float:
    return min(1.0, max(0.0, part / whole))


def _per_unit(value: float, quantity: float | None) -> float | None:
    return _round(value / quantity) if quantity else None


def _reading(reading: Reading | None) -> dict[str, Any] | None:
    if reading is None:
        return None
    return {"ts": _iso(reading.t_ns), "value": _round(reading.value)}


def _flag(flag: Flag) -> dict[str, Any]:
    out: dict[str, Any] = {"code": flag.code, "detail": flag.detail}
    if flag.t_ns is not None:
        out["ts"] = _iso(flag.t_ns)
    return out


def _unique(flags: Sequence[Flag]) -> list[Flag]:
    return list(dict.fromkeys(flags))


def _states(parts: Sequence[Mapping[str, StateShare]]) -> dict[str, dict[str, float]]:
    merged: dict[str, tuple[list[float], list[float]]] = {}
    for part in parts:
        for state, share in part.items():
            energies, seconds = merged.setdefault(state, ([], []))
            energies.append(share.energy)
            seconds.append(share.seconds)
    # Seconds of one order in a state are the same on every meter: take them once (max).
    return {
        state: {"energy_kwh": _round(math.fsum(energies)), "seconds": _round(max(seconds))}
        for state, (energies, seconds) in sorted(merged.items())
    }


def _factor_json(factor: Factor) -> dict[str, Any]:
    return {
        "value": factor.value,
        "unit": factor.unit,
        "source": factor.source,
        "version": factor.version,
        "primary": factor.primary,
    }


def _use_json(carrier: str, unit: str, use: FactorUse, reported: bool) -> dict[str, Any]:
    factor = use.factor
    return {
        "carrier": carrier,
        "set": factor.set,
        "reported": reported,
        "value": factor.value,
        "unit": factor.unit,
        "source": factor.source,
        "version": factor.version,
        "primary": factor.primary,
        "geography": factor.geography,
        "reference_year": factor.reference_year,
        "valid_from": _iso(factor.valid_from_ns) if factor.valid_from_ns is not None else None,
        "valid_to": _iso(factor.valid_to_ns) if factor.valid_to_ns is not None else None,
        "activity": _round(use.activity),
        "activity_unit": unit,
        "conversion": _round(factor.conversion),
        "co2e_kg": _round(_use_co2e(use)),
    }


def _use_co2e(use: FactorUse) -> float:
    return use.activity * use.factor.conversion * use.factor.value


def reported_set(uses: Mapping[str, Sequence[FactorUse]], report_set: str) -> str:
    """The set whose CO2e is the record's: ``auto`` takes market where there is one."""
    if report_set in uses:
        return report_set
    if report_set == "auto" and "market" in uses:
        return "market"
    return "location" if "location" in uses else next(iter(uses))


@dataclass(frozen=True, slots=True)
class _CarrierTotal:
    carrier: str
    unit: str
    quantity: float
    measured: float
    uncertainty: float  # bound, in ``unit``: the meters' bounds added (errors may align)
    uses: Mapping[str, Sequence[FactorUse]]  # set -> the factors applied, over time
    reported: str  # the set whose CO2e is reported

    @property
    def factor(self) -> Factor:
        """The reported set's factor (the first, when a table changed during the order)."""
        return self.uses[self.reported][0].factor

    @property
    def co2e(self) -> float:
        return self.co2e_of(self.reported)

    def co2e_of(self, name: str) -> float:
        return math.fsum(_use_co2e(use) for use in self.uses[name])

    @property
    def primary_co2e(self) -> float:
        """CO2e with measured activity and a primary factor (PACT primary data)."""
        return math.fsum(
            use.measured * use.factor.conversion * use.factor.value
            for use in self.uses[self.reported]
            if use.factor.primary
        )

    @property
    def co2e_uncertainty(self) -> float:
        return math.fsum(
            use.uncertainty * use.factor.conversion * use.factor.value
            for use in self.uses[self.reported]
        )

    @property
    def measured_co2e(self) -> float:
        return math.fsum(
            use.measured * use.factor.conversion * use.factor.value
            for use in self.uses[self.reported]
        )


def _carrier_totals(
    order_id: str,
    allocations: Sequence[MeterAllocation],
    factors: Mapping[str, Factor],
    default_carrier: str,
    factor_uses: Mapping[str, Mapping[str, Sequence[FactorUse]]],
    report_set: str,
) -> list[_CarrierTotal]:
    grouped: dict[str, list[MeterAllocation]] = {}
    for alloc in allocations:
        grouped.setdefault(alloc.carrier or default_carrier, []).append(alloc)
    if not grouped:
        grouped[default_carrier] = []
    totals = []
    for carrier, group in grouped.items():
        units = {alloc.unit for alloc in group}
        if len(units) > 1:
            raise ValueError(f"{carrier} meters of order {order_id} mix units {sorted(units)}")
        quantity = math.fsum(alloc.orders[order_id].energy for alloc in group)
        measured = math.fsum(alloc.orders[order_id].measured for alloc in group)
        uncertainty = math.fsum(alloc.orders[order_id].uncertainty for alloc in group)
        uses = factor_uses.get(carrier)
        if uses is None:  # one constant factor over the whole order
            factor = factors[carrier]
            uses = {factor.set: [FactorUse(factor, quantity, measured, uncertainty)]}
        totals.append(
            _CarrierTotal(
                carrier=carrier,
                unit=units.pop() if units else "kWh",
                quantity=quantity,
                measured=measured,
                uncertainty=uncertainty,
                uses=uses,
                reported=reported_set(uses, report_set),
            )
        )
    return totals


def _quality(totals: Sequence[_CarrierTotal], coverage: float) -> tuple[float, float]:
    """(measured_share, primary_data_share) of an order.

    One carrier: measured energy / energy. Several carriers cannot add their quantities (kWh and
    m3), so they are weighted by CO2e. Primary share: CO2e with measured activity AND a primary
    factor / all CO2e. With no energy at all, a fully covered window measured its zero.
    """
    co2e_total = math.fsum(t.co2e for t in totals)
    if len(totals) == 1:
        only = totals[0]
        measured = _share(only.measured, only.quantity) if only.quantity > 0 else coverage
    elif co2e_total > 0:
        measured = _share(math.fsum(t.measured_co2e for t in totals), co2e_total)
    else:
        quantity = math.fsum(t.quantity for t in totals)
        measured = (
            _share(math.fsum(t.measured for t in totals), quantity) if quantity > 0 else coverage
        )
    if co2e_total > 0:
        primary = _share(math.fsum(t.primary_co2e for t in totals), co2e_total)
    else:
        primary = measured if all(t.factor.primary for t in totals) else 0.0
    return measured, primary


def _co2e_by_set(totals: Sequence[_CarrierTotal]) -> dict[str, float]:
    """CO2e under each configured set; a carrier without a factor of a set counts with its
    reported one (GHG Protocol: no market instrument -> the location-based figure)."""
    names = sorted({name for total in totals for name in total.uses})
    return {
        name: _round(math.fsum(t.co2e_of(name) if name in t.uses else t.co2e for t in totals))
        for name in names
    }


def build_order_record(
    facts: OrderFacts,
    allocations: Sequence[MeterAllocation],
    factors: Mapping[str, Factor],
    carrier: str,
    *,
    revision: int,
    extra_flags: Sequence[Flag] = (),
    factor_uses: Mapping[str, Mapping[str, Sequence[FactorUse]]] | None = None,
    report_set: str = "auto",
    shared: Sequence[tuple[MeterAllocation, Mapping[str, Any]]] = (),
    standard: Standard | None = None,
    flag_above_percent: float = 10.0,
) -> Record:
    """One order's record from its meters' allocations (direct energy of its equipment).

    ``carrier`` is the equipment's carrier, used for allocations that do not name their own;
    ``extra_flags`` carries the shell's events (``final_by_timeout``, event anomalies).
    ``factor_uses``: per carrier and factor set, the factors applied to parts of the order
    (time-varying tables, location and market side by side); a carrier missing from it takes
    ``factors[carrier]`` over the whole order. ``report_set`` picks the set of ``co2e_kg``.
    ``shared``: the order's part of each shared equipment serving its equipment, with how it
    was allocated (edge_agent.sharing.shared_detail). ``standard``: the step's standard
    intensity; a record above it by more than ``flag_above_percent`` is flagged.
    """
    if revision < 1:
        raise ValueError(f"revision must be >= 1, got {revision}")
    direct = list(allocations)
    allocations = [*direct, *(alloc for alloc, _ in shared)]
    totals = _carrier_totals(
        facts.order_id, allocations, factors, carrier, factor_uses or {}, report_set
    )
    co2e = math.fsum(t.co2e for t in totals)
    energy_kwh = math.fsum(t.quantity for t in totals if t.carrier == ELECTRICITY)
    uncertainty_kwh = math.fsum(t.uncertainty for t in totals if t.carrier == ELECTRICITY)
    shared_kwh = math.fsum(
        alloc.orders[facts.order_id].energy
        for alloc, _ in shared
        if (alloc.carrier or carrier) == ELECTRICITY
    )
    coverage = min((alloc.coverage for alloc in allocations), default=0.0)
    measured_share, primary_share = _quality(totals, coverage)

    flags: list[Flag] = []
    for alloc in allocations:
        flags.extend(alloc.flags)
        flags.extend(alloc.orders[facts.order_id].flags)
    flags.extend(extra_flags)
    if not facts.quantity_good:
        flags.append(
            Flag("no_good_quantity", "quantity_good is 0 or missing: no per-unit intensity")
        )
    for total in totals:
        if report_set in ("location", "market") and total.reported != report_set:
            flags.append(
                Flag(
                    "report_set_fallback",
                    f"{total.carrier} has no {report_set} factor: its {total.reported} "
                    "factor is reported",
                )
            )
        if not total.factor.primary:
            flags.append(
                Flag(
                    "secondary_emission_factor",
                    f"{total.carrier} factor '{total.factor.source}' is not supplier-specific",
                )
            )
    kwh_per_unit = _per_unit(energy_kwh, facts.quantity_good)
    co2e_per_unit = _per_unit(co2e, facts.quantity_good)
    standard_part = standard_json(standard, kwh_per_unit, co2e_per_unit)
    flags += _above_standard(standard_part, flag_above_percent)
    rid = record_id(facts.site_id, "order", facts.lot_id, facts.order_id, facts.equipment_id)
    payload: dict[str, Any] = {
        "record_id": rid,
        "schema_version": SCHEMA_VERSION,
        "kind": "order",
        "revision": revision,
        "site_id": facts.site_id,
        "line_id": facts.line_id,
        "lot_id": facts.lot_id,
        "order_id": facts.order_id,
        "equipment_id": facts.equipment_id,
        "product_id": facts.product_id,
        "start": _iso(facts.start_ns),
        "end": _iso(facts.end_ns),
        "quantity_good": facts.quantity_good,
        "quantity_scrap": facts.quantity_scrap,
        "unit": facts.unit,
        "energy_kwh": _round(energy_kwh),
        "energy_direct_kwh": _round(energy_kwh - shared_kwh),
        "energy_shared_kwh": _round(shared_kwh),
        "uncertainty_kwh": _round(uncertainty_kwh),
        "co2e_kg": _round(co2e),
        "co2e_uncertainty_kg": _round(math.fsum(t.co2e_uncertainty for t in totals)),
        "co2e_kg_per_unit": co2e_per_unit,
        "kwh_per_unit": kwh_per_unit,
        "standard": standard_part,
        "measured_share": _round(measured_share),
        "primary_data_share": _round(primary_share),
        "coverage": _round(coverage),
        "carriers": [
            {
                "carrier": total.carrier,
                "quantity": _round(total.quantity),
                "uncertainty": _round(total.uncertainty),
                "unit": total.unit,
                "co2e_kg": _round(total.co2e),
                "set": total.reported,
                "emission_factor": _factor_json(total.factor),
            }
            for total in totals
        ],
        "co2e_by_set": _co2e_by_set(totals),
        "factors": [
            _use_json(total.carrier, total.unit, use, name == total.reported)
            for total in totals
            for name, uses in sorted(total.uses.items())
            for use in uses
        ],
        "meters": [
            *(_meter_json(alloc, facts.order_id) for alloc in direct),
            *(
                {**_meter_json(alloc, facts.order_id), "role": "shared", "allocation": dict(detail)}
                for alloc, detail in shared
            ),
        ],
        "states": _states([alloc.orders[facts.order_id].by_state for alloc in direct]),
        "emission_factors": {total.carrier: _factor_json(total.factor) for total in totals},
        "flags": [_flag(flag) for flag in _unique(flags)],
    }
    return Record(rid, revision, "order", _round(energy_kwh), _round(co2e), payload)


def _meter_json(alloc: MeterAllocation, order_id: str) -> dict[str, Any]:
    share = alloc.orders[order_id]
    return {
        "meter_id": alloc.meter_id,
        "point": alloc.point,
        "role": "direct",
        "method": alloc.method,
        "energy": _round(share.energy),
        "uncertainty": _round(share.uncertainty),
        "uncertainty_kwh": _round(share.uncertainty) if alloc.unit == "kWh" else None,
        "unit": alloc.unit,
        "first_reading": _reading(alloc.first_reading),
        "last_reading": _reading(alloc.last_reading),
        "sample_count": alloc.sample_count,
        "coverage": _round(alloc.coverage),
        "flags": [_flag(flag) for flag in _unique([*alloc.flags, *share.flags])],
    }


def _common(values: Sequence[Any]) -> Any:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _lot_meters(ordered: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each meter once: energy and samples summed over the lot's steps, outermost readings."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for order in ordered:
        for meter in order.get("meters", []):
            key = (meter["meter_id"], meter["point"], meter.get("role", "direct"))
            entry = merged.get(key)
            if entry is None:
                merged[key] = copy.deepcopy(dict(meter))
                merged[key].setdefault("flags", [])
                merged[key].pop("allocation", None)  # per order: in the order records
                continue
            entry["energy"] = _round(entry["energy"] + meter["energy"])
            entry["uncertainty"] = _round(entry["uncertainty"] + meter["uncertainty"])
            if entry["uncertainty_kwh"] is not None:
                entry["uncertainty_kwh"] = entry["uncertainty"]
            entry["sample_count"] += meter["sample_count"]
            entry["coverage"] = min(entry["coverage"], meter["coverage"])
            first, last = meter["first_reading"], meter["last_reading"]
            if first is not None and (
                entry["first_reading"] is None or first["ts"] < entry["first_reading"]["ts"]
            ):
                entry["first_reading"] = first
            if last is not None and (
                entry["last_reading"] is None or last["ts"] > entry["last_reading"]["ts"]
            ):
                entry["last_reading"] = last
            for flag in meter.get("flags", []):
                if flag not in entry["flags"]:
                    entry["flags"].append(flag)
    return list(merged.values())


def _above_standard(standard: Mapping[str, Any] | None, limit_percent: float) -> list[Flag]:
    if standard is None:
        return []
    above = [
        f"{what} {standard[key]:+.3g} % against its {standard['basis']} standard"
        for what, key in (("kWh per unit", "deviation_kwh_percent"),
                          ("kg CO2e per unit", "deviation_co2e_percent"))
        if standard[key] is not None and standard[key] > limit_percent
    ]  # fmt: skip
    if not above:
        return []
    return [Flag("above_standard", f"{'; '.join(above)} ({standard['source']})")]


def _lot_factors(ordered: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each factor once (same carrier, set, value, provenance and validity), activities and
    CO2e summed over the lot's steps."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for order in ordered:
        for use in order.get("factors", []):
            key = tuple((k, v) for k, v in sorted(use.items()) if k not in ("activity", "co2e_kg"))
            entry = merged.get(key)
            if entry is None:
                merged[key] = dict(use)
                continue
            entry["activity"] = _round(entry["activity"] + use["activity"])
            entry["co2e_kg"] = _round(entry["co2e_kg"] + use["co2e_kg"])
    return list(merged.values())


def _lot_states(ordered: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    merged: dict[str, tuple[list[float], list[float]]] = {}
    for order in ordered:
        for state, part in order.get("states", {}).items():
            energies, seconds = merged.setdefault(state, ([], []))
            energies.append(part["energy_kwh"])
            seconds.append(part["seconds"])
    return {
        state: {"energy_kwh": _round(math.fsum(e)), "seconds": _round(math.fsum(s))}
        for state, (e, s) in sorted(merged.items())
    }


def build_lot_record(
    site_id: str,
    lot_id: str,
    orders: Sequence[Mapping[str, Any]],
    *,
    quantity_good: float | None,
    revision: int,
    open_orders: Sequence[str] = (),
    standard: Standard | None = None,
    flag_above_percent: float = 10.0,
) -> Record:
    """The lot summary from its order records (as published): sums, one entry per step.

    ``quantity_good`` is the ``lot_complete`` event's; None falls back to the last finished
    step's (by end time). Shares are CO2e-weighted over the steps. ``open_orders``: the lot's
    orders not final yet (running, or stopped and waiting for their boundary reading); their
    energy is not in the sums, so the record says ``incomplete`` and counts ``open_steps``.
    """
    if revision < 1:
        raise ValueError(f"revision must be >= 1, got {revision}")
    ordered = sorted(orders, key=lambda o: (o["end"], o["order_id"]))
    energy = math.fsum(o["energy_kwh"] for o in ordered)
    co2e = math.fsum(o["co2e_kg"] for o in ordered)
    if quantity_good is None and ordered:
        quantity_good = ordered[-1]["quantity_good"]  # the last finished step's good output
    weights = [o["co2e_kg"] for o in ordered]
    total_weight = math.fsum(weights)

    def weighted(key: str) -> float:
        if total_weight <= 0:
            return min((o[key] for o in ordered), default=0.0)
        return math.fsum(o[key] * w for o, w in zip(ordered, weights, strict=True)) / total_weight

    carriers: dict[str, dict[str, Any]] = {}
    factors_used: dict[str, Any] = {}
    for order in ordered:
        for carrier in order["carriers"]:
            entry = carriers.setdefault(
                carrier["carrier"],
                {"carrier": carrier["carrier"], "quantity": 0.0, "uncertainty": 0.0,
                 "unit": carrier["unit"],
                 "co2e_kg": 0.0, "emission_factor": carrier["emission_factor"]},
            )  # fmt: skip
            entry["quantity"] = _round(entry["quantity"] + carrier["quantity"])
            entry["uncertainty"] = _round(entry["uncertainty"] + carrier["uncertainty"])
            entry["co2e_kg"] = _round(entry["co2e_kg"] + carrier["co2e_kg"])
            factors_used.setdefault(carrier["carrier"], carrier["emission_factor"])
    by_set: dict[str, list[float]] = {}
    for order in ordered:
        for name, value in order.get("co2e_by_set", {}).items():
            by_set.setdefault(name, []).append(value)
    flags: list[dict[str, Any]] = []
    for order in ordered:
        for flag in order.get("flags", []):
            tagged = dict(flag, detail=f"{order['order_id']}: {flag['detail']}")
            if tagged not in flags:
                flags.append(tagged)
    if not quantity_good:
        flags.append({"code": "no_good_quantity", "detail": "lot good quantity is 0 or missing"})
    if not ordered:
        flags.append(
            {"code": "no_orders", "detail": "lot_complete for a lot without finished orders"}
        )
    if open_orders:
        named = sorted(open_orders)
        listed = ", ".join(named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
        flags.append(
            {
                "code": "incomplete",
                "detail": f"{len(named)} of the lot's orders not final yet ({listed}): their "
                "energy is not in this summary, which is re-issued when they are final",
            }
        )
    lot_kwh_per_unit = _per_unit(energy, quantity_good)
    lot_co2e_per_unit = _per_unit(co2e, quantity_good)
    standard_part = standard_json(standard, lot_kwh_per_unit, lot_co2e_per_unit)
    flags += [_flag(flag) for flag in _above_standard(standard_part, flag_above_percent)]
    scraps = [o.get("quantity_scrap") for o in ordered]
    known_scrap = [s for s in scraps if s is not None]
    rid = record_id(site_id, "lot", lot_id, None, None)
    payload: dict[str, Any] = {
        "record_id": rid,
        "schema_version": SCHEMA_VERSION,
        "kind": "lot",
        "revision": revision,
        "site_id": site_id,
        "line_id": _common([o.get("line_id") for o in ordered]),
        "lot_id": lot_id,
        "product_id": _common([o["product_id"] for o in ordered]),
        "start": min((o["start"] for o in ordered), default=None),
        "end": max((o["end"] for o in ordered), default=None),
        "quantity_good": quantity_good,
        # Scrap of every step is lost output of the lot: the steps' scrap adds up.
        "quantity_scrap": _round(math.fsum(known_scrap)) if known_scrap else None,
        "unit": ordered[-1]["unit"] if ordered else "piece",
        "energy_kwh": _round(energy),
        "energy_direct_kwh": _round(
            math.fsum(o.get("energy_direct_kwh", o["energy_kwh"]) for o in ordered)
        ),
        "energy_shared_kwh": _round(math.fsum(o.get("energy_shared_kwh", 0.0) for o in ordered)),
        "uncertainty_kwh": _round(math.fsum(o.get("uncertainty_kwh", 0.0) for o in ordered)),
        "co2e_kg": _round(co2e),
        "co2e_uncertainty_kg": _round(
            math.fsum(o.get("co2e_uncertainty_kg", 0.0) for o in ordered)
        ),
        "co2e_kg_per_unit": lot_co2e_per_unit,
        "kwh_per_unit": lot_kwh_per_unit,
        "standard": standard_part,
        "measured_share": _round(weighted("measured_share")),
        "primary_data_share": _round(weighted("primary_data_share")),
        "coverage": _round(min((o["coverage"] for o in ordered), default=0.0)),
        "steps": len(ordered),
        "open_steps": len(open_orders),
        "incomplete": bool(open_orders),
        "orders": [
            {
                "order_id": o["order_id"],
                "equipment_id": o["equipment_id"],
                "record_id": o["record_id"],
                "revision": o["revision"],
                "energy_kwh": o["energy_kwh"],
                "co2e_kg": o["co2e_kg"],
            }
            for o in ordered
        ],
        "carriers": list(carriers.values()),
        "co2e_by_set": {name: _round(math.fsum(values)) for name, values in sorted(by_set.items())},
        "factors": _lot_factors(ordered),
        "meters": _lot_meters(ordered),
        "states": _lot_states(ordered),
        "emission_factors": factors_used,
        "flags": flags,
    }
    return Record(rid, revision, "lot", _round(energy), _round(co2e), payload)
