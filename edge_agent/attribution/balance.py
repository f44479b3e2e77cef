"""Energy-balance records: where each meter's energy of one period went (pure).

For one period [start, end) and every meter line, the metered energy C(end) − C(start) is split
into what went **to orders** (their occupied time on the meter's equipment, split as in the order
records), **idle** (the equipment's time with no order running: standby, idle, paused or
cancelled orders) and **unallocated** (energy no rule can give to an order or to idle: a meter
that serves no equipment — a compressor, HVAC or lighting meter while shared-equipment
allocation is not configured). The three come from the same allocation, so for every line and
for the site::

    metered = to_orders + idle + unallocated          (to floating-point precision)

and each order's entries over consecutive periods add up to its order record's energy, because
both are differences of the same C cut at the same order boundaries with the same split.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.attribution.model import (
    ELECTRICITY,
    Flag,
    Interval,
    MeterAllocation,
    OrderSpan,
    SplitRule,
)
from edge_agent.attribution.records import _flag, _reading, _round, _unique, record_id
from edge_agent.attribution.shared import SharedAllocation
from edge_agent.domain import iso_from_ns

BALANCE_SCHEMA_VERSION = "1.0"
BALANCE = "balance"
SITE = "site"


@dataclass(frozen=True, slots=True)
class BalanceLine:
    """One meter point over the period, as the equipment it serves sees it.

    ``allocation`` is :func:`~edge_agent.attribution.allocation.allocate` over the period with
    every order that occupied the equipment in it. ``equipment_id`` None: the meter serves no
    equipment, and all its energy is unallocated (its allocation has no orders).
    """

    allocation: MeterAllocation
    equipment_id: str | None
    carrier: str | None  # None: not known (a meter of no equipment that does not count kWh)
    # A shared equipment's line: its energy (main meters minus sub-meters) as allocated to
    # the orders of the equipment it serves; what no order received is unallocated.
    shared: SharedAllocation | None = None
    shared_equipment_id: str | None = None


@dataclass(frozen=True, slots=True)
class OrderRef:
    """Who an order is, for the record's per-order list."""

    lot_id: str
    equipment_id: str


@dataclass(frozen=True, slots=True)
class BalanceRecord:
    record_id: str
    revision: int
    period: Interval
    payload: Mapping[str, Any]

    def to_json_dict(self) -> dict[str, Any]:
        """A fresh JSON-ready dict (stable key order); changing it leaves the record intact."""
        return copy.deepcopy(dict(self.payload))

    def to_json(self) -> str:
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class _LineNumbers:
    metered: float
    to_orders: float
    idle: float
    unallocated: float
    uncertainty: float
    measured: float
    orders: dict[str, float]


def balance_record_id(site_id: str, period: Interval) -> str:
    """UUID v5 of the balance's identity — site, kind, the period, "site" — never its numbers."""
    return record_id(
        site_id, BALANCE, iso_from_ns(period.start_ns), iso_from_ns(period.end_ns), SITE
    )


def period_of(t_ns: int, period_ns: int) -> Interval:
    """The period (aligned to the Unix epoch, hence to UTC midnight) that contains ``t_ns``."""
    start = t_ns - t_ns % period_ns
    return Interval(start, start + period_ns)


def span_fingerprint(
    spans: Sequence[OrderSpan], period: Interval, split: SplitRule
) -> list[list[Any]]:
    """What a period's allocation on one equipment depends on besides the readings: each
    order's occupied time inside the period (and its good quantity when the split uses it).
    Two equal fingerprints give the same allocation of the same readings."""
    out: list[list[Any]] = []
    for span in sorted(spans, key=lambda s: s.order_id):
        inside = [
            [max(i.start_ns, period.start_ns), min(i.end_ns, period.end_ns)]
            for i in span.intervals
            if i.start_ns < period.end_ns and i.end_ns > period.start_ns
        ]
        if inside:
            quantity = span.quantity_good if split == "quantity" else None
            out.append([span.order_id, inside, quantity])
    return out


def _numbers(line: BalanceLine) -> _LineNumbers:
    alloc = line.allocation
    if line.shared is not None:
        shared = line.shared
        orders = {order_id: e for order_id, e in shared.orders.items() if e > 0}
        return _LineNumbers(
            metered=shared.total,
            to_orders=math.fsum(orders.values()),
            idle=0.0,
            unallocated=shared.unallocated,
            uncertainty=alloc.uncertainty,
            measured=math.fsum(shared.measured.values())
            + math.fsum(i.measured for i in shared.intervals if not i.weights),
            orders=orders,
        )
    if line.equipment_id is None:
        # No equipment, hence no order and no notion of idle: everything is unallocated.
        return _LineNumbers(
            alloc.total, 0.0, 0.0, alloc.total, alloc.uncertainty, alloc.measured, {}
        )
    orders = {order_id: share.energy for order_id, share in alloc.orders.items()}
    return _LineNumbers(
        metered=alloc.total,
        to_orders=math.fsum(orders.values()),
        idle=alloc.idle.energy,
        unallocated=0.0,
        uncertainty=alloc.uncertainty,
        measured=alloc.measured,
        orders=orders,
    )


def _measured_share(measured: float, metered: float, coverage: float) -> float:
    # As in the order records: with no energy at all, a fully covered window measured its zero.
    if metered > 0:
        return min(1.0, max(0.0, measured / metered))
    return coverage


