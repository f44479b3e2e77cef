"""Turn stored samples, order timelines and configuration into attribution inputs (pure glue).

The engine loads; this module converts units, picks the right points and calls the pure core.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.factors import FactorPiece, cut_points, rescale, uses_by_set
from edge_agent.attribution.model import (
    FactorUse,
    Flag,
    Interval,
    MeterAllocation,
    MeterSeries,
    OrderSpan,
    Reading,
    SplitRule,
    StateChange,
)
from edge_agent.attribution.records import (
    Factor,
    OrderFacts,
    Record,
    build_lot_record,
    build_order_record,
)
from edge_agent.attribution.series import float32_step
from edge_agent.attribution.standards import Standard
from edge_agent.attribution.states import derive_states
from edge_agent.config import AgentConfig, EquipmentConfig, attributed_point_name
from edge_agent.config.factor_tables import factor_schedules
from edge_agent.config.models import (
    ENERGY_UNITS_TO_KWH,
    POWER_UNITS_TO_KW,
    REFERENCE_CONDITIONS,
    VOLUME_UNITS,
    DerivedState,
    EmissionFactor,
    GasConditions,
    ModbusPoint,
    OpcUaMeter,
    PointBase,
    StateSource,
)
from edge_agent.domain import PointRole, Sample
from edge_agent.mes.timeline import OrderTimeline
from edge_agent.plausibility import check_sample, power_limits
from edge_agent.sharing import SharedInputs, SharedResult, allocate_shared_inputs, shared_detail

# Readings further apart than this many poll intervals are a communication gap.
GAP_INTERVALS = 3.0
# A boundary between readings further apart than this many poll intervals was not read on its
# event (a missed poll, a meter outage, the agent's own down-time): it is an estimate.
BOUNDARY_GAP_INTERVALS = 1.5
CANCELLED = "order_cancelled"
# A power reading this close to a counter reading was taken in the same poll.
SAME_POLL_NS = 250_000_000


@dataclass(frozen=True, slots=True)
class OrderInputs:
    config: AgentConfig
    equipment: EquipmentConfig
    timeline: OrderTimeline
    others: tuple[OrderTimeline, ...]  # orders overlapping it on the same equipment
    readings: Mapping[tuple[str, str], Sequence[Sample]]  # (meter, point) -> samples
    state_samples: tuple[Sample, ...]
    # (meter, counter point) -> the meter's active power samples (see shaping_power_point)
    shaping_power: Mapping[tuple[str, str], Sequence[Sample]] = field(default_factory=dict)
    # clock_step / clock_unsynchronised over the window (edge_agent.clockwatch.clock_flags)
    clock_flags: tuple[Flag, ...] = ()
    # The agent's own down-times (Store.agent_downtimes) overlapping the readings' window
    outages: tuple[tuple[int, int], ...] = ()
    # One per shared equipment serving the order's equipment (edge_agent.sharing)
    shared: tuple[SharedInputs, ...] = ()
    standard: Standard | None = None  # the product's standard intensity on this equipment


_SCHEDULES: dict[int, tuple[AgentConfig, dict[str, dict[str, tuple[Factor, ...]]]]] = {}


def schedules(config: AgentConfig) -> dict[str, dict[str, tuple[Factor, ...]]]:
    """carrier -> factor set -> factors in time order; built once per configuration (a year
    of hourly grid factors is 8,760 rows)."""
    cached = _SCHEDULES.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    built = factor_schedules(config, config.factor_tables)
    if len(_SCHEDULES) >= 4:  # a reload replaces the configuration: forget the oldest
        _SCHEDULES.pop(next(iter(_SCHEDULES)))
    _SCHEDULES[id(config)] = (config, built)
    return built


def factors(config: AgentConfig) -> dict[str, Factor]:
    """Per carrier, the first factor of its first set (records fall back to it)."""
    return {carrier: next(iter(sets.values()))[0] for carrier, sets in schedules(config).items()}


def gas_conversion(point: PointBase, factor: EmissionFactor) -> tuple[float, Flag | None]:
    """Metered volume -> volume at the factor's reference conditions (ideal gas:
    V_ref = V × (p / p_ref) × (T_ref / T)); 1 when the factor names no conditions."""
    reference = factor.reference_conditions
    if reference is None or point.unit not in VOLUME_UNITS:
        return 1.0, None
    metered = point.metering_conditions
    if metered is None and point.unit == "Nm3":
        temperature, pressure = REFERENCE_CONDITIONS["normal"]
        metered = GasConditions(temperature_c=temperature, pressure_kpa=pressure)
    if metered is None:
        return 1.0, Flag(
            "gas_conditions_unknown",
            f"the meter's volume ({point.unit}) has no metering_conditions: taken as the "
            f"factor's reference conditions ({reference.temperature_c:g} °C, "
            f"{reference.pressure_kpa:g} kPa) without conversion",
        )
    ratio = (metered.pressure_kpa / reference.pressure_kpa) * (reference.kelvin / metered.kelvin)
    return ratio, None


def _factor_config(config: AgentConfig, carrier: str, name: str) -> EmissionFactor:
    return next(f for f in config.emission_factors[carrier] if f.set == name)


def _direct_pieces(
    group: Sequence[tuple[MeterSeries, MeterAllocation]],
    order_id: str,
    window: Interval,
    cuts: Sequence[int],
    spans: Sequence[OrderSpan],
    states: Sequence[StateChange],
    split: SplitRule,
) -> list[FactorPiece]:
    """The order's direct activity of one carrier, cut at the factors' changes."""
    total = math.fsum(alloc.orders[order_id].energy for _, alloc in group)
    measured = math.fsum(alloc.orders[order_id].measured for _, alloc in group)
    uncertainty = math.fsum(alloc.orders[order_id].uncertainty for _, alloc in group)
    if not cuts:
        return [(window, total, measured, uncertainty)]
    edges = [window.start_ns, *cuts, window.end_ns]
    pieces: list[FactorPiece] = []
    for a, b in itertools.pairwise(edges):
        part = [allocate(series, spans, Interval(a, b), split, states) for series, _ in group]
        energy = math.fsum(p.orders[order_id].energy for p in part)
        pieces.append(
            (Interval(a, b), energy, math.fsum(p.orders[order_id].measured for p in part), 0.0)
        )
    pieces = rescale(pieces, total, measured)
    # The bound is shared out with the activity (an upper bound of each part's error).
    return [
        (i, e, m, uncertainty * (e / total if total else 1.0 / len(pieces)))
        for i, e, m, _ in pieces
    ]


def _shared_pieces(result: SharedResult, order_id: str) -> list[FactorPiece]:
    """The order's part of a shared equipment, interval by interval (intervals are aligned to
    UTC, so an hourly factor changes between them)."""
    allocated = result.allocation.orders.get(order_id, 0.0)
    uncertainty = result.order_uncertainty(order_id)
    parts = result.allocation.intervals_of(order_id)
    pieces: list[FactorPiece] = []
    for part in parts:
        energy = part.share_of(order_id)
        measured = part.measured * energy / part.energy if part.energy > 0 else 0.0
        # The order's bound is shared out with its activity, as for the direct pieces.
        bound = uncertainty * (energy / allocated if allocated > 0 else 1.0 / len(parts))
        pieces.append((part.interval, energy, measured, bound))
    if not pieces:
        pieces.append((result.window, allocated, 0.0, uncertainty))
    return pieces


def _order_factor_uses(
    inputs: OrderInputs,
    window: Interval,
    spans: Sequence[OrderSpan],
    states: Sequence[StateChange],
    attributed: Sequence[tuple[MeterSeries, MeterAllocation]],
    shared: Sequence[SharedResult] = (),
) -> tuple[dict[str, dict[str, list[FactorUse]]], list[Flag]]:
    """Per carrier and factor set, the factors applied to the order's activity (direct and
    shared): cut at every change of a time-varying factor, each part with the factor valid
    then, gas volumes converted to the factor's reference conditions."""
    config, equipment = inputs.config, inputs.equipment
    order_id = inputs.timeline.order_id
    by_carrier: dict[str, list[tuple[MeterSeries, MeterAllocation]]] = {}
    for series, alloc in attributed:
        by_carrier.setdefault(alloc.carrier or equipment.carrier, []).append((series, alloc))
    shared_by_carrier: dict[str, list[SharedResult]] = {}
    for result in shared:
        shared_by_carrier.setdefault(result.shared.carrier, []).append(result)
    out: dict[str, dict[str, list[FactorUse]]] = {}
    flags: list[Flag] = []
    for carrier in dict.fromkeys([*by_carrier, *shared_by_carrier]):
        sets = schedules(config).get(carrier)
        if not sets:
            continue
        group = by_carrier.get(carrier, [])
        pieces: list[FactorPiece] = []
        points: list[tuple[PointBase, str, float]] = []  # (point, meter id, activity)
        if group:
            cuts = cut_points(list(sets.values()), window)
            pieces += _direct_pieces(
                group, order_id, window, cuts, spans, states, equipment.overlap_split
            )
            points += [
                (config.meter(series.meter_id).points[series.point], series.meter_id,
                 alloc.orders[order_id].energy)
                for series, alloc in group
            ]  # fmt: skip
        for result in shared_by_carrier.get(carrier, []):
            pieces += _shared_pieces(result, order_id)
            ref_meter, ref_point = result.meter.meter_id, result.meter.point
            points.append(
                (config.meter(ref_meter).points[ref_point], ref_meter,
                 result.allocation.orders.get(order_id, 0.0))
            )  # fmt: skip
        uses, found = uses_by_set(carrier, pieces, sets)
        flags += found
        for name, listed in uses.items():
            ratio, conversion_flags = _conversion(points, _factor_config(config, carrier, name))
            flags += conversion_flags
            out.setdefault(carrier, {})[name] = (
                listed
                if ratio == 1.0
                else [
                    FactorUse(replace(u.factor, conversion=ratio), u.activity, u.measured, u.uncertainty)
                    for u in listed
                ]
            )  # fmt: skip
    return out, list(dict.fromkeys(flags))


