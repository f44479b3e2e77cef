"""A shared part's stated uncertainty must cover its actual error, as a direct share's does.

A shared meter (optionally less a sub-meter) is read like any counter; its energy is cut into
UTC-aligned allocation intervals and split among orders by a key. The weights are exact (MES
times), so an order's true part is the true energy of each interval split with the same
weights; :func:`order_bound` must contain |allocated − true| for every order.
"""

from __future__ import annotations

import math

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from edge_agent.attribution.model import Interval, MeterSeries
from edge_agent.attribution.series import Cumulative, cumulative
from edge_agent.attribution.shared import (
    ServedOrder,
    SharingKey,
    allocate_shared,
    allocation_intervals,
    order_bound,
)
from tests.unit.test_uncertainty import MAX_KW, Load, S, loads, poll_times, read


def counter(
    load: Load, times: list[int], step: float, offset: float, interval_s: float
) -> Cumulative:
    series = MeterSeries(
        "m", "energy", "counter", tuple(read(load, times, step, offset, with_power=False)),
        "kWh", 2 * MAX_KW, 3 * interval_s + 1.0, resolution=step, boundary_gap_s=1.5 * interval_s,
    )  # fmt: skip
    return cumulative(series)


def served(draw: st.DrawFn, end: int) -> list[ServedOrder]:
    orders = []
    for n in range(draw(st.integers(1, 4))):
        a = draw(st.integers(0, end - 1))
        b = draw(st.integers(a + 1, end))
        quantity = draw(st.one_of(st.none(), st.floats(1.0, 50.0)))
        orders.append(ServedOrder(f"o{n}", (Interval(a, b),), quantity))
    return orders


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.sampled_from([0.0, 0.001, 0.01]),
    st.sampled_from(["running_time", "equal", "quantity"]),
    st.booleans(),
)
def test_shared_part_uncertainty_covers_the_true_error(
    data: st.DataObject, step: float, key: SharingKey, with_sub_meter: bool
) -> None:
    load = data.draw(loads(min_step_s=0.1))
    end = load.times[-1]
    read_every_s = data.draw(st.sampled_from([1.0, 2.0, 5.0]))
    main_times = data.draw(poll_times(end, read_every_s))
    assume(len(main_times) >= 2)
    main = counter(load, main_times, step, data.draw(st.floats(0.0, 1000.0)), read_every_s)
    # The sub-meter measures part of the main meter's load (half of it, read at other times).
    sub_load = Load(load.times, tuple(kw / 2 for kw in load.kw))
    curves = [main]
    if with_sub_meter:
        sub_times = data.draw(poll_times(end, read_every_s))
        assume(len(sub_times) >= 2)
        curves.append(counter(sub_load, sub_times, step, 5.0, read_every_s))
    orders = served(data.draw, end)
    interval_s = data.draw(st.sampled_from([1, 2, 5, 60]))
    first = min(o.intervals[0].start_ns for o in orders)
    last = max(o.intervals[0].end_ns for o in orders)
    intervals = allocation_intervals(Interval(first, last), interval_s * S)

    def remainder(energy: float, sub: float) -> float:
        return max(0.0, energy - sub) if with_sub_meter else energy

    energies = []
    true_energies = []
    clamped = {}
    for interval in intervals:
        a, b = interval.start_ns, interval.end_ns
        main_energy = main.at(b) - main.at(a)
        sub_energy = curves[-1].at(b) - curves[-1].at(a) if with_sub_meter else 0.0
        counted = remainder(main_energy, sub_energy)
        if with_sub_meter and main_energy < sub_energy:
            # Sub-meters read above the main one: taken as 0 (flagged sub_meters_exceed_main).
            clamped[a] = sub_energy - main_energy
            event("a sub-meter read above the main one")
        energies.append((interval, counted, counted))
        true_energies.append(
            remainder(load.energy(b) - load.energy(a), sub_load.energy(b) - sub_load.energy(a))
        )
    allocation = allocate_shared(energies, orders, key, clamped)
    for order in orders:
        truth = math.fsum(
            true_energy * part.weights[order.order_id] / part.total_weight
            for part, true_energy in zip(allocation.intervals, true_energies, strict=True)
            if order.order_id in part.weights
        )
        error = abs(allocation.orders[order.order_id] - truth)
        bound = order_bound(allocation, curves, order.order_id)
        assert error <= bound + 1e-9 + 1e-9 * abs(truth), (order.order_id, error, bound)


def test_an_order_whose_share_changes_inside_the_window_carries_every_edges_error() -> None:
    """Alone in the first interval, halved in the second: its part depends on the reading
    error at the edge between them, which a pro-rata part of the window's bound misses."""
    load = Load((0, 1 * S, 4 * S), (10.0, 0.0))  # 10 kW for a second, then nothing
    curve = counter(load, [0, 4 * S], 0.0, 0.0, 4.0)  # read at the window's ends only
    intervals = allocation_intervals(Interval(0, 4 * S), 2 * S)
    energies = [(i, curve.at(i.end_ns) - curve.at(i.start_ns), 0.0) for i in intervals]
    orders = [
        ServedOrder("a", (Interval(0, 4 * S),)),
        ServedOrder("b", (Interval(2 * S, 4 * S),)),
    ]
    allocation = allocate_shared(energies, orders, "equal")
    true_a = load.energy(2 * S) + (load.energy(4 * S) - load.energy(2 * S)) / 2
    error = abs(allocation.orders["a"] - true_a)
    assert error > 0.0005  # interpolation put half the energy after the edge: 0.00069 kWh off
    assert error <= order_bound(allocation, [curve], "a") + 1e-15
    # The window's ends were read: its total is exact, so no pro-rata part of it covers this.
    assert allocation.total == load.energy(4 * S)


def test_a_remainder_raised_to_zero_widens_the_bound_by_what_it_gave() -> None:
    """A sub-meter read every second, its main meter only at the window's ends: the sub-meter
    shows a burst in one second that the main meter's interpolation spreads over four, so that
    second's remainder is negative and taken as 0 (flagged sub_meters_exceed_main). The order
    gets what the clamp added; the ends were read exactly, so only that term covers it."""
    load = Load((0, 1 * S, 2 * S, 4 * S), (0.0, 3.6, 0.0))  # 0.001 kWh in the second second
    main = counter(load, [0, 4 * S], 0.0, 0.0, 4.0)
    sub = counter(load, [0, 1 * S, 2 * S, 3 * S, 4 * S], 0.0, 0.0, 1.0)  # carries all of it
    energies = []
    clamped = {}
    for interval in allocation_intervals(Interval(0, 4 * S), 1 * S):
        a, b = interval.start_ns, interval.end_ns
        remainder = (main.at(b) - main.at(a)) - (sub.at(b) - sub.at(a))
        if remainder < 0:
            clamped[a] = -remainder
        energies.append((interval, max(0.0, remainder), 0.0))
    assert list(clamped) == [1 * S]
    orders = [ServedOrder("a", (Interval(0, 4 * S),))]
    allocation = allocate_shared(energies, orders, "equal", clamped)
    error = abs(allocation.orders["a"] - 0.0)  # the true remainder is 0 throughout
    assert math.isclose(error, 0.00075)
    assert error <= order_bound(allocation, [main, sub], "a") + 1e-15
    without_clamp_term = allocate_shared(energies, orders, "equal")
    assert order_bound(without_clamp_term, [main, sub], "a") < error
