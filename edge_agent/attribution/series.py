"""A meter's readings as a cumulative energy function C(t) (pure).

Counters are cleaned first — rollovers unwrapped, resets and spikes detected — so that C is
monotonic; power-only meters are integrated (trapezoid of piecewise-linear power). Every energy
in the core is then C(b) − C(a), which telescopes: cutting a window anywhere changes no total,
and orders + idle always add up to the metered energy.

Between two counter readings C is a straight line — unless both readings carry the meter's
active power p0 and p1 and the counter's increment lies between p0·Δt and p1·Δt. Then the
interval is read as one power step: p0 until a moment τ, p1 after it, with τ placed so that the
step spends exactly the measured increment. That is what happens when a machine starts or
stops between two polls, and it puts an order boundary's energy on the right side of the
boundary instead of smearing the step over the poll interval. The curve still passes through
every reading and stays monotonic, so the totals above are unchanged.

Outside the readings (before the first, after the last) C is extrapolated and the energy there
is an estimate, never measured: a counter continues with its nearest segment's average power,
a power meter holds its nearest power reading.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, replace

from edge_agent.attribution.model import NS_PER_HOUR, Flag, MeterSeries, PointError, Reading
from edge_agent.attribution.shaping import shape_counter

# A reading whose implied power exceeds the equipment's maximum by this factor is a spike.
SPIKE_MARGIN = 1.5
# Implausible readings that agree with each other this many times in a row are a new baseline.
REBASE_AFTER = 3
# Counters that step back by less than this (relative) are float noise, not a reset.
_NOISE = 1e-7


@dataclass(frozen=True, slots=True)
class Correction:
    """A flag and the stretch of time it concerns, so a window reports only its own events."""

    flag: Flag
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class Cumulative:
    """C(t) known at ``times``; ``estimated[i]`` marks segment [times[i], times[i+1]].

    ``readings`` are the raw readings that were kept (aligned with ``times``): the audit trail.
    """

    times: tuple[int, ...]
    values: tuple[float, ...]
    estimated: tuple[bool, ...]  # one per segment (len(times) - 1)
    corrections: tuple[Correction, ...]
    gap_ns: int
    powers: tuple[float, ...] = ()  # kW at ``times`` for power series (quadratic segments)
    readings: tuple[Reading, ...] = ()
    label: str = ""  # meter.point, for flag details
    resolution: float = 0.0  # the register's step (0 = unknown or negligible)
    max_rate: float = math.inf  # the most a real meter can count, per nanosecond
    boundary_gap_ns: int | None = None  # a boundary between readings further apart is estimated
    outages: tuple[tuple[int, int], ...] = ()  # the agent's own down-times
    # Coarse counters shaped by the meter's power (see shaping.py): per segment, whether its
    # increment follows the power readings; per knot, (centre, half-width) of true − C.
    shaped: tuple[bool, ...] = ()
    knot_errors: tuple[PointError, ...] = ()

    @property
    def flags(self) -> tuple[Flag, ...]:
        return tuple(correction.flag for correction in self.corrections)

    def at(self, t_ns: int) -> float:
        """C(t): interpolated inside the readings, extrapolated outside (see module doc)."""
        times = self.times
        if not times:
            return 0.0
        if t_ns <= times[0]:
            return self.values[0] - self._edge_rate(first=True) * (times[0] - t_ns)
        if t_ns >= times[-1]:
            return self.values[-1] + self._edge_rate(first=False) * (t_ns - times[-1])
        index = bisect.bisect_right(times, t_ns) - 1
        return self._segment_value(index, t_ns)

    def _edge_rate(self, *, first: bool) -> float:
        """Energy per nanosecond used to extrapolate beyond the first or last reading."""
        if self.powers:
            return (self.powers[0] if first else self.powers[-1]) / NS_PER_HOUR
        if len(self.times) < 2:
            return 0.0
        i = 0 if first else len(self.times) - 2
        return (self.values[i + 1] - self.values[i]) / (self.times[i + 1] - self.times[i])

    def _segment_value(self, i: int, t_ns: int) -> float:
        t0, t1 = self.times[i], self.times[i + 1]
        c0, c1 = self.values[i], self.values[i + 1]
        if self.powers:
            # Exact integral of the linear power between the two readings.
            p0, p1 = self.powers[i], self.powers[i + 1]
            dt_h = (t_ns - t0) / NS_PER_HOUR
            span_h = (t1 - t0) / NS_PER_HOUR
            slope = (p1 - p0) / span_h
            return c0 + p0 * dt_h + 0.5 * slope * dt_h * dt_h
        if self.shaped and self.shaped[i]:
            return c0 + (c1 - c0) * _power_fraction(self.readings[i], self.readings[i + 1], t_ns)
        step = self._power_step(i)
        if step is not None:
            p0, tau_h, p1 = step
            dt_h = (t_ns - t0) / NS_PER_HOUR
            if dt_h <= tau_h:
                return c0 + p0 * dt_h
            return c1 - p1 * (t1 - t_ns) / NS_PER_HOUR
        return c0 + (c1 - c0) * (t_ns - t0) / (t1 - t0)

    def _power_step(self, i: int) -> tuple[float, float, float] | None:
        """(p0 kW, hours from times[i] to the step, p1 kW) when the counter segment i is
        consistent with a single power step between its readings' powers, else None."""
        if not self.readings or self.estimated[i]:
            return None
        t0, t1 = self.times[i], self.times[i + 1]
        if t1 - t0 > self.gap_ns:
            return None  # across a gap one step is no better a guess than a straight line
        p0, p1 = self.readings[i].power_kw, self.readings[i + 1].power_kw
        if p0 is None or p1 is None or p0 == p1 or min(p0, p1) < 0:
            return None  # no power, no step, or export (the step model needs C to rise)
        span_h = (t1 - t0) / NS_PER_HOUR
        tau_h = (self.values[i + 1] - self.values[i] - p1 * span_h) / (p0 - p1)
        if not 0.0 <= tau_h <= span_h:
            return None  # more than one change, or power noise: the straight line stays
        return p0, tau_h, p1

    def measured_part(self, a_ns: int, b_ns: int) -> tuple[float, int]:
        """(energy of [a, b] that is measured, nanoseconds of [a, b] backed by readings)."""
        if len(self.times) < 2 or b_ns <= a_ns:
            return 0.0, 0
        measured: list[float] = []
        covered = 0
        lo = max(a_ns, self.times[0])
        hi = min(b_ns, self.times[-1])
        if hi <= lo:
            return 0.0, 0
        first = max(bisect.bisect_right(self.times, lo) - 1, 0)
        for i in range(first, len(self.times) - 1):
            t0, t1 = self.times[i], self.times[i + 1]
            if t0 >= hi:
                break
            s, e = max(t0, lo), min(t1, hi)
            if e <= s or self.estimated[i]:
                continue
            whole = s == t0 and e == t1
            # A boundary inside a segment was read on its event only when the readings around
            # it are close: otherwise its place in the segment is a guess.
            if not whole and self.estimated_boundary_gap(i) is not None:
                continue
            short = (t1 - t0) <= self.gap_ns
            # A counter's total across a gap is exact; only a boundary inside a gap is a guess.
            counter_total = not self.powers and whole
            if short or counter_total:
                measured.append(self._segment_value(i, e) - self._segment_value(i, s))
            if short:
                covered += e - s
        return math.fsum(measured), covered

    def estimated_boundary_gap(self, i: int) -> int | None:
        """The length of segment ``i`` when a boundary inside it is an estimate: the readings
        are further apart than the boundary-gap threshold, or the agent was down in between."""
        t0, t1 = self.times[i], self.times[i + 1]
        if self.boundary_gap_ns is not None and t1 - t0 > self.boundary_gap_ns:
            return t1 - t0
        if any(start < t1 and end > t0 for start, end in self.outages):
            return t1 - t0
        return None

    def boundary_flag(self, t_ns: int, what: str) -> Flag | None:
        """A flag when ``t_ns`` falls inside a segment where a boundary is an estimate."""
        times = self.times
        if len(times) < 2 or not times[0] < t_ns < times[-1]:
            return None  # outside the readings: the extrapolation flag says it
        i = bisect.bisect_right(times, t_ns) - 1
        if times[i] == t_ns:
            return None  # read on the boundary
        length = self.estimated_boundary_gap(i)
        if length is None:
            return None
        down = [o for o in self.outages if o[0] < times[i + 1] and o[1] > times[i]]
        why = (
            f"the agent was down for {sum(b - a for a, b in down) / 1e9:.1f} s"
            if down
            else "no reading on its event"
        )
        return Flag(
            "boundary_estimated",
            f"{self.label} {what} falls in a {length / 1e9:.1f} s reading gap ({why}): "
            "the energy on either side of it is interpolated, not measured",
            t_ns,
        )

    # -- error bounds ---------------------------------------------------------------------
    # An energy is a difference of C, so its error is (error of C at the end) − (error at the
    # start). ``point_bound`` bounds |error of C(t)| around a common offset; ``segment_bound``
    # adds what does not telescope (power integration, extrapolation, a reset's lost part).

    def point_error(self, t_ns: int) -> PointError:
        """What is known of ``true C(t) − C(t)``: an interval (centre ± half-width).

        Between two counter readings the true curve can lie anywhere that is monotonic, within
        the meter's maximum rate, and consistent with registers that show their last completed
        count (a reading errs by [0, step)). Differences of C err by differences of these, so
        a constant part cancels (allocation.py sums them with the weights' changes).
        """
        times = self.times
        step = self.resolution
        if self.powers or len(times) < 2:
            return PointError(0.0, 0.0, 0.0)
        if t_ns <= times[0] or t_ns >= times[-1]:  # beyond the readings: see segment_bound
            return self._knot_error(0 if t_ns <= times[0] else len(times) - 1)
        i = bisect.bisect_right(times, t_ns) - 1
        t0, t1 = times[i], times[i + 1]
        if t_ns == t0:
            return self._knot_error(i)
        if self.shaped and self.shaped[i]:
            p0 = self.readings[i].power_kw or 0.0
            p1 = self.readings[i + 1].power_kw or 0.0
            inside = abs(p1 - p0) * min(t_ns - t0, t1 - t_ns) / NS_PER_HOUR
            x = _power_fraction(self.readings[i], self.readings[i + 1], t_ns)
            return _between(self.knot_errors[i], self.knot_errors[i + 1], x, inside)
        estimate = self._segment_value(i, t_ns) - self.values[i]
        total = self.values[i + 1] - self.values[i]
        rate = self.max_rate
        low = max(0.0, total - rate * (t1 - t_ns)) - estimate
        high = min(total + step, step + rate * (t_ns - t0)) - estimate
        low, high = min(low, high), max(low, high)
        return PointError((low + high) / 2, (high - low) / 2, step / 2, step / 2)

    def _knot_error(self, i: int) -> PointError:
        if self.knot_errors:
            return self.knot_errors[i]
        half = self.resolution / 2
        return PointError(half, half, half, half)

    def segment_bound(self, a_ns: int, b_ns: int) -> float:
        """Error of C(b) − C(a) that a difference of point bounds does not cover.

        Power readings integrate with an error of up to |Δp|·Δt/2 per interval (power moving
        monotonically between readings; the whole change of power inside a piece of one).
        Across a power gap, before the first or after the last reading, and in a counter's
        reset interval the energy is only known to lie between 0 and the maximum rate.
        """
        if b_ns <= a_ns or len(self.times) < 2:
            return (b_ns - a_ns) * self.max_rate if math.isfinite(self.max_rate) else 0.0
        times = self.times
        parts: list[float] = []
        for lo, hi in ((a_ns, min(b_ns, times[0])), (max(a_ns, times[-1]), b_ns)):
            if hi > lo:  # extrapolated: anywhere from nothing to the maximum
                estimate = self.at(hi) - self.at(lo)
                parts.append(_spread(estimate, 0.0, self.max_rate * (hi - lo)))
        lo, hi = max(a_ns, times[0]), min(b_ns, times[-1])
        first = max(bisect.bisect_right(times, lo) - 1, 0)
        for i in range(first, len(times) - 1):
            t0, t1 = times[i], times[i + 1]
            if t0 >= hi:
                break
            s, e = max(t0, lo), min(t1, hi)
            if e <= s:
                continue
            if self.estimated[i]:
                estimate = self._segment_value(i, e) - self._segment_value(i, s)
                if self.powers:
                    parts.append(_spread(estimate, 0.0, self.max_rate * (e - s)))
                else:  # after a reset the energy before it in this interval is unknown
                    parts.append(min(self.max_rate * (e - s), self.max_rate * (t1 - t0)))
            elif self.powers:
                swing = abs(self.powers[i + 1] - self.powers[i])
                if s == t0 and e == t1:
                    parts.append(swing * (t1 - t0) / 2 / NS_PER_HOUR)
                else:
                    parts.append(swing * (e - s) / NS_PER_HOUR)
        return math.fsum(parts)

    def flags_in(self, a_ns: int, b_ns: int) -> list[Flag]:
        """Corrections whose stretch overlaps [a, b], plus gap / extrapolation / no-readings."""
        flags = [c.flag for c in self.corrections if c.start_ns < b_ns and c.end_ns > a_ns]
        if len(self.times) < 2:
            flags.append(Flag("no_readings", f"{self.label} has fewer than two readings"))
            return flags
        if self.times[0] > a_ns or self.times[-1] < b_ns:
            flags.append(
                Flag("extrapolated", f"{self.label} readings do not bracket the window: estimated")
            )
        for t0, t1 in itertools.pairwise(self.times):
            if t1 - t0 > self.gap_ns and t1 > a_ns and t0 < b_ns:
                flags.append(
                    Flag("gap", f"{self.label} has no reading for {(t1 - t0) / 1e9:.1f} s", t0)
                )
        return flags


