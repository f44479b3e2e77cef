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
from dataclasses import replace

from edge_agent.attribution.model import (
    Flag,
    Interval,
    MeterAllocation,
    MeterSeries,
    OrderSpan,
    PointError,
    Share,
    SplitRule,
    StateChange,
    StateShare,
)
from edge_agent.attribution.series import (
    Cumulative,
    cumulative,
    dedupe,
    energy_between,
)

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
    # Each share's weight in every segment: its error is the sum of the point errors weighted
    # by the changes of its weight (what the segments' differences of C telescope to).
    weights: dict[str, list[float]] = {order.order_id: [] for order in orders}
    idle_weights: list[float] = []
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
        for series_weights in weights.values():
            series_weights.append(0.0)
        idle_weights.append(0.0 if active else 1.0)
        if not active:
            idle.add(energy, measured, state, seconds)
            continue
        split_shares, fell_back = split_weights(active, split)
        for order, weight in zip(active, split_shares, strict=True):
            weights[order.order_id][-1] = weight
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

    errors = [curve.point_error(t) for t in points]
    pieces = [curve.segment_bound(s, e) for s, e in itertools.pairwise(points)]
    shares = {
        order_id: _with_error(acc.share(), weights[order_id], points, errors, pieces, curve)
        for order_id, acc in per_order.items()
    }
    idle_share = _with_error(idle.share(), idle_weights, points, errors, pieces, curve)

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
    if any(curve.shaped):
        flags.append(
            Flag(
                "counter_shaped_by_power",
                f"{curve.label} register step {series.resolution:g} {series.unit} is coarse: "
                "each increment is spread by the meter's power readings",
            )
        )
    whole, whole_resolution = error_bound([1.0] * len(pieces), errors, pieces)
    return MeterAllocation(
        meter_id=series.meter_id,
        point=series.point,
        method=series.method,
        unit=series.unit,
        window=window,
        total=values[-1] - values[0],
        measured=max(0.0, piece.measured - whole_resolution),
        coverage=piece.coverage,
        orders=shares,
        idle=idle_share,
        first_reading=piece.first_reading,
        last_reading=piece.last_reading,
        sample_count=piece.sample_count,
        flags=tuple(flags),
        carrier=series.carrier,
        uncertainty=whole,
    )


def error_bound(
    weights: Sequence[float], errors: Sequence[PointError], pieces: Sequence[float]
) -> tuple[float, float]:
    """(bound on |error| of Σ weight·ΔC over the segments, the registers' resolution part).

    Σ_seg w·(δ(e) − δ(s)) = Σ_points δ(p)·(w before p − w after p): each point's error counts
    with the change of weight there; the centres' sum is a known offset, the widths add up.
    """
    centre: list[float] = []
    width: list[float] = []
    resolution: list[float] = []
    resolution_centre: list[float] = []
    sources: dict[int, tuple[list[float], float]] = {}
    for index, error in enumerate(errors):
        before = weights[index - 1] if index > 0 else 0.0
        after = weights[index] if index < len(weights) else 0.0
        change = before - after
        if change == 0.0:
            continue
        centre.append(change * error.centre)
        width.append(abs(change) * error.width)
        resolution.append(abs(change) * error.resolution)
        resolution_centre.append(change * error.resolution_centre)
        for source, coefficient, source_width in error.shared:
            terms, _ = sources.setdefault(source, ([], source_width))
            terms.append(change * coefficient)
    shared = math.fsum(abs(math.fsum(terms)) * sw for terms, sw in sources.values())
    additive = math.fsum(w * piece for w, piece in zip(weights, pieces, strict=True))
    bound = abs(math.fsum(centre)) + math.fsum(width) + shared + additive
    resolution.append(shared)
    return bound, abs(math.fsum(resolution_centre)) + math.fsum(resolution)


def _with_error(
    share: Share,
    weights: Sequence[float],
    points: Sequence[int],
    errors: Sequence[PointError],
    pieces: Sequence[float],
    curve: Cumulative,
) -> Share:
    """``share`` with its error bound, its unresolved part taken out of the measured energy,
    and a flag for each of its boundaries that fell in a reading gap."""
    bound, unresolved = error_bound(weights, errors, pieces)
    flags = list(share.flags)
    for index, t_ns in enumerate(points):
        before = weights[index - 1] if index > 0 else 0.0
        after = weights[index] if index < len(weights) else 0.0
        if before != after:
            flag = curve.boundary_flag(t_ns, "boundary")
            if flag is not None:
                flags.append(flag)
    return replace(
        share,
        measured=max(0.0, share.measured - unresolved),
        flags=tuple(dedupe(flags)),
        uncertainty=bound,
    )
