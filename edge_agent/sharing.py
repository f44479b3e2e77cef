"""Shared equipment: stored samples and order timelines -> :mod:`edge_agent.attribution.shared`
(pure glue, like :mod:`edge_agent.accounting`; the engine and the balance keeper load the data).

An order record gets, per shared equipment serving its equipment, its part of the shared
energy over the UTC-aligned allocation intervals that its window touches — whole intervals, so
that the parts of all orders and the unallocated rest add up to the shared meter's energy. The
balance records split the same intervals the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.model import (
    Flag,
    Interval,
    MeterAllocation,
    MeterSeries,
    Share,
)
from edge_agent.attribution.series import Cumulative, cumulative
from edge_agent.attribution.shared import (
    ServedOrder,
    SharedAllocation,
    allocate_shared,
    allocation_intervals,
    order_bound,
    overlap_ns,
)
from edge_agent.config import AgentConfig, EquipmentConfig, attributed_point_name
from edge_agent.config.models import MeterRef, SharedEquipmentConfig
from edge_agent.domain import NS_PER_S, Sample, iso_from_ns
from edge_agent.mes.timeline import OrderTimeline

__all__ = [
    "SharedInputs",
    "SharedResult",
    "allocate_shared_inputs",
    "extended_window",
    "shared_detail",
    "shared_points",
]


def shared_points(config: AgentConfig, refs: Sequence[MeterRef]) -> list[tuple[str, str]]:
    """(meter, point) of each reference: its energy point, else its power point."""
    return [
        (ref.meter, attributed_point_name(dict(config.meter(ref.meter).points), ref.point))
        for ref in refs
    ]


def extended_window(window: Interval, interval_s: int) -> Interval:
    """``window`` widened to whole allocation intervals."""
    step = interval_s * NS_PER_S
    start = window.start_ns // step * step
    end = -(-window.end_ns // step) * step
    return Interval(start, max(end, start + step))


@dataclass(frozen=True, slots=True)
class SharedInputs:
    """What one shared equipment's allocation over a window needs (loaded by the shell)."""

    shared: SharedEquipmentConfig
    readings: Mapping[tuple[str, str], Sequence[Sample]]  # its meters and sub-meters
    served: Mapping[str, Sequence[OrderTimeline]]  # served equipment id -> orders there
    # key direct_energy: the served equipment's meters' readings
    served_readings: Mapping[tuple[str, str], Sequence[Sample]] = field(default_factory=dict)
    outages: Sequence[tuple[int, int]] = ()


@dataclass(frozen=True, slots=True)
class SharedResult:
    shared: SharedEquipmentConfig
    allocation: SharedAllocation
    window: Interval  # whole allocation intervals
    meter: MeterAllocation  # the first meter over the window: readings for the audit trail
    uncertainty: float  # bound on the shared energy over the window
    flags: tuple[Flag, ...]
    curves: tuple[Cumulative, ...]  # the main and subtracted meters: the orders' bounds

    def order_uncertainty(self, order_id: str) -> float:
        """Bound on the error of the order's part (see :func:`order_bound`)."""
        return order_bound(self.allocation, self.curves, order_id)

    def as_order_allocation(self, order_id: str) -> MeterAllocation:
        """The order's part as a meter allocation (carrier totals, measured share)."""
        total = self.allocation.total
        energy = self.allocation.orders.get(order_id, 0.0)
        share = Share(
            energy=energy,
            measured=self.allocation.measured.get(order_id, 0.0),
            uncertainty=self.order_uncertainty(order_id),
        )
        unallocated = Share(energy=self.allocation.unallocated, measured=0.0)
        return MeterAllocation(
            meter_id=self.meter.meter_id,
            point=self.meter.point,
            method=self.meter.method,
            unit=self.meter.unit,
            window=self.window,
            total=total,
            measured=math.fsum(self.allocation.measured.values()),
            coverage=self.meter.coverage,
            orders={order_id: share},
            idle=unallocated,
            first_reading=self.meter.first_reading,
            last_reading=self.meter.last_reading,
            sample_count=self.meter.sample_count,
            flags=self.flags,
            carrier=self.shared.carrier,
            uncertainty=self.uncertainty,
        )


def _as_equipment(shared: SharedEquipmentConfig) -> EquipmentConfig:
    return EquipmentConfig(
        id=shared.id,
        carrier=shared.carrier,
        meters=shared.meters,
        max_power_kw=shared.max_power_kw,
    )


def _curves(
    config: AgentConfig,
    equipment: EquipmentConfig,
    points: Sequence[tuple[str, str]],
    readings: Mapping[tuple[str, str], Sequence[Sample]],
    outages: Sequence[tuple[int, int]],
) -> list[tuple[MeterSeries, Cumulative]]:
    from edge_agent.accounting import meter_series  # noqa: PLC0415 (accounting imports us)

    out = []
    for meter_id, point in points:
        series = meter_series(
            config, equipment, meter_id, point, readings.get((meter_id, point), ()), (), outages
        )
        out.append((series, cumulative(series)))
    return out