def _between(first: PointError, second: PointError, x: float, inside: float) -> PointError:
    """The error of a shaped value a fraction ``x`` of the way between two knots: a linear mix
    of theirs, plus what the power can do inside the interval."""
    shared: dict[int, tuple[float, float]] = {}
    for weight, error in ((1 - x, first), (x, second)):
        for source, coefficient, width in error.shared:
            known, _ = shared.get(source, (0.0, width))
            shared[source] = (known + weight * coefficient, width)
    width = max(first.width, second.width) + inside
    return PointError(
        centre=(1 - x) * first.centre + x * second.centre,
        width=width,
        resolution=width,
        resolution_centre=(1 - x) * first.resolution_centre + x * second.resolution_centre,
        shared=tuple((source, c, w) for source, (c, w) in shared.items()),
    )


def _spread(estimate: float, low: float, high: float) -> float:
    """How far ``estimate`` can be from a truth known to lie in [low, high]."""
    if high < low:  # inconsistent bounds (a rejected spike's neighbourhood): no information
        return 0.0
    return max(estimate - low, high - estimate, 0.0)


def _power_fraction(first: Reading, second: Reading, t_ns: int) -> float:
    """Share of the energy between two readings spent by ``t_ns``, power moving linearly."""
    p0, p1 = first.power_kw or 0.0, second.power_kw or 0.0
    span = second.t_ns - first.t_ns
    x = (t_ns - first.t_ns) / span
    total = (p0 + p1) / 2
    if total <= 0:
        return x
    return (p0 * x + 0.5 * (p1 - p0) * x * x) / total


