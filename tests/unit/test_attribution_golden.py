"""Golden cases: tricky real-world sequences with numbers computed by hand (see each comment)."""

from __future__ import annotations

import pytest

from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.model import Interval, MeterSeries, OrderSpan, Reading, StateChange
from edge_agent.attribution.series import energy_between, integrate_power

S = 1_000_000_000
approx = pytest.approx


def counter(
    points: list[tuple[int, float]],
    *,
    modulus: float | None = None,
    max_kw: float = 40.0,
    gap_s: float = 90.0,
) -> MeterSeries:
    readings = tuple(Reading(t * S, v) for t, v in points)
    return MeterSeries("m1", "energy", "counter", readings, "kWh", max_kw, gap_s, modulus)


def codes(flags: tuple[object, ...]) -> list[str]:
    return [getattr(flag, "code", "") for flag in flags]


def test_rollover_of_a_16_bit_0_1_kwh_register() -> None:
    # 30 kW = 0.5 kWh per minute; the register wraps at 6553.6 between 60 s and 120 s.
    # Unwrapped: 6553.0, 6553.5, 6554.0, 6554.5 -> 1.5 kWh over [0, 180 s].
    # Order [30 s, 150 s]: C(30) = 0.25, C(150) = 1.25 -> 1.0 kWh; idle 0.5.
    series = counter([(0, 6553.0), (60, 6553.5), (120, 0.4), (180, 0.9)], modulus=6553.6)
    order = OrderSpan("o", (Interval(30 * S, 150 * S),), 10)
    result = allocate(series, [order], Interval(0, 180 * S))
    assert result.total == approx(1.5)
    assert result.orders["o"].energy == approx(1.0)
    assert result.idle.energy == approx(0.5)
    assert result.measured == approx(1.5)
    assert codes(result.flags) == ["counter_rollover"]
    assert result.flags[0].t_ns == 120 * S
    # the audit trail shows the registers as read, not the unwrapped values
    assert result.last_reading == Reading(180 * S, 0.9)


def test_reset_on_power_cycle() -> None:
    # 30 kW; the meter restarts at 0 somewhere in (60 s, 120 s] and reads 0.2 at 120 s.
    # Energy across the reset interval = 0.2 (the value after it), estimated.
    # Total [0, 180 s] = 0.5 + 0.2 + 0.5 = 1.2; measured = 1.0.
    # Order [90 s, 180 s]: C(90) = 0.5 + 0.2 * 30/60 = 0.6 -> 0.6 kWh, measured 0.5.
    series = counter([(0, 500.0), (60, 500.5), (120, 0.2), (180, 0.7)])
    order = OrderSpan("o", (Interval(90 * S, 180 * S),), 10)
    result = allocate(series, [order], Interval(0, 180 * S))
    assert result.total == approx(1.2)
    assert result.measured == approx(1.0)
    assert result.orders["o"].energy == approx(0.6)
    assert result.orders["o"].measured == approx(0.5)
    assert result.idle.energy == approx(0.6)
    assert result.idle.measured == approx(0.5)
    assert codes(result.flags) == ["counter_reset"]


def test_spike_then_new_baseline_after_meter_replacement() -> None:
    # 3.6 kW (0.01 kWh / 10 s), max 20 kW. At 20 s the counter jumps to 5000 and stays
    # consistent: three agreeing readings make a new baseline (energy across the jump unknown,
    # counted 0, estimated). Total [0, 50 s] = 0.01 + 0 + 0.03 = 0.04.
    series = counter(
        [(0, 100.0), (10, 100.01), (20, 5000.0), (30, 5000.01), (40, 5000.02), (50, 5000.03)],
        max_kw=20.0,
    )
    result = allocate(series, [], Interval(0, 50 * S))
    assert result.total == approx(0.04)
    assert result.measured == approx(0.04)
    assert codes(result.flags) == ["counter_rebased"]
    assert result.sample_count == 6
    # a lone spike is rejected and the counter goes on from the last good reading
    lone = counter([(0, 100.0), (10, 100.01), (20, 5000.0), (30, 100.03)], max_kw=20.0)
    assert allocate(lone, [], Interval(0, 30 * S)).total == approx(0.03)


def test_late_stop_beyond_the_last_reading_is_extrapolated() -> None:
    # 36 kW: 0.1 kWh per 10 s, readings 0..100 s. The stop is at 130 s (finalised by timeout,
    # no reading after it): [100, 130] continues the last segment's power, estimated.
    # Order [50 s, 130 s]: 0.8 kWh, measured 0.5, coverage 50 / 80 = 0.625.
    series = counter([(t, 1000.0 + t / 100) for t in range(0, 101, 10)])
    order = OrderSpan("o", (Interval(50 * S, 130 * S),), 20)
    result = allocate(series, [order], Interval(50 * S, 130 * S))
    assert result.orders["o"].energy == approx(0.8)
    assert result.orders["o"].measured == approx(0.5)
    assert result.coverage == approx(0.625)
    assert result.first_reading == Reading(50 * S, 1000.5)
    assert result.last_reading == Reading(100 * S, 1001.0)
    assert result.sample_count == 6
    assert codes(result.flags) == ["extrapolated"]


