"""Property tests of the pure attribution core (hypothesis)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.model import (
    Interval,
    MeterSeries,
    OrderSpan,
    Reading,
    SplitRule,
    StateChange,
)
from edge_agent.attribution.series import cumulative, energy_between

S = 1_000_000_000
H = 3600 * S

Scenario = tuple[MeterSeries, Interval, list[OrderSpan], list[StateChange]]
SPLITS: list[SplitRule] = ["equal", "quantity"]


def counter(readings: list[Reading], modulus: float | None = None) -> MeterSeries:
    return MeterSeries("m", "energy", "counter", tuple(readings), "kWh", 60.0, 30.0, modulus)


@st.composite
def true_readings(draw: st.DrawFn, *, min_start: float = 0.0) -> list[Reading]:
    """A monotonic counter read at irregular times, power always within the equipment's max."""
    count = draw(st.integers(2, 40))
    gaps = draw(st.lists(st.integers(S // 10, 60 * S), min_size=count - 1, max_size=count - 1))
    powers = draw(st.lists(st.floats(0.0, 50.0), min_size=count - 1, max_size=count - 1))
    value = draw(st.floats(min_start, 5000.0))
    # Half the meters also report active power with each counter reading: any value, not
    # always consistent with the counter (noise, a different moment), sometimes missing.
    with_power = draw(st.booleans())
    meter_powers = draw(
        st.lists(st.one_of(st.none(), st.floats(0.0, 60.0)), min_size=count, max_size=count)
    )
    t = 1_000 * S
    readings = [Reading(t, value, meter_powers[0] if with_power else None)]
    for gap, power, meter_power in zip(gaps, powers, meter_powers[1:], strict=True):
        t += gap
        value += power * gap / H
        readings.append(Reading(t, value, meter_power if with_power else None))
    return readings


@st.composite
def orders_in(draw: st.DrawFn, window: Interval) -> list[OrderSpan]:
    """Up to four orders with pauses, overlapping each other and sticking out of the window."""
    count = draw(st.integers(0, 4))
    orders = []
    span = window.end_ns - window.start_ns
    for index in range(count):
        pieces = sorted(
            draw(st.lists(st.integers(-span // 4, span + span // 4), min_size=2, max_size=6))
        )
        intervals = tuple(
            Interval(window.start_ns + a, window.start_ns + b)
            for a, b in zip(pieces[::2], pieces[1::2], strict=False)
            if b > a
        )
        quantity = draw(st.one_of(st.none(), st.floats(0.0, 100.0)))
        orders.append(OrderSpan(f"o{index}", intervals, quantity))
    return orders


@st.composite
def scenario(draw: st.DrawFn, *, method: str = "counter") -> Scenario:
    readings = draw(true_readings())
    if method == "power":
        powers = draw(
            st.lists(st.floats(0.0, 60.0), min_size=len(readings), max_size=len(readings))
        )
        readings = [Reading(r.t_ns, p) for r, p in zip(readings, powers, strict=True)]
        series = MeterSeries("m", "power", "power", tuple(readings), "kWh", 60.0, 30.0)
    else:
        series = counter(readings)
    first, last = readings[0].t_ns, readings[-1].t_ns
    # Windows may stick out of the readings on either side (extrapolation is allowed).
    a = draw(st.integers(first - 10 * S, last))
    b = draw(st.integers(a + 1, last + 10 * S))
    window = Interval(a, b)
    orders = draw(orders_in(window))
    times = sorted(draw(st.lists(st.integers(a - 5 * S, b), max_size=5)))
    states = [StateChange(t, draw(st.sampled_from(["idle", "running", "setup"]))) for t in times]
    return series, window, orders, states


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.one_of(scenario(), scenario(method="power")), st.sampled_from(SPLITS))
def test_conservation_orders_plus_idle_is_metered(case: Scenario, split: SplitRule) -> None:
    series, window, orders, states = case
    result = allocate(series, orders, window, split, states)
    given_out = math.fsum(share.energy for share in result.orders.values()) + result.idle.energy
    curve = cumulative(series)
    metered = curve.at(window.end_ns) - curve.at(window.start_ns)
    assert close(given_out, metered)
    assert close(result.total, metered)
    assert close(energy_between(curve, window.start_ns, window.end_ns).energy, metered)
    # the state breakdown adds up to each share, in energy and in time
    for share in [*result.orders.values(), result.idle]:
        if share.by_state:
            assert close(math.fsum(s.energy for s in share.by_state.values()), share.energy)
    if states:
        seconds = math.fsum(
            s.seconds for share in [*result.orders.values(), result.idle]
            for s in share.by_state.values()
        )  # fmt: skip
        # overlapping orders each count the shared seconds: at least the window, never less
        assert seconds >= (window.end_ns - window.start_ns) / S - 1e-6


@settings(max_examples=200, deadline=None)
@given(scenario(), st.floats(0.01, 0.99))
def test_additivity_cutting_the_window_changes_no_total(case: Scenario, fraction: float) -> None:
    series, window, orders, states = case
    cut = window.start_ns + int((window.end_ns - window.start_ns) * fraction)
    assume(window.start_ns < cut < window.end_ns)
    whole = allocate(series, orders, window, "equal", states)
    left = allocate(series, orders, Interval(window.start_ns, cut), "equal", states)
    right = allocate(series, orders, Interval(cut, window.end_ns), "equal", states)
    assert close(whole.total, left.total + right.total)
    # a counter's gap is exact as a whole but not once cut inside it: never more when cut
    assert whole.measured >= left.measured + right.measured - 1e-9
    assert close(whole.idle.energy, left.idle.energy + right.idle.energy)
    for order_id, share in whole.orders.items():
        assert close(share.energy, left.orders[order_id].energy + right.orders[order_id].energy)


@settings(max_examples=200, deadline=None)
@given(scenario(), st.data())
def test_additivity_cutting_an_order_in_two_changes_nothing(
    case: Scenario, data: st.DataObject
) -> None:
    series, window, orders, states = case
    assume(any(order.intervals for order in orders))
    target = data.draw(st.sampled_from([o for o in orders if o.intervals]))
    piece = data.draw(st.sampled_from(target.intervals))
    assume(piece.end_ns - piece.start_ns > 1)
    cut = data.draw(st.integers(piece.start_ns + 1, piece.end_ns - 1))
    halves = (Interval(piece.start_ns, cut), Interval(cut, piece.end_ns))
    intervals = tuple(i for i in target.intervals if i != piece) + halves
    split_order = OrderSpan(target.order_id, intervals, target.quantity_good)
    changed = [split_order if o is target else o for o in orders]
    before = allocate(series, orders, window, "quantity", states)
    after = allocate(series, changed, window, "quantity", states)
    assert close(before.idle.energy, after.idle.energy)
    for order_id, share in before.orders.items():
        assert close(share.energy, after.orders[order_id].energy)


@settings(max_examples=200, deadline=None)
@given(st.one_of(scenario(), scenario(method="power")))
def test_energy_is_never_negative_and_measured_within_bounds(case: Scenario) -> None:
    series, window, orders, states = case
    result = allocate(series, orders, window, "equal", states)
    assert result.total >= -1e-12
    assert result.idle.energy >= -1e-12
    assert all(share.energy >= -1e-12 for share in result.orders.values())
    for share in [*result.orders.values(), result.idle]:
        assert -1e-12 <= share.measured <= share.energy + 1e-9
    assert result.measured <= result.total + 1e-9
    assert 0.0 <= result.coverage <= 1.0
    curve = cumulative(series)
    if window.start_ns < curve.times[0] or window.end_ns > curve.times[-1]:
        assert any(f.code == "extrapolated" for f in result.flags)
        assert result.coverage < 1.0


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([6553.6, 10_000.0, 99_999.9]))
def test_invariance_under_counter_rollover(data: st.DataObject, modulus: float) -> None:
    readings = data.draw(true_readings())
    # Rollover is recognisable only when the counter moves less than half the modulus
    # between two readings (faster counters need a larger modulus: that is the meter's job).
    values = [r.value for r in readings]
    assume(values[-1] - values[0] > 1e-6)
    # Place the series so that the counter crosses its modulus somewhere in the middle.
    shift = modulus - values[0] - (values[-1] - values[0]) * data.draw(st.floats(0.05, 0.95))
    plain = counter([replace(r, value=r.value + shift) for r in readings])
    wrapped = counter(
        [replace(r, value=math.fmod(r.value, modulus)) for r in plain.readings], modulus
    )
    first, last = plain.readings[0].t_ns, plain.readings[-1].t_ns
    window = Interval(first, last)
    orders = data.draw(orders_in(window))
    expected = allocate(plain, orders, window)
    rolled = allocate(wrapped, orders, window)
    tolerance = 1e-9 * modulus * len(values)
    assert math.isclose(expected.total, rolled.total, abs_tol=tolerance)
    assert math.isclose(expected.idle.energy, rolled.idle.energy, abs_tol=tolerance)
    for order_id, share in expected.orders.items():
        assert math.isclose(share.energy, rolled.orders[order_id].energy, abs_tol=tolerance)
    crossed = any(b.value < a.value for a, b in itertools.pairwise(wrapped.readings))
    assert crossed == any(f.code == "counter_rollover" for f in rolled.flags)
    assert not any(f.code == "counter_reset" for f in rolled.flags)


@settings(max_examples=200, deadline=None)
@given(true_readings(min_start=200.0), st.data())
def test_reset_loses_at_most_the_reset_interval_and_is_flagged(
    readings: list[Reading], data: st.DataObject
) -> None:
    assume(len(readings) >= 3)
    k = data.draw(st.integers(1, len(readings) - 1))
    before, after = readings[k - 1], readings[k]
    # The counter restarts from 0 at some instant inside (t[k-1], t[k]].
    t_reset = data.draw(st.integers(before.t_ns + 1, after.t_ns))
    at_reset = before.value + (after.value - before.value) * (t_reset - before.t_ns) / (
        after.t_ns - before.t_ns
    )
    observed = readings[:k] + [replace(r, value=r.value - at_reset) for r in readings[k:]]
    window = Interval(readings[0].t_ns, readings[-1].t_ns)
    result = allocate(counter(observed), [], window)
    true_total = readings[-1].value - readings[0].value
    reset_interval = after.value - before.value
    assert true_total - reset_interval - 1e-9 <= result.total <= true_total + 1e-9
    assert [f.code for f in result.flags].count("counter_reset") == 1
    # the reset interval is not measured
    assert result.measured <= true_total - reset_interval + 1e-9


@settings(max_examples=150, deadline=None)
@given(true_readings(min_start=100.0), st.data())
def test_a_single_spike_or_dropout_is_rejected_and_changes_no_total(
    readings: list[Reading], data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, len(readings) - 1))
    before, after = readings[k - 1], readings[k]
    assume(after.t_ns - before.t_ns >= 2)
    t = data.draw(st.integers(before.t_ns + 1, after.t_ns - 1))
    bad = data.draw(st.sampled_from([0.0, before.value / 2, before.value + 1e4]))
    noisy = [*readings[:k], Reading(t, bad), *readings[k:]]
    window = Interval(readings[0].t_ns, readings[-1].t_ns)
    clean = allocate(counter(readings), [], window)
    result = allocate(counter(noisy), [], window)
    assert close(result.total, clean.total)
    codes = [f.code for f in result.flags]
    assert codes.count("spike_rejected") == 1
    assert "counter_reset" not in codes


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 40.0), min_size=2, max_size=30), st.integers(S, 10 * S))
def test_power_trapezoid_is_exact_for_piecewise_linear_power(
    powers: list[float], step: int
) -> None:
    readings = tuple(Reading(i * step, p) for i, p in enumerate(powers))
    series = MeterSeries("m", "power", "power", readings, "kWh", 40.0, 3600.0, None)
    end = (len(powers) - 1) * step
    result = allocate(series, [], Interval(0, end))
    exact = math.fsum((a + b) / 2 * step / H for a, b in itertools.pairwise(powers))
    assert math.isclose(result.total, exact, rel_tol=1e-9, abs_tol=1e-12)
    assert result.method == "power"
    # cutting inside a segment integrates the linear power exactly too
    mid = step // 2
    half = allocate(series, [], Interval(0, mid))
    p_mid = powers[0] + (powers[1] - powers[0]) * mid / step
    assert math.isclose(half.total, (powers[0] + p_mid) / 2 * mid / H, rel_tol=1e-9, abs_tol=1e-12)