# The brief's name for a cleaned counter: the same curve type serves counters and power.
CleanSeries = Cumulative


@dataclass(frozen=True, slots=True)
class EnergySlice:
    """The energy of one meter over [a, b] with its provenance."""

    energy: float  # C(b) - C(a), in the series' unit
    measured: float  # the part read from registers (no gap split, no extrapolation, no reset)
    coverage: float  # 0..1 share of [a, b] backed by valid readings
    first_reading: Reading | None  # kept reading at or just before a (audit trail)
    last_reading: Reading | None  # kept reading at or just after b
    sample_count: int  # kept readings inside [a, b]
    flags: tuple[Flag, ...]


def energy_between(curve: Cumulative, a_ns: int, b_ns: int) -> EnergySlice:
    measured, covered_ns = curve.measured_part(a_ns, b_ns)
    span = b_ns - a_ns
    times = curve.times
    inside = bisect.bisect_right(times, b_ns) - bisect.bisect_left(times, a_ns)
    if span > 0:
        coverage = covered_ns / span
    else:  # an instant is covered when it lies between two readings
        coverage = float(len(times) >= 2 and times[0] <= a_ns <= times[-1])
    return EnergySlice(
        energy=curve.at(b_ns) - curve.at(a_ns),
        measured=measured,
        coverage=coverage,
        first_reading=_bounding(curve, a_ns, before=True),
        last_reading=_bounding(curve, b_ns, before=False),
        sample_count=max(inside, 0),
        flags=tuple(dedupe(curve.flags_in(a_ns, b_ns))),
    )