def _direct_energies(
    config: AgentConfig,
    equipment_id: str,
    timelines: Sequence[OrderTimeline],
    readings: Mapping[tuple[str, str], Sequence[Sample]],
    intervals: Sequence[Interval],
    outages: Sequence[tuple[int, int]],
) -> dict[str, dict[int, float]]:
    """Per order, per allocation interval: the equipment's energy while the order occupied it
    (shared equally with the orders occupying it at the same time)."""
    equipment = config.equipment_by_id(equipment_id)
    points = shared_points(config, equipment.meters)
    curves = _curves(config, equipment, points, readings, outages)
    out: dict[str, dict[int, float]] = {t.order_id: {} for t in timelines}
    occupied = {t.order_id: [Interval(a, b) for a, b in t.occupied] for t in timelines}
    for interval in intervals:
        for timeline in timelines:
            energy = 0.0
            for piece in occupied[timeline.order_id]:
                a = max(piece.start_ns, interval.start_ns)
                b = min(piece.end_ns, interval.end_ns)
                if b <= a:
                    continue
                sharing = sum(
                    1 for other in occupied.values() if overlap_ns(other, Interval(a, b)) > 0
                )
                energy += math.fsum(curve.at(b) - curve.at(a) for _, curve in curves) / max(
                    sharing, 1
                )
            if energy:
                out[timeline.order_id][interval.start_ns] = energy
    return out


def allocate_shared_inputs(
    config: AgentConfig, inputs: SharedInputs, window: Interval
) -> SharedResult:
    """The shared energy over the whole allocation intervals that ``window`` touches, split
    among the served orders (pure: the samples are loaded)."""
    shared = inputs.shared
    extended = extended_window(window, shared.interval_s)
    intervals = allocation_intervals(extended, shared.interval_s * NS_PER_S)
    equipment = _as_equipment(shared)
    mains = _curves(
        config, equipment, shared_points(config, shared.meters), inputs.readings, inputs.outages
    )
    subs = _curves(
        config, equipment, shared_points(config, shared.subtract), inputs.readings, inputs.outages
    )
    flags: list[Flag] = []
    energies: list[tuple[Interval, float, float]] = []
    clamped: dict[int, float] = {}
    for interval in intervals:
        a, b = interval.start_ns, interval.end_ns
        main = math.fsum(curve.at(b) - curve.at(a) for _, curve in mains)
        main_measured = math.fsum(curve.measured_part(a, b)[0] for _, curve in mains)
        sub = math.fsum(curve.at(b) - curve.at(a) for _, curve in subs)
        remainder = main - sub
        if remainder < 0:
            flags.append(
                Flag(
                    "sub_meters_exceed_main",
                    f"shared equipment {shared.id}: sub-meters {sub:.6g} above the main "
                    f"meters' {main:.6g} {mains[0][0].unit} (unsynchronised reads): remainder "
                    "taken as 0",
                    a,
                )
            )
            clamped[a] = -remainder
            remainder = 0.0
        measured = remainder * (min(1.0, main_measured / main) if main > 0 else 0.0)
        energies.append((interval, remainder, measured))
    served: list[ServedOrder] = []
    for equipment_id, timelines in inputs.served.items():
        direct = (
            _direct_energies(
                config, equipment_id, timelines, inputs.served_readings, intervals, inputs.outages
            )
            if shared.key == "direct_energy"
            else {}
        )
        for timeline in timelines:
            if timeline.cancelled:
                continue
            served.append(
                ServedOrder(
                    timeline.order_id,
                    tuple(Interval(a, b) for a, b in timeline.occupied),
                    timeline.quantity_good,
                    direct.get(timeline.order_id, {}),
                )
            )
    allocation = allocate_shared(energies, served, shared.key, clamped)
    # Each meter over the whole window, as a direct meter would be: readings for the audit
    # trail, coverage and the bound on its energy.
    whole = [allocate(series, [], extended) for series, _ in [*mains, *subs]]
    first = whole[0]
    meter = replace(
        first,
        total=allocation.total,
        coverage=min(alloc.coverage for alloc in whole),
        orders={},
        idle=Share(0.0, 0.0),
    )
    # Raising a negative remainder to 0 added energy no reading supports.
    uncertainty = math.fsum([*(alloc.uncertainty for alloc in whole), *clamped.values()])
    return SharedResult(
        shared,
        allocation,
        extended,
        meter,
        uncertainty,
        tuple(dict.fromkeys(flags)),
        tuple(curve for _, curve in [*mains, *subs]),
    )


def _round(value: float) -> float:
    return float(f"{value:.12g}")


def shared_detail(result: SharedResult, order_id: str) -> dict[str, Any]:
    """How the order's part was computed, enough to recompute it by hand: per interval the
    shared energy, the order's weight and all active orders' weight."""
    allocation = result.allocation
    return {
        "shared_equipment_id": result.shared.id,
        "key": allocation.key,
        "interval_s": result.shared.interval_s,
        "window_start": iso_from_ns(result.window.start_ns),
        "window_end": iso_from_ns(result.window.end_ns),
        "shared_energy": _round(allocation.total),
        "unallocated": _round(allocation.unallocated),
        "meters": [ref.meter for ref in result.shared.meters],
        "subtract": [ref.meter for ref in result.shared.subtract],
        "intervals": [
            {
                "start": iso_from_ns(part.interval.start_ns),
                "end": iso_from_ns(part.interval.end_ns),
                "energy": _round(part.energy),
                "weight": _round(part.weights[order_id]),
                "total_weight": _round(part.total_weight),
            }
            for part in allocation.intervals_of(order_id)
        ],
    }
