"""Is a meter value believable? (pure rules, used by ``check --probe`` and at run time).

A wrong word order, a byte swap, an address off by one or a wrong data type still decode to a
number; these rules catch the numbers no real meter shows:

* ``power_above_max``: active power (converted to kW) beyond the ``max_power_kw`` of the
  equipment the meter serves (their sum when it serves several), either sign;
* ``counter_negative``, ``counter_not_finite``, ``counter_too_large`` (above 1e12 kWh or m3,
  more than any plant meters in a lifetime) for ``role: energy`` points;
* ``float_debris``: an energy or power value that is not zero but smaller than 1e-30 in
  magnitude — what the low word of a float read as its high word (CDAB vs ABCD), a register
  pair straddling two points, or an integer read as a float gives;
* ``counter_stuck`` / ``counter_backwards`` / ``counter_too_fast`` (two reads, the probe only):
  while power is above :data:`CHECK_POWER_FRACTION` of the limit, the counter must rise by
  about power x elapsed time; checked only when that rise is at least
  :data:`MIN_RESOLVABLE_STEPS` register steps (a float register counting as stepping by
  :data:`FLOAT_COUNTER_STEP_KWH`), so a coarse counter is never called stuck.

Each finding names the meter, the point, the value and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.config.models import (
    ENERGY_UNITS_TO_KWH,
    POWER_UNITS_TO_KW,
    AgentConfig,
    EquipmentConfig,
)
from edge_agent.domain import PointRole, Quality, Sample

__all__ = [
    "CHECK_POWER_FRACTION",
    "COUNTER_MAX",
    "DEBRIS_BELOW",
    "FLOAT_COUNTER_STEP_KWH",
    "MIN_RESOLVABLE_STEPS",
    "Implausible",
    "PowerLimit",
    "check_counter_moves",
    "check_sample",
    "counter_check_wanted",
    "meter_power_limits",
    "power_limits",
    "to_kw",
]

# The counter-moves check runs only while power is above this fraction of the limit.
CHECK_POWER_FRACTION = 0.05
# ... and only when the expected rise is at least this many register steps.
MIN_RESOLVABLE_STEPS = 3.0
# A float counter register is taken to step by at least this much: meters refresh their float
# counters in their display's steps (often 1 Wh or coarser), not in float32's.
FLOAT_COUNTER_STEP_KWH = 0.001
# A counter moving less than this fraction of the expected rise "does not move".
STUCK_FRACTION = 0.1
# Counters above this (kWh, or m3) are beyond any real meter.
COUNTER_MAX = 1e12
# Non-zero magnitudes below this are decoding debris, not measurements.
DEBRIS_BELOW = 1e-30


@dataclass(frozen=True, slots=True)
class PowerLimit:
    """The most a meter's power can plausibly be, from the equipment it serves."""

    kw: float
    equipment: tuple[str, ...]

    def describe(self) -> str:
        names = ", ".join(self.equipment)
        if len(self.equipment) == 1:
            return f"max_power_kw {self.kw:g} of equipment {names}"
        return f"{self.kw:g} kW, the sum of max_power_kw of equipment {names}"


@dataclass(frozen=True, slots=True)
class Implausible:
    meter_id: str
    point: str
    code: str
    value: float
    reason: str  # names the value and what was expected

    def describe(self) -> str:
        return f"meter {self.meter_id} point {self.point}: {self.reason}"


def meter_power_limits(
    config_equipment: Iterable[EquipmentConfig],
) -> dict[str, PowerLimit]:
    """Meter id -> the sum of ``max_power_kw`` over the equipment that references it."""
    kw: dict[str, float] = {}
    names: dict[str, list[str]] = {}
    for item in config_equipment:
        for meter_id in dict.fromkeys(ref.meter for ref in item.meters):
            kw[meter_id] = kw.get(meter_id, 0.0) + item.max_power_kw
            names.setdefault(meter_id, []).append(item.id)
    return {meter_id: PowerLimit(kw[meter_id], tuple(names[meter_id])) for meter_id in kw}


def power_limits(config: AgentConfig) -> dict[str, PowerLimit]:
    return meter_power_limits(config.equipment)


def to_kw(value: float, unit: str) -> float | None:
    factor = POWER_UNITS_TO_KW.get(unit)
    return None if factor is None else value * factor


def _counter_base(value: float, unit: str) -> tuple[float, str]:
    """A counter value in kWh (energy units) or as it is (m3, Nm3)."""
    factor = ENERGY_UNITS_TO_KWH.get(unit)
    return (value * factor, "kWh") if factor is not None else (value, unit or "units")