def _bounding(curve: Cumulative, t_ns: int, *, before: bool) -> Reading | None:
    if not curve.readings:
        return None
    if before:
        index = bisect.bisect_right(curve.times, t_ns) - 1
        return curve.readings[max(index, 0)]
    index = bisect.bisect_left(curve.times, t_ns)
    return curve.readings[min(index, len(curve.readings) - 1)]


def dedupe(flags: list[Flag]) -> list[Flag]:
    seen: set[Flag] = set()
    out = []
    for flag in flags:
        if flag not in seen:
            seen.add(flag)
            out.append(flag)
    return out


def float32_step(value: float) -> float:
    """The gap between adjacent float32 numbers at ``value`` (1/1024 kWh near 10,000 kWh)."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    _, exponent = math.frexp(abs(value))
    return math.ldexp(1.0, exponent - 24)


def cumulative(series: MeterSeries) -> Cumulative:
    """C(t) of a meter: power integrated, or the counter cleaned (and shaped by its power
    where it is coarse), with what bounds its errors."""
    raw = integrate_power(series) if series.method == "power" else clean_counter(series)
    curve = replace(
        raw,
        resolution=series.resolution if series.method == "counter" else 0.0,
        max_rate=_max_rate(series, raw),
        boundary_gap_ns=(
            int(series.boundary_gap_s * 1e9) if series.boundary_gap_s is not None else None
        ),
        outages=tuple((o.start_ns, o.end_ns) for o in series.outages),
    )
    return shape_counter(curve) if series.method == "counter" else curve


def _max_rate(series: MeterSeries, curve: Cumulative) -> float:
    """The most the meter can count per nanosecond: the equipment's maximum power (with the
    spike margin) for kWh; for other carriers the fastest rate seen, with the same margin."""
    if series.unit == "kWh":
        return series.max_power_kw * SPIKE_MARGIN / NS_PER_HOUR
    rates = [
        (v1 - v0) / (t1 - t0)
        for (t0, t1), (v0, v1), estimated in zip(
            itertools.pairwise(curve.times),
            itertools.pairwise(curve.values),
            curve.estimated,
            strict=True,
        )
        if not estimated
    ]
    fastest = max(rates, default=0.0)
    return fastest * SPIKE_MARGIN if fastest > 0 else math.inf


class _CounterCleaner:
    """Walks a counter's readings once, keeping the good ones as a monotonic curve."""

    def __init__(self, series: MeterSeries) -> None:
        self.series = series
        self.label = f"{series.meter_id}.{series.point}"
        self.readings = [
            r for i, r in enumerate(series.readings)
            if i == 0 or r.t_ns > series.readings[i - 1].t_ns
        ]  # fmt: skip
        self.kept: list[Reading] = []
        self.values: list[float] = []
        self.estimated: list[bool] = []
        self.corrections: list[Correction] = []

    def keep(self, reading: Reading, delta: float, *, estimated: bool) -> None:
        if self.kept:
            self.values.append(self.values[-1] + delta)
            self.estimated.append(estimated)
        else:
            self.values.append(0.0)
        self.kept.append(reading)

    def note(self, code: str, detail: str, reading: Reading, start_ns: int) -> None:
        flag = Flag(code, f"{self.label} {detail}", reading.t_ns)
        self.corrections.append(Correction(flag, start_ns, reading.t_ns))

    def plausible(self, before: Reading, after: Reading) -> bool:
        """A step that a real counter could make: forward, within the equipment's power."""
        delta = after.value - before.value
        if delta < -_NOISE * max(abs(before.value), 1.0):
            return False
        if self.series.unit != "kWh":
            return True  # max_power_kw says nothing about m3 or other carriers
        hours = (after.t_ns - before.t_ns) / NS_PER_HOUR
        limit = self.series.max_power_kw * SPIKE_MARGIN * hours + self.series.resolution
        return delta <= limit

    def run(self) -> Cumulative:
        readings = self.readings
        suspects: list[Reading] = []  # implausible readings that agree with each other
        for index, reading in enumerate(readings):
            if not self.kept:
                self.keep(reading, 0.0, estimated=False)
                continue
            last = self.kept[-1]
            delta = reading.value - last.value
            if delta < 0 and -delta <= _NOISE * max(abs(last.value), 1.0):
                self.keep(reading, 0.0, estimated=False)  # float noise of a standing counter
                suspects.clear()
                continue
            modulus = self.series.modulus
            if delta < 0 and modulus is not None and -delta > modulus / 2:
                unwrapped = Reading(reading.t_ns, reading.value + modulus)
                if self.plausible(last, unwrapped):
                    self.note("counter_rollover", f"wrapped at {modulus:g} {self.series.unit}",
                              reading, last.t_ns)  # fmt: skip
                    self.keep(reading, delta + modulus, estimated=False)
                    suspects.clear()
                    continue
            if delta < 0:
                following = readings[index + 1] if index + 1 < len(readings) else None
                if following is not None and self.plausible(last, following):
                    # One low reading between two consistent ones is a glitch, not a reset.
                    self.note("spike_rejected", f"reading {reading.value:g} below the counter "
                              f"({last.value:g}) and back after it", reading, last.t_ns)  # fmt: skip
                    continue
                # Reset or replacement: the energy since the restart is the new value; what
                # came before it inside this interval is unknown, so the segment is estimated.
                self.note("counter_reset", f"went from {last.value:g} to {reading.value:g}",
                          reading, last.t_ns)  # fmt: skip
                self.keep(reading, max(reading.value, 0.0), estimated=True)
                suspects.clear()
                continue
            if self.plausible(last, reading):
                self.keep(reading, delta, estimated=False)
                suspects.clear()
                continue
            if suspects and not self.plausible(suspects[-1], reading):
                suspects.clear()
            suspects.append(reading)
            if len(suspects) < REBASE_AFTER:
                hours = max((reading.t_ns - last.t_ns) / NS_PER_HOUR, 1e-15)
                self.note("spike_rejected", f"reading {reading.value:g} implies "
                          f"{delta / hours:.1f} kW (max {self.series.max_power_kw:g} kW)",
                          reading, last.t_ns)  # fmt: skip
                continue
            # Implausible readings that agree with each other are a new baseline (meter
            # replaced or preset): no energy across the jump (unknown), then count from there.
            rejected = {s.t_ns for s in suspects[:-1]}
            self.corrections = [
                c for c in self.corrections
                if not (c.flag.code == "spike_rejected" and c.flag.t_ns in rejected)
            ]  # fmt: skip
            self.note("counter_rebased", f"jumped from {last.value:g} to {suspects[0].value:g}",
                      suspects[0], last.t_ns)  # fmt: skip
            self.keep(suspects[0], 0.0, estimated=True)
            for before, after in itertools.pairwise(suspects):
                self.keep(after, after.value - before.value, estimated=False)
            suspects.clear()
        return Cumulative(
            times=tuple(r.t_ns for r in self.kept),
            values=tuple(self.values),
            estimated=tuple(self.estimated),
            corrections=tuple(self.corrections),
            gap_ns=int(self.series.gap_s * 1e9),
            readings=tuple(self.kept),
            label=self.label,
        )


