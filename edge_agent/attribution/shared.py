"""Shared equipment (the plant's bill of equipment): a compressor, HVAC, lighting, a line's main
meter — energy no single order draws, allocated to the orders it served (pure).

The shared energy is cut into allocation intervals aligned to UTC (``interval_s``, e.g. a
minute). In each interval its energy goes to the orders active then on the equipment it
serves, in proportion to a key:

* ``running_time``: the seconds each order occupied its equipment within the interval;
* ``direct_energy``: each order's own (direct) energy within the interval;
* ``quantity``: each order's good quantity, spread evenly over its occupied time;
* ``equal``: one share per active order.

An interval without any weight (no order active, or all weights zero) is ``unallocated``. The
orders' parts and the unallocated part add up to the shared energy exactly, interval by
interval, so the allocation can be recomputed by hand from the intervals a record lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.attribution.allocation import error_bound
from edge_agent.attribution.model import Interval
from edge_agent.attribution.series import Cumulative

__all__ = [
    "ServedOrder",
    "SharedAllocation",
    "SharedInterval",
    "SharingKey",
    "allocate_shared",
    "allocation_intervals",
    "order_bound",
    "overlap_ns",
]

SharingKey = Literal["running_time", "direct_energy", "quantity", "equal"]


@dataclass(frozen=True, slots=True)
class ServedOrder:
    """An order on an equipment the shared equipment serves."""

    order_id: str
    intervals: tuple[Interval, ...]  # occupied time, pauses removed
    quantity_good: float | None = None
    # Allocation interval start (ns) -> the order's direct energy in it (key direct_energy).
    direct: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SharedInterval:
    """One allocation interval: the shared energy and how it was split."""

    interval: Interval
    energy: float
    measured: float
    weights: Mapping[str, float]  # order id -> weight (only orders with a weight > 0)
    # What a negative remainder (sub-meters read above the main meters) was raised by to 0.
    clamped: float = 0.0

    @property
    def total_weight(self) -> float:
        return math.fsum(self.weights.values())

    def share_of(self, order_id: str) -> float:
        weight = self.weights.get(order_id, 0.0)
        # The ratio first: weight / total is at most 1, so tiny weights cannot overflow the
        # product or lose it to subnormal rounding.
        return self.energy * (weight / self.total_weight) if weight > 0 else 0.0


@dataclass(frozen=True, slots=True)
class SharedAllocation:
    key: SharingKey
    intervals: tuple[SharedInterval, ...]
    orders: Mapping[str, float]  # order id -> allocated energy
    measured: Mapping[str, float]  # order id -> the measured part of it
    unallocated: float
    total: float

    def intervals_of(self, order_id: str) -> list[SharedInterval]:
        return [i for i in self.intervals if order_id in i.weights]


def order_bound(allocation: SharedAllocation, curves: Sequence[Cumulative], order_id: str) -> float:
    """A bound on |the order's part − the part the true shared energy would give it|.

    The order's part is Σ f·ΔR over the intervals (f its fraction of an interval, exact from
    the MES times; R the main meters' count less the subtracted meters'). As for a direct
    meter, the reading error at each interval edge counts with the change of f there, so an
    order whose fraction changes inside the window carries the error of every such edge, not a
    pro-rata part of the window's ends. ``curves``: every meter of R; their bounds add. An
    interval whose remainder was raised to 0 gave the order f times that much on top.
    """
    slices = allocation.intervals
    if not slices or not any(order_id in s.weights for s in slices):
        return 0.0
    fractions = [
        s.weights[order_id] / s.total_weight if order_id in s.weights else 0.0 for s in slices
    ]
    points = [slices[0].interval.start_ns, *(s.interval.end_ns for s in slices)]
    return math.fsum(
        [
            *(
                error_bound(
                    fractions,
                    [curve.point_error(t) for t in points],
                    [curve.segment_bound(s.interval.start_ns, s.interval.end_ns) for s in slices],
                )[0]
                for curve in curves
            ),
            *(f * s.clamped for f, s in zip(fractions, slices, strict=True)),
        ]
    )


def allocation_intervals(window: Interval, interval_ns: int) -> list[Interval]:
    """``window`` cut at every multiple of ``interval_ns`` since the epoch (UTC-aligned)."""
    if interval_ns <= 0:
        raise ValueError(f"interval_ns must be > 0, got {interval_ns}")
    out = []
    start = window.start_ns
    while start < window.end_ns:
        end = min(window.end_ns, (start // interval_ns + 1) * interval_ns)
        out.append(Interval(start, end))
        start = end
    return out


def overlap_ns(intervals: Sequence[Interval], window: Interval) -> int:
    return sum(
        max(0, min(i.end_ns, window.end_ns) - max(i.start_ns, window.start_ns)) for i in intervals
    )


def _weight(order: ServedOrder, interval: Interval, key: SharingKey) -> float:
    inside = overlap_ns(order.intervals, interval)
    if inside <= 0:
        return 0.0
    if key == "running_time":
        return inside / 1e9
    if key == "equal":
        return 1.0
    if key == "quantity":
        occupied = sum(i.end_ns - i.start_ns for i in order.intervals)
        quantity = order.quantity_good or 0.0
        return quantity * inside / occupied if occupied > 0 else 0.0
    return max(0.0, order.direct.get(interval.start_ns, 0.0))


def allocate_shared(
    energies: Sequence[tuple[Interval, float, float]],
    orders: Sequence[ServedOrder],
    key: SharingKey,
    clamped: Mapping[int, float] | None = None,
) -> SharedAllocation:
    """``energies``: per allocation interval, (interval, shared energy, measured part);
    ``clamped``: interval start -> how much its negative remainder was raised by (to 0)."""
    allocated: dict[str, list[float]] = {order.order_id: [] for order in orders}
    measured: dict[str, list[float]] = {order.order_id: [] for order in orders}
    unallocated: list[float] = []
    slices = []
    for interval, energy, measured_part in energies:
        weights = {
            order.order_id: weight
            for order in orders
            if (weight := _weight(order, interval, key)) > 0
        }
        raised = clamped.get(interval.start_ns, 0.0) if clamped else 0.0
        slices.append(SharedInterval(interval, energy, measured_part, weights, raised))
        total_weight = math.fsum(weights.values())
        if total_weight <= 0:
            unallocated.append(energy)
            continue
        for order_id, weight in weights.items():
            fraction = weight / total_weight
            allocated[order_id].append(energy * fraction)
            measured[order_id].append(measured_part * fraction)
    orders_energy = {order_id: math.fsum(parts) for order_id, parts in allocated.items()}
    return SharedAllocation(
        key=key,
        intervals=tuple(slices),
        orders=orders_energy,
        measured={order_id: math.fsum(parts) for order_id, parts in measured.items()},
        unallocated=math.fsum(unallocated),
        total=math.fsum(energy for _, energy, _ in energies),
    )
