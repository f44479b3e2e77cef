"""Give a meter's energy in a window to the orders that occupied its equipment (pure).

The window is cut at every order boundary and state change; each elementary segment's energy
C(e) − C(s) goes to the orders active in it (split equally or by good quantity) or to idle.
Because every piece is a difference of the same C, the pieces add up to C(end) − C(start).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

from edge_agent.attribution.model import (
    Flag,
    Interval,
    MeterAllocation,
    MeterSeries,
    OrderSpan,
    Share,
    SplitRule,
    StateChange,
    StateShare,
)
from edge_agent.attribution.series import cumulative, dedupe, energy_between

UNKNOWN_STATE = "unknown"
# Quantisation of the counter worth telling the consumer: ±2 steps over this share of the energy.
RESOLUTION_NOTICE = 0.001


class _Accumulator:
    def __init__(self) -> None:
        self.energy: list[float] = []
        self.measured: list[float] = []
        self.by_state: dict[str, tuple[list[float], list[float]]] = {}
        self.flags: list[Flag] = []

    def add(self, energy: float, measured: float, state: str | None, seconds: float) -> None:
        self.energy.append(energy)
        self.measured.append(measured)
        if state is not None:
            energies, durations = self.by_state.setdefault(state, ([], []))
            energies.append(energy)
            durations.append(seconds)

    def share(self) -> Share:
        return Share(
            energy=math.fsum(self.energy),
            measured=math.fsum(self.measured),
            by_state={
                state: StateShare(math.fsum(energies), math.fsum(durations))
                for state, (energies, durations) in sorted(self.by_state.items())
            },
            flags=tuple(dedupe(self.flags)),
        )


def state_at(states: Sequence[StateChange], t_ns: int) -> str:
    """The state in force at ``t_ns`` (``states`` sorted by time); unknown before the first."""
    index = bisect.bisect_right([change.t_ns for change in states], t_ns) - 1
    return states[index].state if index >= 0 else UNKNOWN_STATE


def split_weights(active: Sequence[OrderSpan], rule: SplitRule) -> tuple[list[float], bool]:
    """Weights of the orders sharing a segment, and whether quantity fell back to equal."""
    if len(active) == 1:
        return [1.0], False
    quantities = [order.quantity_good or 0.0 for order in active]
    if rule == "quantity" and all(q > 0 for q in quantities):
        total = math.fsum(quantities)
        return [q / total for q in quantities], False
    return [1.0 / len(active)] * len(active), rule == "quantity"


def allocate(
    series: MeterSeries,
    orders: Sequence[OrderSpan],
    window: Interval,
    split: SplitRule = "equal",
    states: Sequence[StateChange] = (),
) -> MeterAllocation:
    curve = cumulative(series)
    a, b = window.start_ns, window.end_ns
    cuts = {a, b}
    for order in orders:
        for interval in order.intervals:
            cuts.update(t for t in (interval.start_ns, interval.end_ns) if a < t < b)
    ordered_states = sorted(states, key=lambda change: change.t_ns)
    state_times = [change.t_ns for change in ordered_states]
    cuts.update(t for t in state_times if a < t < b)
    points = sorted(cuts)

    per_order = {order.order_id: _Accumulator() for order in orders}
    idle = _Accumulator()
    values = [curve.at(t) for t in points]
    for (s, e), (cs, ce) in zip(
        itertools.pairwise(points), itertools.pairwise(values), strict=True
    ):
        energy = ce - cs
        measured, _ = curve.measured_part(s, e)
        seconds = (e - s) / 1e9
        state = None
        if ordered_states:
            index = bisect.bisect_right(state_times, s) - 1
            state = ordered_states[index].state if index >= 0 else UNKNOWN_STATE
        active = [
            order
            for order in orders
            if any(i.start_ns <= s and e <= i.end_ns for i in order.intervals)
        ]
        if not active:
            idle.add(energy, measured, state, seconds)
            continue
        weights, fell_back = split_weights(active, split)
        for order, weight in zip(active, weights, strict=True):
            target = per_order[order.order_id]
            target.add(energy * weight, measured * weight, state, seconds)
            if len(active) > 1:
                how = "equally" if split == "equal" or fell_back else "by good quantity"
                others = ", ".join(o.order_id for o in active if o is not order)
                target.flags.append(
                    Flag("overlap_split", f"shared the equipment with {others}, split {how}")
                )
            if fell_back:
                target.flags.append(
                    Flag("split_equal_fallback", "quantity split without quantities: split equally")
                )

    piece = energy_between(curve, a, b)
    flags = list(piece.flags)
    if series.resolution > 0 and 2 * series.resolution > RESOLUTION_NOTICE * abs(piece.energy):
        flags.append(
            Flag(
                "counter_resolution",
                f"{curve.label} register step {series.resolution:g} {series.unit}: "
                f"±{2 * series.resolution:g} on {piece.energy:.6g} {series.unit}",
            )
        )
    return MeterAllocation(
        meter_id=series.meter_id,
        point=series.point,
        method=series.method,
        unit=series.unit,
        window=window,
        total=values[-1] - values[0],
        measured=piece.measured,
        coverage=piece.coverage,
        orders={order_id: acc.share() for order_id, acc in per_order.items()},
        idle=idle.share(),
        first_reading=piece.first_reading,
        last_reading=piece.last_reading,
        sample_count=piece.sample_count,
        flags=tuple(flags),
        carrier=series.carrier,
    )