def test_overlapping_orders_split_equal_or_by_quantity() -> None:
    series = counter([Reading(i * S, i * 0.01) for i in range(11)])  # 36 kW steady
    window = Interval(0, 10 * S)
    a = OrderSpan("a", (Interval(0, 10 * S),), 30.0)
    b = OrderSpan("b", (Interval(5 * S, 10 * S),), 10.0)
    equal = allocate(series, [a, b], window, "equal")
    assert math.isclose(equal.orders["a"].energy, 0.05 + 0.025)
    assert math.isclose(equal.orders["b"].energy, 0.025)
    by_quantity = allocate(series, [a, b], window, "quantity")
    assert math.isclose(by_quantity.orders["a"].energy, 0.05 + 0.0375)
    assert math.isclose(by_quantity.orders["b"].energy, 0.0125)
    assert {f.code for f in by_quantity.orders["b"].flags} == {"overlap_split"}
    # an order that shared nothing is not flagged
    alone = OrderSpan("c", (Interval(0, 2 * S),), 5.0)
    late = OrderSpan("d", (Interval(5 * S, 10 * S),), 5.0)
    assert allocate(series, [alone, late, b], window).orders["c"].flags == ()


def test_quantity_split_without_quantities_falls_back_to_equal_and_says_so() -> None:
    series = counter([Reading(i * S, i * 0.01) for i in range(11)])
    a = OrderSpan("a", (Interval(0, 10 * S),), 0.0)
    b = OrderSpan("b", (Interval(0, 10 * S),), None)
    result = allocate(series, [a, b], Interval(0, 10 * S), "quantity")
    assert math.isclose(result.orders["a"].energy, 0.05)
    assert math.isclose(result.orders["b"].energy, 0.05)
    assert {f.code for f in result.orders["a"].flags} == {"overlap_split", "split_equal_fallback"}