def _conversion(
    points: Sequence[tuple[PointBase, str, float]], factor: EmissionFactor
) -> tuple[float, list[Flag]]:
    """The activity-weighted metered -> reference conversion of the order's meters."""
    ratios: list[tuple[float, float]] = []
    flags: list[Flag] = []
    for point, meter_id, activity in points:
        ratio, flag = gas_conversion(point, factor)
        ratios.append((ratio, activity))
        if flag is not None:
            flags.append(Flag(flag.code, f"meter {meter_id}: {flag.detail}"))
    weight = math.fsum(activity for _, activity in ratios)
    if not ratios:
        return 1.0, flags
    if weight > 0:
        return math.fsum(r * a for r, a in ratios) / weight, flags
    return math.fsum(r for r, _ in ratios) / len(ratios), flags


def _to_carrier_unit(point: PointBase) -> float:
    if point.role is PointRole.POWER:
        return POWER_UNITS_TO_KW[point.unit]
    return ENERGY_UNITS_TO_KWH.get(point.unit, 1.0)


def meter_series(
    config: AgentConfig,
    equipment: EquipmentConfig,
    meter_id: str,
    point_name: str,
    samples: Sequence[Sample],
    power_samples: Sequence[Sample] = (),
    outages: Sequence[tuple[int, int]] = (),
) -> MeterSeries:
    meter = config.meter(meter_id)
    point = meter.points[point_name]
    factor = _to_carrier_unit(point)
    modulus = (
        point.effective_counter_modulus if isinstance(point, ModbusPoint) else point.counter_modulus
    )
    interval_s = meter.interval_s
    if isinstance(meter, OpcUaMeter):
        endpoint = next((e for e in config.opcua_endpoints if e.id == meter.endpoint), None)
        interval_s = endpoint.interval_s if endpoint else interval_s
    is_counter = point.role is PointRole.ENERGY
    unit = "kWh" if point.unit in ENERGY_UNITS_TO_KWH or not is_counter else point.unit
    resolution = 0.0
    if is_counter and isinstance(point, ModbusPoint):
        # The register's step in the carrier unit: float32 counters lose resolution as they
        # grow (DESIGN §9: ~1 Wh near 10,000 kWh); integer ones step by their scale.
        largest = max((abs(s.value) for s in samples if s.value is not None), default=0.0)
        resolution = (
            float32_step(largest) * factor
            if point.type == "float32"
            else abs(point.scale) * factor
            if not point.type.startswith("float")
            else 0.0
        )
    readings = [Reading(s.ts_ns, s.value * factor) for s in samples if s.value is not None]
    if is_counter and unit == "kWh" and power_samples:
        readings = _with_power(readings, power_samples, meter.points)
    return MeterSeries(
        meter_id=meter_id,
        point=point_name,
        method="counter" if is_counter else "power",
        readings=tuple(readings),
        unit=unit,
        max_power_kw=equipment.max_power_kw,
        gap_s=GAP_INTERVALS * interval_s + meter.timeout_s,
        boundary_gap_s=BOUNDARY_GAP_INTERVALS * interval_s,
        modulus=modulus * factor if modulus is not None else None,
        resolution=resolution,
        outages=tuple(Interval(start, end) for start, end in outages),
    )


