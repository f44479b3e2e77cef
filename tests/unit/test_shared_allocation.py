"""Shared equipment and time-varying factors (issue 10): the pure allocation conserves energy
for any configuration, and cutting an order at factor changes never changes its energy."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.attribution.factors import cut_points, rescale, split_by_factors
from edge_agent.attribution.model import Factor, Interval
from edge_agent.attribution.shared import (
    ServedOrder,
    allocate_shared,
    allocation_intervals,
)

S = 1_000_000_000
KEYS = ("running_time", "direct_energy", "quantity", "equal")


@st.composite
def plants(draw: st.DrawFn) -> tuple[list[tuple[Interval, float, float]], list[ServedOrder]]:
    step = draw(st.sampled_from([1, 5, 60])) * S
    count = draw(st.integers(1, 40))  # allocation intervals
    start = draw(st.integers(0, 10_000)) * S // 7
    end = (start // step + count) * step - draw(st.integers(0, step // S - 1)) * S // 2
    intervals = allocation_intervals(Interval(start, max(end, start + 1)), step)
    n = len(intervals)
    values = draw(st.lists(st.floats(0, 50, allow_nan=False), min_size=n, max_size=n))
    shares = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    energies = [(i, e, e * m) for i, e, m in zip(intervals, values, shares, strict=True)]
    length = intervals[-1].end_ns - start
    orders = []
    for index in range(draw(st.integers(0, 6))):
        a = draw(st.integers(start - length, start + length))
        b = draw(st.integers(a + 1, a + 2 * length + 1))
        direct_values = draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=n, max_size=n))
        picked = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        direct = {
            i.start_ns: v
            for i, v, keep in zip(intervals, direct_values, picked, strict=True)
            if keep
        }
        quantity = draw(st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)))
        orders.append(ServedOrder(f"o{index}", (Interval(a, b),), quantity, direct))
    return energies, orders


@settings(max_examples=200, deadline=None)
@given(plants(), st.sampled_from(KEYS))
def test_orders_and_unallocated_add_up_to_the_shared_energy(
    plant: tuple[list[tuple[Interval, float, float]], list[ServedOrder]], key: str
) -> None:
    energies, orders = plant
    result = allocate_shared(energies, orders, key)  # type: ignore[arg-type]
    total = math.fsum(e for _, e, _ in energies)
    given_out = math.fsum(result.orders.values()) + result.unallocated
    assert math.isclose(given_out, total, rel_tol=1e-9, abs_tol=1e-9)
    assert all(v >= 0 for v in result.orders.values())
    for part in result.intervals:  # interval by interval, too
        shares = math.fsum(part.share_of(o.order_id) for o in orders)
        expected = part.energy if part.weights else 0.0
        assert math.isclose(shares, expected, rel_tol=1e-9, abs_tol=1e-9)
    # An order that never overlaps the window gets nothing.
    for order in orders:
        if all(o.end_ns <= energies[0][0].start_ns or o.start_ns >= energies[-1][0].end_ns
               for o in order.intervals):  # fmt: skip
            assert result.orders[order.order_id] == 0.0


@given(st.integers(0, 10**12), st.integers(1, 10**12), st.sampled_from([1, 60, 900]))
def test_allocation_intervals_tile_the_window_on_utc_multiples(
    start: int, length: int, step_s: int
) -> None:
    window = Interval(start, start + length)
    parts = allocation_intervals(window, step_s * S)
    assert parts[0].start_ns == window.start_ns
    assert parts[-1].end_ns == window.end_ns
    for first, second in itertools.pairwise(parts):
        assert first.end_ns == second.start_ns
        assert first.end_ns % (step_s * S) == 0


def _factor(value: float, start: int | None, end: int | None) -> Factor:
    return Factor(
        "electricity", value, "kgCO2e/kWh", "t", "1", False, "location", None, None, start, end
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=6),
    st.integers(1, 50),
    st.integers(0, 200),
    st.integers(1, 200),
    st.floats(0, 100, allow_nan=False),
)
def test_cutting_at_factor_changes_keeps_the_activity_and_uses_each_rows_value(
    values: list[float], row_s: int, start_s: int, length_s: int, total: float
) -> None:
    rows = [_factor(v, i * row_s * S, (i + 1) * row_s * S) for i, v in enumerate(values)]
    window = Interval(start_s * S, (start_s + length_s) * S)
    cuts = cut_points([rows], window)
    edges = [window.start_ns, *cuts, window.end_ns]
    pieces = [(Interval(a, b), (b - a) / S, (b - a) / S, 0.0) for a, b in itertools.pairwise(edges)]
    pieces = rescale(pieces, total, total / 2)
    uses, flags = split_by_factors(pieces, rows)
    assert math.isclose(math.fsum(u.activity for u in uses), total, rel_tol=1e-9, abs_tol=1e-9)
    # Uniform activity over time: the CO2e is the time-weighted factor, rows beyond the table
    # extrapolated (and flagged).
    table_end = len(values) * row_s * S
    expected = 0.0
    for interval, activity, _, _ in pieces:
        middle = (interval.start_ns + interval.end_ns) // 2
        index = min(middle // (row_s * S), len(values) - 1)
        expected += activity * values[index]
    got = math.fsum(u.activity * u.factor.value for u in uses)
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    assert bool(flags) == (window.end_ns > table_end)


def test_a_subnormal_weight_gives_the_whole_interval_not_more() -> None:
    # Found by the property test: energy x weight underflowed before the division.
    interval = Interval(340 * S, 341 * S)
    order = ServedOrder("o0", (Interval(287 * S, 344 * S),), None, {340 * S: 5e-324})
    result = allocate_shared([(interval, 1.5, 0.0)], [order], "direct_energy")
    assert result.orders["o0"] == 1.5
    assert result.unallocated == 0.0