def check_sample(sample: Sample, limit: PowerLimit | None) -> Implausible | None:
    """The rules that need one reading. Samples that are not GOOD are not judged."""
    if sample.quality is not Quality.GOOD or sample.value is None:
        return None
    value = sample.value

    def found(code: str, reason: str) -> Implausible:
        return Implausible(sample.meter_id, sample.point, code, value, reason)

    if sample.role is PointRole.POWER:
        if not math.isfinite(value):
            return found("power_not_finite", f"power {value} {sample.unit} is not a number")
        if 0 < abs(value) < DEBRIS_BELOW:
            return found("float_debris", _debris(value, sample.unit, "power"))
        kw = to_kw(value, sample.unit)
        if kw is not None and limit is not None and abs(kw) > limit.kw:
            shown = f"{value:.6g} {sample.unit}" + (
                f" = {kw:.6g} kW" if sample.unit != "kW" else ""
            )
            return found(
                "power_above_max", f"power {shown} is above {limit.describe()} (expected at most "
                f"{limit.kw:g} kW)"
            )  # fmt: skip
        return None
    if sample.role is PointRole.ENERGY:
        if not math.isfinite(value):
            return found(
                "counter_not_finite",
                f"counter {value} {sample.unit} is not a number (expected a finite value >= 0)",
            )
        if value < 0:
            return found(
                "counter_negative",
                f"counter {value:.6g} {sample.unit} is negative (expected a value >= 0)",
            )
        if 0 < value < DEBRIS_BELOW:
            return found("float_debris", _debris(value, sample.unit, "counter"))
        base, base_unit = _counter_base(value, sample.unit)
        if base > COUNTER_MAX:
            return found(
                "counter_too_large",
                f"counter {value:.6g} {sample.unit} is beyond any real meter (expected at most "
                f"{COUNTER_MAX:g} {base_unit})",
            )
    return None


def _debris(value: float, unit: str, what: str) -> str:
    return (
        f"{what} {value:.6g} {unit} is a float below {DEBRIS_BELOW:g} that no meter shows, "
        "typical of a wrong word order, data type or address (expected 0 or a real reading)"
    )


def counter_check_wanted(
    power_kw: float, limit: PowerLimit | None, resolution_kwh: float, wait_s: float
) -> bool:
    """Whether two counter reads ``wait_s`` apart can tell a stuck counter (the probe asks
    before it waits): power high enough (and itself plausible), and the rise resolvable by the
    register."""
    if limit is None or not math.isfinite(power_kw):
        return False
    if not CHECK_POWER_FRACTION * limit.kw <= power_kw <= limit.kw:
        return False
    expected_kwh = power_kw * wait_s / 3600.0
    return expected_kwh >= MIN_RESOLVABLE_STEPS * resolution_kwh


def check_counter_moves(
    first: Sample,
    second: Sample,
    power_kw: float,
    limit: PowerLimit,
    resolution_kwh: float,
) -> Implausible | None:
    """Two GOOD readings of one energy counter (in kWh units) while the meter's power was
    ``power_kw`` (the lower of the two reads): does the counter move as the power says?"""
    if first.value is None or second.value is None or second.ts_ns <= first.ts_ns:
        return None
    if first.unit not in ENERGY_UNITS_TO_KWH:
        return None  # m3 and other carriers: power in kW says nothing about them
    seconds = (second.ts_ns - first.ts_ns) / 1e9
    if not counter_check_wanted(power_kw, limit, resolution_kwh, seconds):
        return None
    factor = ENERGY_UNITS_TO_KWH[first.unit]
    delta_kwh = (second.value - first.value) * factor
    expected_kwh = power_kw * seconds / 3600.0
    moved = (
        f"counter went from {first.value:.9g} to {second.value:.9g} {first.unit} in "
        f"{seconds:.2f} s while power was {power_kw:.4g} kW"
    )
    expected = f"expected a rise of about {expected_kwh:.3g} kWh"

    def found(code: str, reason: str) -> Implausible:
        assert second.value is not None
        return Implausible(second.meter_id, second.point, code, second.value, reason)

    if delta_kwh < 0:
        return found("counter_backwards", f"{moved}: it went backwards ({expected})")
    if delta_kwh < STUCK_FRACTION * expected_kwh:
        return found("counter_stuck", f"{moved}: it does not move ({expected})")
    implied_kw = delta_kwh / seconds * 3600.0
    if implied_kw > limit.kw:
        return found(
            "counter_too_fast",
            f"{moved}: it rises at {implied_kw:.4g} kW, above {limit.describe()} ({expected})",
        )
    return None
