"""Typed values of the pure attribution core. Time is int epoch nanoseconds (UTC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NS_PER_S = 1_000_000_000
NS_PER_HOUR = 3_600 * NS_PER_S

Method = Literal["counter", "power"]
SplitRule = Literal["equal", "quantity"]

ELECTRICITY = "electricity"


@dataclass(frozen=True, slots=True)
class Reading:
    """A good reading: cumulative counter value in the carrier unit, or power in kW.

    ``power_kw``: for a kWh counter, the meter's active power read in the same poll, when it has
    one. It tells where between two counter readings the energy was spent (see
    series.Cumulative), which matters when a machine changes state between them.
    """

    t_ns: int
    value: float
    power_kw: float | None = None


@dataclass(frozen=True, slots=True)
class Flag:
    """An estimation, correction, allocation or clock event worth telling the consumer."""

    code: str
    detail: str
    t_ns: int | None = None


@dataclass(frozen=True, slots=True)
class MeterSeries:
    meter_id: str
    point: str
    method: Method
    readings: tuple[Reading, ...]  # sorted by time
    unit: str  # carrier unit of the energy (kWh, m3); power readings are kW and integrate to kWh
    max_power_kw: float  # implied power above this (with a margin) is a spike
    gap_s: float  # readings further apart than this are a communication gap
    modulus: float | None = None  # counter rollover modulus, in ``unit``
    # Smallest step of the register in ``unit`` (0.01 kWh for a 0.01-scaled integer; for a
    # float32 counter its step at the current total, see series.float32_step). 0 = unknown.
    resolution: float = 0.0
    carrier: str | None = None  # energy carrier when it differs from the equipment's
    # Readings further apart than this around a boundary make the boundary an estimate.
    boundary_gap_s: float | None = None
    # Times the agent itself was down (from its run marks): no reading was possible, so a
    # boundary inside one was not read on its event.
    outages: tuple[Interval, ...] = ()


@dataclass(frozen=True, slots=True)
class Interval:
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class OrderSpan:
    """The time one order occupied the equipment, as the allocation needs it."""

    order_id: str
    intervals: tuple[Interval, ...]  # occupied time, pauses removed
    quantity_good: float | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    t_ns: int
    state: str


@dataclass(frozen=True, slots=True)
class Factor:
    """An emission factor: kg CO2e per carrier unit, with its provenance and, for a row of a
    time-varying table, its validity ``[valid_from_ns, valid_to_ns)``."""

    carrier: str
    value: float
    unit: str  # e.g. "kgCO2e/kWh"
    source: str
    version: str
    primary: bool  # supplier- or contract-specific (PACT primary); a grid average is not
    set: str = "location"  # GHG Protocol Scope 2: location or market
    geography: str | None = None
    reference_year: int | None = None
    valid_from_ns: int | None = None
    valid_to_ns: int | None = None
    # Metered unit -> the factor's unit (gas volume at metering -> reference conditions).
    conversion: float = 1.0

    def covers(self, t_ns: int) -> bool:
        return (self.valid_from_ns is None or self.valid_from_ns <= t_ns) and (
            self.valid_to_ns is None or t_ns < self.valid_to_ns
        )


@dataclass(frozen=True, slots=True)
class FactorUse:
    """One factor applied to part of an order's activity of one carrier (in the metered unit)."""

    factor: Factor
    activity: float
    measured: float
    uncertainty: float


@dataclass(frozen=True, slots=True)
class StateShare:
    energy: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Share:
    """Energy given to one order (or to idle) from one meter."""

    energy: float
    measured: float
    by_state: dict[str, StateShare] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()  # allocation events that concern this share only
    uncertainty: float = 0.0  # bound on |true - energy|, in the meter's unit


@dataclass(frozen=True, slots=True)
class PointError:
    """What is known of ``true C(t) − C(t)``: within ``centre ± width``, plus ``shared`` terms
    ``(source, coefficient, width)``: an error source common to several points (a shaped
    counter's anchor, a stretch's unknown register offset) that enters each with its
    coefficient, so it cancels in differences where the coefficients agree.

    ``resolution`` is the part of ``width`` the registers' step causes (``resolution_centre`` of
    ``centre``; shared terms are all register terms): that part of an energy is not measured.
    """

    centre: float
    width: float
    resolution: float
    resolution_centre: float = 0.0
    shared: tuple[tuple[int, float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class MeterAllocation:
    meter_id: str
    point: str
    method: Method
    unit: str
    window: Interval
    total: float  # metered energy in the window: C(end) - C(start)
    measured: float
    coverage: float  # share of the window backed by readings (no gap, no extrapolation)
    orders: dict[str, Share]
    idle: Share
    first_reading: Reading | None  # the readings that bound the window (audit trail)
    last_reading: Reading | None
    sample_count: int  # readings inside the window
    flags: tuple[Flag, ...]  # meter-level: corrections, gaps, extrapolation inside the window
    carrier: str | None = None
    uncertainty: float = 0.0  # bound on |true - total|, in ``unit``