def test_overlapping_orders_with_quantity_split_and_states() -> None:
    # 36 kW: 0.01 kWh/s. A [0, 60 s] 30 good, B [30 s, 90 s] 10 good; window [0, 60 s].
    # [0, 30] A alone 0.3; [30, 60] shared 0.3 by 30:10 -> A 0.225, B 0.075.
    # States: running from 0, idle from 45 s. A running = 0.3 + 0.15 * 0.75 = 0.4125 (45 s),
    # A idle = 0.15 * 0.75 = 0.1125 (15 s); B running 0.0375 (15 s), idle 0.0375 (15 s).
    series = counter([(t, 10.0 + t / 100) for t in range(0, 91, 5)])
    a = OrderSpan("A", (Interval(0, 60 * S),), 30)
    b = OrderSpan("B", (Interval(30 * S, 90 * S),), 10)
    states = [StateChange(-5 * S, "running"), StateChange(45 * S, "idle")]
    result = allocate(series, [a, b], Interval(0, 60 * S), "quantity", states)
    share_a, share_b = result.orders["A"], result.orders["B"]
    assert share_a.energy == approx(0.525)
    assert share_b.energy == approx(0.075)
    assert result.idle.energy == approx(0.0)
    assert share_a.by_state["running"].energy == approx(0.4125)
    assert share_a.by_state["running"].seconds == approx(45.0)
    assert share_a.by_state["idle"].energy == approx(0.1125)
    assert share_a.by_state["idle"].seconds == approx(15.0)
    assert share_b.by_state["running"].energy == approx(0.0375)
    assert share_b.by_state["idle"].seconds == approx(15.0)
    assert codes(share_a.flags) == ["overlap_split"]


def test_communication_gap_keeps_the_counter_total_but_not_the_split() -> None:
    # 36 kW; readings at 0, 10, 20, 80, 90 s (gap_s 30: 20..80 is a gap).
    # Whole window [0, 90]: 0.9 kWh, all measured (a counter's total across a gap is exact),
    # coverage 30 / 90. Order [50, 90]: C(50) = 0.5 -> 0.4 kWh; measured only [80, 90] = 0.1.
    series = counter([(0, 0.0), (10, 0.1), (20, 0.2), (80, 0.8), (90, 0.9)], gap_s=30.0)
    order = OrderSpan("o", (Interval(50 * S, 90 * S),), 1)
    whole = allocate(series, [order], Interval(0, 90 * S))
    assert whole.total == approx(0.9)
    assert whole.measured == approx(0.9)
    assert whole.coverage == approx(1 / 3)
    assert whole.orders["o"].energy == approx(0.4)
    assert whole.orders["o"].measured == approx(0.1)
    assert codes(whole.flags) == ["gap"]
    part = allocate(series, [order], Interval(50 * S, 90 * S))
    assert part.measured == approx(0.1)
    assert part.coverage == approx(0.25)


def test_power_meter_trapezoid_and_gap() -> None:
    # Power 0 kW at 0, 20 kW at 1800 s, 20 kW at 3600 s: 0.5 * 20 * 0.5 h + 20 * 0.5 h = 15 kWh.
    # [900, 2700 s]: C(900) = 0.5 * 10 * 0.25 = 1.25, C(2700) = 5 + 20 * 0.25 = 10 -> 8.75.
    readings = (Reading(0, 0.0), Reading(1800 * S, 20.0), Reading(3600 * S, 20.0))
    series = MeterSeries("m2", "p", "power", readings, "kWh", 25.0, 3600.0)
    assert allocate(series, [], Interval(0, 3600 * S)).total == approx(15.0)
    order = OrderSpan("o", (Interval(900 * S, 2700 * S),), 4)
    result = allocate(series, [order], Interval(0, 3600 * S))
    assert result.orders["o"].energy == approx(8.75)
    assert result.idle.energy == approx(6.25)
    # With gap_s 600 s both segments are gaps: power across a gap is estimated, not measured.
    gappy = MeterSeries("m2", "p", "power", readings, "kWh", 25.0, 600.0)
    estimate = energy_between(integrate_power(gappy), 0, 3600 * S)
    assert estimate.energy == approx(15.0)
    assert estimate.measured == 0.0
    assert estimate.coverage == 0.0
    assert codes(estimate.flags) == ["gap", "gap"]


def test_float32_counter_resolution_is_reported() -> None:
    # A float32 kWh counter near 10,000 kWh steps by 1/1024 kWh: a 0.05 kWh order is ±0.002.
    series = MeterSeries(
        "m1", "energy", "counter",
        (Reading(0, 10_000.0), Reading(60 * S, 10_000.05)),
        "kWh", 40.0, 30.0, None, resolution=1 / 1024,
    )  # fmt: skip
    result = allocate(series, [], Interval(0, 60 * S))
    assert "counter_resolution" in codes(result.flags)