def _with_power(
    readings: Sequence[Reading], power_samples: Sequence[Sample], points: Mapping[str, PointBase]
) -> list[Reading]:
    """Each counter reading with the power read in the same poll, where there is one."""
    power = [(s.ts_ns, s.value * POWER_UNITS_TO_KW[points[s.point].unit])
             for s in power_samples if s.value is not None and s.value >= 0]  # fmt: skip
    if not power:
        return list(readings)
    times = [t for t, _ in power]
    out = []
    for reading in readings:
        index = bisect.bisect_left(times, reading.t_ns)
        near = [i for i in (index - 1, index) if 0 <= i < len(times)]
        t_ns, kw = power[min(near, key=lambda i: abs(times[i] - reading.t_ns))]
        same_poll = abs(t_ns - reading.t_ns) <= SAME_POLL_NS
        out.append(Reading(reading.t_ns, reading.value, kw) if same_poll else reading)
    return out


def state_changes(inputs: OrderInputs) -> list[StateChange]:
    return equipment_state_changes(inputs.config, inputs.equipment, inputs.state_samples)


def equipment_state_changes(
    config: AgentConfig, equipment: EquipmentConfig, state_samples: Sequence[Sample]
) -> list[StateChange]:
    """The equipment's machine-state changes from its state samples (order records and
    energy-balance records alike)."""
    state = equipment.state
    if isinstance(state, StateSource):
        changes: list[StateChange] = []
        for sample in state_samples:
            if sample.state is not None and (not changes or changes[-1].state != sample.state):
                changes.append(StateChange(sample.ts_ns, sample.state))
        return changes
    if isinstance(state, DerivedState):
        meter = config.meter(state.meter)
        point_name = state.point or attributed_point_name(meter.points, None)
        point = meter.points[point_name]
        if point.role is PointRole.POWER:
            to_kw = POWER_UNITS_TO_KW[point.unit]
            power = [
                Reading(s.ts_ns, s.value * to_kw) for s in state_samples if s.value is not None
            ]
        else:
            power = _power_from_counter(state_samples, _to_carrier_unit(point))
        return derive_states(
            power,
            state.idle_above_kw,
            state.running_above_kw,
            state.hysteresis_kw,
            state.min_dwell_s,
        )
    return []