def _line_json(line: BalanceLine, numbers: _LineNumbers) -> dict[str, Any]:
    alloc = line.allocation
    idle_states = (
        {
            state: {"energy": _round(part.energy), "seconds": _round(part.seconds)}
            for state, part in alloc.idle.by_state.items()
        }
        if line.equipment_id is not None
        else {}
    )
    return {
        "meter_id": alloc.meter_id,
        "point": alloc.point,
        "equipment_id": line.equipment_id,
        "shared_equipment_id": line.shared_equipment_id,
        "carrier": line.carrier,
        "unit": alloc.unit,
        "method": alloc.method,
        "metered": _round(numbers.metered),
        "to_orders": _round(numbers.to_orders),
        "idle": _round(numbers.idle),
        "unallocated": _round(numbers.unallocated),
        "uncertainty": _round(numbers.uncertainty),
        "orders": {order_id: _round(energy) for order_id, energy in numbers.orders.items()},
        "idle_states": idle_states,
        "measured_share": _round(
            _measured_share(numbers.measured, numbers.metered, alloc.coverage)
        ),
        "coverage": _round(alloc.coverage),
        "first_reading": _reading(alloc.first_reading),
        "last_reading": _reading(alloc.last_reading),
        "sample_count": alloc.sample_count,
        "flags": [_flag(flag) for flag in _unique([*alloc.flags, *alloc.idle.flags])],
    }


def build_balance_record(
    site_id: str,
    period: Interval,
    lines: Sequence[BalanceLine],
    orders: Mapping[str, OrderRef],
    *,
    revision: int,
    extra_flags: Sequence[Flag] = (),
) -> BalanceRecord:
    """The site's energy balance over ``period`` from its meter lines.

    ``orders`` names the lot and equipment of every order the lines mention. Site totals are
    summed per (carrier, unit); the top-level ``*_kwh`` fields are electricity.
    """
    if revision < 1:
        raise ValueError(f"revision must be >= 1, got {revision}")
    numbers = [_numbers(line) for line in lines]
    groups: dict[tuple[str | None, str], list[_LineNumbers]] = {}
    for line, line_numbers in zip(lines, numbers, strict=True):
        groups.setdefault((line.carrier, line.allocation.unit), []).append(line_numbers)

    def total(group: Sequence[_LineNumbers], field: str) -> float:
        return math.fsum(getattr(n, field) for n in group)

    electricity = groups.get((ELECTRICITY, "kWh"), [])
    order_kwh: dict[str, list[float]] = {}
    for line, line_numbers in zip(lines, numbers, strict=True):
        if (line.carrier, line.allocation.unit) == (ELECTRICITY, "kWh"):
            for order_id, energy in line_numbers.orders.items():
                order_kwh.setdefault(order_id, []).append(energy)
        else:
            for order_id in line_numbers.orders:
                order_kwh.setdefault(order_id, [])

    flags: list[Flag] = []
    served: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        if line.equipment_id is not None:
            key = (line.allocation.meter_id, line.allocation.point)
            served.setdefault(key, []).append(line.equipment_id)
    for (meter_id, point), equipment_ids in served.items():
        if len(equipment_ids) > 1:
            flags.append(
                Flag(
                    "meter_shared",
                    f"{meter_id}.{point} is a meter of {', '.join(equipment_ids)}: each counts "
                    "all of its energy, so the site counts it once per equipment",
                )
            )
    flags.extend(extra_flags)
    metered_kwh = total(electricity, "metered")
    coverage = min((line.allocation.coverage for line in lines), default=0.0)
    rid = balance_record_id(site_id, period)
    payload: dict[str, Any] = {
        "record_id": rid,
        "schema_version": BALANCE_SCHEMA_VERSION,
        "kind": BALANCE,
        "revision": revision,
        "site_id": site_id,
        "start": iso_from_ns(period.start_ns),
        "end": iso_from_ns(period.end_ns),
        "period_s": _round((period.end_ns - period.start_ns) / 1e9),
        "metered_kwh": _round(metered_kwh),
        "to_orders_kwh": _round(total(electricity, "to_orders")),
        "idle_kwh": _round(total(electricity, "idle")),
        "unallocated_kwh": _round(total(electricity, "unallocated")),
        "uncertainty_kwh": _round(total(electricity, "uncertainty")),
        "measured_share": _round(
            _measured_share(total(electricity, "measured"), metered_kwh, coverage)
        ),
        "coverage": _round(coverage),
        "carriers": [
            {
                "carrier": carrier,
                "unit": unit,
                "metered": _round(total(group, "metered")),
                "to_orders": _round(total(group, "to_orders")),
                "idle": _round(total(group, "idle")),
                "unallocated": _round(total(group, "unallocated")),
                "uncertainty": _round(total(group, "uncertainty")),
            }
            for (carrier, unit), group in groups.items()
        ],
        "orders": [
            {
                "order_id": order_id,
                "lot_id": orders[order_id].lot_id,
                "equipment_id": orders[order_id].equipment_id,
                "energy_kwh": _round(math.fsum(energies)),
            }
            for order_id, energies in sorted(order_kwh.items())
        ],
        "meters": [
            _line_json(line, line_numbers)
            for line, line_numbers in zip(lines, numbers, strict=True)
        ],
        "flags": [_flag(flag) for flag in _unique(flags)],
    }
    return BalanceRecord(rid, revision, period, payload)