@st.composite
def stepping_machine(draw: st.DrawFn) -> tuple[list[Reading], list[tuple[int, float]]]:
    """A machine whose power steps at most once between two polls (start, stop, state change),
    polled with its counter and its power. Returns the readings and the true steps (t, kW)."""
    count = draw(st.integers(2, 30))
    polls = draw(st.lists(st.integers(S // 10, 20 * S), min_size=count - 1, max_size=count - 1))
    levels = draw(st.lists(st.floats(0.0, 50.0), min_size=count, max_size=count))
    fractions = draw(st.lists(st.floats(0.0, 1.0), min_size=count - 1, max_size=count - 1))
    t, value = 1_000 * S, draw(st.floats(0.0, 5000.0))
    readings = [Reading(t, value, levels[0])]
    steps = [(t, levels[0])]
    for poll, fraction, before, after in zip(polls, fractions, levels, levels[1:], strict=False):
        at = t + int(poll * fraction)
        value += (before * (at - t) + after * (t + poll - at)) / H
        t += poll
        steps.append((at, after))
        readings.append(Reading(t, value, after))
    return readings, steps


def true_counter(readings: list[Reading], steps: list[tuple[int, float]], t_ns: int) -> float:
    value, level, since = readings[0].value, steps[0][1], readings[0].t_ns
    for at, after in steps[1:]:
        if at >= t_ns:
            break
        value += level * (at - since) / H
        level, since = after, at
    return value + level * (t_ns - since) / H


@settings(max_examples=200, deadline=None)
@given(stepping_machine(), st.data())
def test_a_power_step_between_polls_is_placed_exactly(
    machine: tuple[list[Reading], list[tuple[int, float]]], data: st.DataObject
) -> None:
    """With the meter's power read alongside its counter, a boundary inside a poll interval
    gets the energy before and after the machine's step right — not a straight line."""
    readings, steps = machine
    curve = cumulative(counter(readings))
    first, last = readings[0].t_ns, readings[-1].t_ns
    a = data.draw(st.integers(first, last))
    b = data.draw(st.integers(a, last))
    exact = true_counter(readings, steps, b) - true_counter(readings, steps, a)
    assert math.isclose(curve.at(b) - curve.at(a), exact, rel_tol=1e-9, abs_tol=1e-9)


def test_a_counter_without_power_stays_a_straight_line_between_readings() -> None:
    """The step model needs both readings' power; a step the counter cannot have made (its
    increment outside p0·Δt..p1·Δt) falls back to the straight line too."""
    plain = cumulative(counter([Reading(0, 0.0), Reading(10 * S, 0.1)]))
    assert math.isclose(plain.at(5 * S), 0.05)
    inconsistent = cumulative(counter([Reading(0, 0.0, 1.0), Reading(10 * S, 0.1, 2.0)]))
    assert math.isclose(inconsistent.at(5 * S), 0.05)  # 36 kW average is not between 1 and 2
    # consistent: 0 kW, then 72 kW for the last 5 s → 0.1 kWh; the step is at 5 s
    step = cumulative(counter([Reading(0, 0.0, 0.0), Reading(10 * S, 0.1, 72.0)]))
    assert math.isclose(step.at(5 * S), 0.0, abs_tol=1e-12)
    assert math.isclose(step.at(7 * S), 0.04)