def _power_from_counter(samples: Sequence[Sample], to_kwh: float) -> list[Reading]:
    """Average power between consecutive counter readings, dated at the interval's start."""
    good = [s for s in samples if s.value is not None]
    out = []
    for first, second in itertools.pairwise(good):
        hours = (second.ts_ns - first.ts_ns) / 3.6e12
        if hours > 0 and first.value is not None and second.value is not None:
            out.append(
                Reading(first.ts_ns, max(0.0, (second.value - first.value) * to_kwh / hours))
            )
    return out


def _span(timeline: OrderTimeline) -> OrderSpan:
    return OrderSpan(
        timeline.order_id,
        tuple(Interval(a, b) for a, b in timeline.occupied),
        timeline.quantity_good,
    )


def order_span(timeline: OrderTimeline) -> OrderSpan:
    """The order's occupied time as the allocation takes it (order and balance records alike)."""
    return _span(timeline)


def build_order(inputs: OrderInputs, *, revision: int, final_by_timeout: bool) -> Record:
    timeline, equipment, config = inputs.timeline, inputs.equipment, inputs.config
    end_ns = timeline.stop_ns if timeline.stop_ns is not None else timeline.occupied[-1][1]
    window = Interval(timeline.start_ns, end_ns)
    spans = [_span(timeline), *(_span(other) for other in inputs.others)]
    states = state_changes(inputs)
    attributed = []
    for (meter_id, point_name), samples in inputs.readings.items():
        power = inputs.shaping_power.get((meter_id, point_name), ())
        series = meter_series(
            config, equipment, meter_id, point_name, samples, power, inputs.outages
        )
        attributed.append(
            (series, allocate(series, spans, window, equipment.overlap_split, states))
        )
    allocations = [alloc for _, alloc in attributed]
    shared = [allocate_shared_inputs(config, item, window) for item in inputs.shared]
    uses, factor_flags = _order_factor_uses(inputs, window, spans, states, attributed, shared)
    extra = [Flag("order_event_anomaly", anomaly) for anomaly in timeline.anomalies]
    extra += factor_flags
    extra += [Flag("order_event_corrected", note) for note in timeline.corrections]
    extra += inputs.clock_flags
    readings = (*inputs.readings.values(), *inputs.shaping_power.values())
    extra += implausible_flags(config, itertools.chain(*readings), window)
    if timeline.cancelled:
        extra.append(
            Flag(CANCELLED, "the MES cancelled this order: it is no step of its lot, its time "
                 "and energy belong to no order")
        )  # fmt: skip
    if timeline.auto_closed:
        extra.append(
            Flag(
                "auto_closed",
                f"no stop within {equipment.max_order_duration_s:g} s "
                "(equipment max_order_duration_s): closed at its last event; a later stop "
                "corrects it",
                timeline.end_ns,
            )
        )
    if final_by_timeout:
        extra.append(
            Flag(
                "final_by_timeout",
                f"no reading at or after the stop within {equipment.final_timeout_s:g} s: tail estimated",
            )
        )
    facts = OrderFacts(
        site_id=config.site.id,
        line_id=equipment.line,
        lot_id=timeline.lot_id,
        order_id=timeline.order_id,
        equipment_id=equipment.id,
        product_id=timeline.product_id,
        start_ns=timeline.start_ns,
        end_ns=end_ns,
        quantity_good=timeline.quantity_good,
        quantity_scrap=timeline.quantity_scrap,
        unit=timeline.unit,
    )
    return build_order_record(
        facts,
        allocations,
        factors(config),
        equipment.carrier,
        revision=revision,
        extra_flags=extra,
        factor_uses=uses,
        report_set=config.report_set,
        shared=[
            (
                result.as_order_allocation(timeline.order_id),
                shared_detail(result, timeline.order_id),
            )
            for result in shared
        ],
        standard=inputs.standard,
        flag_above_percent=config.standards.flag_above_percent,
    )


