"""Machine state derived from power, and the series helpers (energy_between, float32 step)."""

from __future__ import annotations

import struct

import pytest

from edge_agent.attribution.model import MeterSeries, Reading, StateChange
from edge_agent.attribution.series import clean_counter, energy_between, float32_step
from edge_agent.attribution.states import derive_states

S = 1_000_000_000


def profile(*steps: tuple[int, int, float]) -> list[Reading]:
    """Readings every second: (from_s, to_s exclusive, kW)."""
    return [Reading(t * S, kw) for start, end, kw in steps for t in range(start, end)]


POWER = profile(
    (0, 10, 0.0),  # off
    (10, 30, 3.0),  # idle
    (30, 35, 8.0),  # 5 s blip above running: shorter than the dwell
    (35, 40, 3.0),
    (40, 60, 8.0),  # running
    (60, 80, 4.8),  # below 5 kW but inside the 0.5 kW band: still running
    (80, 100, 4.4),  # below the band: idle
)


def test_thresholds_hysteresis_and_dwell() -> None:
    changes = derive_states(POWER, 0.5, 5.0, hysteresis_kw=0.5, min_dwell_s=10.0)
    assert changes == [
        StateChange(0, "off"),
        StateChange(10 * S, "idle"),  # dated at the first reading that showed it
        StateChange(40 * S, "running"),
        StateChange(80 * S, "idle"),
    ]


def test_without_dwell_or_band_every_crossing_is_a_state() -> None:
    changes = derive_states(POWER, 0.5, 5.0)
    assert [(c.t_ns // S, c.state) for c in changes] == [
        (0, "off"), (10, "idle"), (30, "running"), (35, "idle"), (40, "running"), (60, "idle"),
    ]  # fmt: skip


def test_moving_up_needs_the_band_too() -> None:
    readings = profile((0, 5, 3.0), (5, 10, 5.2), (10, 15, 5.6))
    changes = derive_states(readings, 0.5, 5.0, hysteresis_kw=0.5)
    assert [(c.t_ns // S, c.state) for c in changes] == [(0, "idle"), (10, "running")]
    assert derive_states([], 0.5, 5.0) == []


def test_energy_between_reports_provenance() -> None:
    readings = tuple(Reading(t * S, 50.0 + t * 0.01) for t in range(0, 61, 10))
    series = MeterSeries("m", "e", "counter", readings, "kWh", 40.0, 15.0)
    curve = clean_counter(series)
    piece = energy_between(curve, 15 * S, 45 * S)
    assert piece.energy == pytest.approx(0.3)
    assert piece.measured == pytest.approx(0.3)
    assert piece.coverage == 1.0
    assert piece.first_reading == Reading(10 * S, 50.1)
    assert piece.last_reading == Reading(50 * S, 50.5)
    assert piece.sample_count == 3  # 20, 30, 40 s
    assert piece.flags == ()
    # before the first reading: estimated with the first segment's power, not measured
    early = energy_between(curve, -30 * S, 10 * S)
    assert early.energy == pytest.approx(0.4)
    assert early.measured == pytest.approx(0.1)
    assert early.coverage == pytest.approx(0.25)
    assert [f.code for f in early.flags] == ["extrapolated"]
    # a zero-length window inside the readings is covered and empty
    instant = energy_between(curve, 25 * S, 25 * S)
    assert (instant.energy, instant.coverage) == (0.0, 1.0)


def test_corrections_are_reported_only_for_windows_they_touch() -> None:
    readings = (Reading(0, 6553.0), Reading(10 * S, 6553.5), Reading(20 * S, 0.4),
                Reading(30 * S, 0.9), Reading(40 * S, 1.4))  # fmt: skip
    series = MeterSeries("m", "e", "counter", readings, "kWh", 200.0, 15.0, 6553.6)
    curve = clean_counter(series)
    assert [f.code for f in energy_between(curve, 5 * S, 15 * S).flags] == ["counter_rollover"]
    assert energy_between(curve, 20 * S, 40 * S).flags == ()


def test_float32_step() -> None:
    assert float32_step(10_000.0) == 1 / 1024
    assert float32_step(1.0) == 2.0**-23
    assert float32_step(0.0) == 0.0
    # the next float32 above 10,000 is exactly one step away
    as_float32 = struct.unpack("<f", struct.pack("<f", 10_000.0 + 0.6 / 1024))[0]
    assert as_float32 == 10_000.0 + float32_step(10_000.0)