def clean_counter(series: MeterSeries) -> Cumulative:
    """Unwrap rollovers, account resets, reject spikes: a monotonic cumulative curve."""
    return _CounterCleaner(series).run()


def integrate_power(series: MeterSeries) -> Cumulative:
    """Trapezoid integral of piecewise-linear power (kW) into kWh."""
    label = f"{series.meter_id}.{series.point}"
    kept: list[Reading] = []
    values: list[float] = []
    corrections: list[Correction] = []
    for reading in series.readings:
        if kept and reading.t_ns <= kept[-1].t_ns:
            continue
        power = reading.value
        if power < 0 or power > series.max_power_kw * SPIKE_MARGIN:
            flag = Flag("spike_rejected", f"{label} power {power:g} kW", reading.t_ns)
            start = kept[-1].t_ns if kept else reading.t_ns
            corrections.append(Correction(flag, start, reading.t_ns))
            continue
        if kept:
            dt_h = (reading.t_ns - kept[-1].t_ns) / NS_PER_HOUR
            values.append(values[-1] + 0.5 * (kept[-1].value + power) * dt_h)
        else:
            values.append(0.0)
        kept.append(reading)
    gap_ns = int(series.gap_s * 1e9)
    times = tuple(r.t_ns for r in kept)
    # Power across a gap is a straight line drawn between two readings: an estimate.
    estimated = tuple((t1 - t0) > gap_ns for t0, t1 in itertools.pairwise(times))
    return Cumulative(
        times=times,
        values=tuple(values),
        estimated=estimated,
        corrections=tuple(corrections),
        gap_ns=gap_ns,
        powers=tuple(r.value for r in kept),
        readings=tuple(kept),
        label=label,
    )