def implausible_flags(
    config: AgentConfig, samples: Iterable[Sample], window: Interval
) -> list[Flag]:
    """``implausible_value`` per meter point and rule, at its first reading in the window that
    breaks a one-reading rule of edge_agent.plausibility (power above max, negative counter)."""
    limit = power_limits(config)
    flags: dict[tuple[str, str, str], Flag] = {}
    for sample in samples:
        if window.start_ns <= sample.ts_ns <= window.end_ns and (
            found := check_sample(sample, limit.get(sample.meter_id))
        ):
            key = (found.meter_id, found.point, found.code)
            flags.setdefault(key, Flag("implausible_value", found.describe(), sample.ts_ns))
    return list(flags.values())


def is_cancelled(record: Mapping[str, Any]) -> bool:
    return any(flag.get("code") == CANCELLED for flag in record.get("flags", ()))


def build_lot(
    config: AgentConfig,
    lot_id: str,
    order_records: Sequence[Mapping[str, Any]],
    *,
    quantity_good: float | None,
    revision: int,
    open_orders: Sequence[str] = (),
    standard: Standard | None = None,
) -> Record:
    return build_lot_record(
        config.site.id,
        lot_id,
        order_records,
        quantity_good=quantity_good,
        revision=revision,
        open_orders=open_orders,
        standard=standard,
        flag_above_percent=config.standards.flag_above_percent,
    )
