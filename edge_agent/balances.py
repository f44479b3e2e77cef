"""Energy-balance records into the outbox: one per period for the site (imperative shell).

A period [start, end) (``balance.period_s``, aligned to UTC midnight) is computed once, when
``balance_settle_s`` has passed after its end — late MES stops and read-on-event readings have
arrived and the orders that ended in it are final. The first period is the first whole one
after the agent first ran with balances; after a restart the periods missed while it was down
are computed from the stored samples (a counter keeps counting: a gap loses no total).

A computed period is recomputed when an order that occupied it changed: the engine reports
every order record it computes (:meth:`BalanceKeeper.order_changed`) with the extent the order
has now and had before. Each period stores, per equipment, the order spans it was computed with;
only a period whose spans changed is recomputed, and a new revision is published only when a
number of the record changed. What is done is in SQLite (table ``balances`` and the outbox), so
it survives a restart.

All arithmetic is in :mod:`edge_agent.attribution.balance` (pure) and the accounting glue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.accounting import equipment_state_changes, meter_series, order_span
from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.balance import (
    BalanceLine,
    BalanceRecord,
    OrderRef,
    build_balance_record,
    span_fingerprint,
)
from edge_agent.attribution.model import (
    ELECTRICITY,
    Interval,
    MeterAllocation,
    OrderSpan,
    StateChange,
)
from edge_agent.clock import Clock
from edge_agent.config import (
    AgentConfig,
    EquipmentConfig,
    attributed_point_name,
    shaping_power_point,
)
from edge_agent.config.models import (
    DerivedState,
    MeterRef,
    SharedEquipmentConfig,
    StateSource,
)
from edge_agent.domain import NS_PER_S, PointRole, Sample, iso_from_ns, ns_from_iso
from edge_agent.engine import _READING_MARGIN_NS
from edge_agent.mes.timeline import OrderTimeline
from edge_agent.publish.topics import balance_topic
from edge_agent.sharing import SharedInputs, allocate_shared_inputs, shared_points
from edge_agent.store import BalancePeriod, OutboxRecord, Store

log = logging.getLogger(__name__)

# (equipment id, from, to) -> the orders that occupied the equipment in [from, to), replayed
# now (a running order occupies it until now): OrderEngine.timelines_overlapping.
Timelines = Callable[[str, int, int], Awaitable[list[OrderTimeline]]]
# (shared equipment, from, to, agent down-times) -> what allocating it needs:
# OrderEngine.shared_inputs.
SharedLoader = Callable[
    [SharedEquipmentConfig, int, int, Sequence[tuple[int, int]]], Awaitable[SharedInputs]
]

_STATE_FIRST_PERIOD = "balance/first_period_start_ns"
# Never wait longer than this between two looks at the clock (a wall-clock step, a lost kick).
_MAX_WAIT_S = 5.0
_RETRY_S = 60.0  # after a failure (the database, a bug): try again this much later


@dataclass(frozen=True, slots=True)
class MeterLine:
    """A meter point to balance: an equipment's meter, or a meter that serves no equipment."""

    meter_id: str
    point: str
    equipment: EquipmentConfig | None
    shared: SharedEquipmentConfig | None = None  # a shared equipment's line (its first meter)


def balance_lines(config: AgentConfig) -> list[MeterLine]:
    """Every equipment's meters (in configuration order), then the meters that serve no
    equipment — neither attributed nor read for its state — unless disabled, excluded
    (``balance.exclude_meters``) or without an energy or power point."""
    lines: list[MeterLine] = []
    used: set[str] = set()
    for equipment in config.equipment:
        for ref in equipment.meters:
            meter = config.meter(ref.meter)
            point = attributed_point_name(dict(meter.points), ref.point)
            lines.append(MeterLine(meter.id, point, equipment))
            used.add(meter.id)
        if equipment.state is not None:
            used.add(equipment.state.meter)
    for shared in config.shared_equipment:
        points = shared_points(config, shared.meters)
        lines.append(MeterLine(points[0][0], points[0][1], None, shared))
        used.update(meter_id for meter_id, _ in points)
    excluded = set(config.balance.exclude_meters)
    for meter in config.meters:
        if meter.id in used or meter.id in excluded or not meter.enabled:
            continue
        try:
            point = attributed_point_name(dict(meter.points), None)
        except LookupError:
            continue  # a state-only meter: no energy to balance
        lines.append(MeterLine(meter.id, point, None))
    return lines


def _meter_alone(meter_id: str, point: str) -> EquipmentConfig:
    """A meter of no equipment read as if it were its own: no maximum power is known, so no
    reading is rejected as a spike (rollovers and resets are still handled)."""
    return EquipmentConfig(
        id=meter_id, meters=[MeterRef(meter=meter_id, point=point)], max_power_kw=math.inf
    )


def _allocate_line(
    config: AgentConfig,
    equipment: EquipmentConfig,
    line: MeterLine,
    readings: tuple[Sequence[Sample], Sequence[Sample], Sequence[tuple[int, int]]],
    period: Interval,
    spans: Sequence[OrderSpan],
    states: Sequence[StateChange],
) -> MeterAllocation:
    """One meter line over the period (pure: runs in a worker thread)."""
    samples, power, outages = readings
    series = meter_series(config, equipment, line.meter_id, line.point, samples, power, outages)
    return allocate(series, spans, period, equipment.overlap_split, states)


def touched_extent(
    timeline: OrderTimeline, published: Mapping[str, Any] | None, was_final: bool, now_ns: int
) -> tuple[int, int]:
    """The time whose balances an order's (re)computed record may change: its extent now and
    as last published — and, when it was not final (running, or reopened), up to now, since
    the balances computed meanwhile counted it as running."""
    start_ns, end_ns = timeline.start_ns, timeline.end_ns
    if published is not None:
        start_ns = min(start_ns, ns_from_iso(published["start"]))
        end_ns = max(end_ns, ns_from_iso(published["end"]))
    if not was_final:
        end_ns = max(end_ns, now_ns)
    return start_ns, end_ns


def _same_numbers(published: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> bool:
    return {k: v for k, v in published.items() if k != "revision"} == {
        k: v for k, v in rebuilt.items() if k != "revision"
    }


class BalanceKeeper:
    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        clock: Clock,
        timelines: Timelines,
        on_record: Callable[[], None],
        shared_inputs: SharedLoader | None = None,
    ) -> None:
        self._config = config
        self._shared_inputs = shared_inputs
        self._store = store
        self._clock = clock
        self._timelines = timelines
        self._on_record = on_record
        self._lines = balance_lines(config)
        self._period_ns = config.balance.period_s * NS_PER_S
        self._settle_ns = int(config.balance_settle_s * NS_PER_S)
        self._retention_ns = int(config.store.retention_days * 86400 * NS_PER_S)
        self._topic = balance_topic(config)
        self._next_start_ns: int | None = None  # the next period to compute (set by start)
        self._dirty: list[tuple[str, int, int]] = []  # (equipment, from, to) to re-examine
        self._kick = asyncio.Event()
        self.records_enqueued = 0

    # -- start-up and the loop --------------------------------------------------------------

    async def start(self) -> None:
        """Where to go on: after the last computed period, else the first whole period after
        the agent first ran with balances (remembered, so a restart does not skip ahead)."""
        last_end = await self._store.last_balance_end()
        if last_end is not None:
            self._next_start_ns = -(-last_end // self._period_ns) * self._period_ns
            return
        first = await self._store.get_state(_STATE_FIRST_PERIOD)
        if first is None:
            now_ns = self._clock.now_ns()
            start_ns = -(-now_ns // self._period_ns) * self._period_ns
            await self._store.set_state(_STATE_FIRST_PERIOD, str(start_ns))
            log.info("energy balances start with the period at %s", iso_from_ns(start_ns))
            self._next_start_ns = start_ns
        else:
            self._next_start_ns = int(first)

    async def run(self) -> None:
        """Compute due periods and recompute changed ones, until cancelled."""
        while True:
            try:
                await self.process()
            except Exception:
                # Balances must never stop order records: log, wait, try again (the period
                # stays due, the changed orders are looked at again).
                log.exception("computing energy balances failed; retrying in %g s", _RETRY_S)
                await asyncio.sleep(_RETRY_S)
                continue
            wait_s = _MAX_WAIT_S
            if self._next_start_ns is not None:
                due_ns = self._next_start_ns + self._period_ns + self._settle_ns
                wait_s = min(wait_s, max(0.0, (due_ns - self._clock.now_ns()) / NS_PER_S))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=wait_s)
            self._kick.clear()

    def order_changed(
        self, timeline: OrderTimeline, published: Mapping[str, Any] | None, was_final: bool
    ) -> None:
        """The engine computed an order's record (hook): re-examine the periods it touches."""
        start_ns, end_ns = touched_extent(timeline, published, was_final, self._clock.now_ns())
        self._dirty.append((timeline.equipment_id, start_ns, end_ns))
        self._kick.set()

    async def process(self) -> int:
        """Recompute the periods that changed orders touch, then compute every due period.
        Returns how many records were enqueued."""
        if self._next_start_ns is None:
            await self.start()
        enqueued = 0
        dirty, self._dirty = self._dirty, []
        try:
            for period in await self._changed_periods(dirty):
                enqueued += await self.refresh(period)
        except BaseException:
            self._dirty[:0] = dirty  # looked at again next time
            raise
        assert self._next_start_ns is not None
        now_ns = self._clock.now_ns()
        oldest_ns = now_ns - self._retention_ns + _READING_MARGIN_NS
        if self._next_start_ns < oldest_ns:
            skipped_to = -(-oldest_ns // self._period_ns) * self._period_ns
            log.warning(
                "energy balances from %s to %s skipped: older than the sample retention",
                iso_from_ns(self._next_start_ns),
                iso_from_ns(skipped_to),
            )
            self._next_start_ns = skipped_to
        while self._next_start_ns + self._period_ns + self._settle_ns <= now_ns:
            period = Interval(self._next_start_ns, self._next_start_ns + self._period_ns)
            enqueued += await self.refresh(period)
            self._next_start_ns = period.end_ns
        return enqueued

    # -- recomputation ----------------------------------------------------------------------

    async def _changed_periods(self, dirty: Sequence[tuple[str, int, int]]) -> list[Interval]:
        """Computed periods in the dirty extents whose order spans are no longer what they
        were computed with (on the equipment concerned)."""
        oldest_ns = self._clock.now_ns() - self._retention_ns + _READING_MARGIN_NS
        changed: dict[tuple[int, int], Interval] = {}
        for equipment_id, from_ns, to_ns in dirty:
            equipment = next((e for e in self._config.equipment if e.id == equipment_id), None)
            if equipment is None:
                continue
            for stored in await self._store.balance_periods(from_ns, to_ns):
                key = (stored.start_ns, stored.end_ns)
                if key in changed:
                    continue
                period = Interval(stored.start_ns, stored.end_ns)
                spans = await self._spans(equipment, period)
                was = json.loads(stored.inputs).get(equipment_id)
                if was == span_fingerprint(spans, period, equipment.overlap_split):
                    continue
                if period.start_ns < oldest_ns:
                    log.warning(
                        "energy balance %s not recomputed: its samples may be pruned "
                        "(store.retention_days)",
                        iso_from_ns(period.start_ns),
                    )
                    continue
                changed[key] = period
        return [changed[key] for key in sorted(changed)]

    async def _spans(self, equipment: EquipmentConfig, period: Interval) -> list[OrderSpan]:
        timelines = await self._timelines(equipment.id, period.start_ns, period.end_ns)
        return [order_span(timeline) for timeline in timelines]

    async def refresh(self, period: Interval) -> int:
        """Compute the period now and store it; enqueue a record — revision 1, or the next
        one — only when a number differs from the last published. Returns 1 or 0."""
        existing = next(
            (
                p
                for p in await self._store.balance_periods(period.start_ns, period.end_ns)
                if (p.start_ns, p.end_ns) == (period.start_ns, period.end_ns)
            ),
            None,
        )
        revision = existing.revision + 1 if existing is not None else 1
        record, inputs = await self.compute(period, revision)
        now_ns = self._clock.now_ns()
        stored = BalancePeriod(
            period.start_ns, period.end_ns, record.record_id, revision, inputs, now_ns
        )
        if existing is not None:
            published = await self._store.latest_payload(record.record_id)
            if published is not None and _same_numbers(published, record.to_json_dict()):
                # Same numbers: nothing to publish; remember the spans it was computed with.
                await self._store.save_balance(replace(stored, revision=existing.revision), None)
                return 0
        outbox = OutboxRecord(
            record_id=record.record_id,
            revision=revision,
            kind="balance",
            lot_id="",
            order_id=None,
            topic=self._topic,
            payload=record.to_json(),
            created_ns=now_ns,
        )
        await self._store.save_balance(stored, outbox)
        self.records_enqueued += 1
        self._on_record()
        payload = record.payload
        log.info(
            "energy balance %s (rev %d): metered %.4f kWh = orders %.4f + idle %.4f + "
            "unallocated %.4f",
            payload["start"],
            revision,
            payload["metered_kwh"],
            payload["to_orders_kwh"],
            payload["idle_kwh"],
            payload["unallocated_kwh"],
        )
        return 1

    async def compute(self, period: Interval, revision: int = 1) -> tuple[BalanceRecord, str]:
        """The period's record from the stored samples and events, and the inputs it used
        (JSON: per equipment, the order spans inside the period)."""
        lines: list[BalanceLine] = []
        inputs: dict[str, Any] = {}
        orders: dict[str, OrderRef] = {}
        states_of: dict[str, list[StateChange]] = {}
        spans_of: dict[str, list[OrderSpan]] = {}
        for equipment in self._config.equipment:
            timelines = await self._timelines(equipment.id, period.start_ns, period.end_ns)
            for timeline in timelines:
                orders[timeline.order_id] = OrderRef(timeline.lot_id, equipment.id)
            spans = [order_span(timeline) for timeline in timelines]
            spans_of[equipment.id] = spans
            inputs[equipment.id] = span_fingerprint(spans, period, equipment.overlap_split)
            states_of[equipment.id] = equipment_state_changes(
                self._config, equipment, await self._state_samples(equipment, period)
            )
        # The agent's own down-times: a boundary inside one was not read (measured share).
        outages = await self._store.agent_downtimes(
            period.start_ns - _READING_MARGIN_NS, period.end_ns + _READING_MARGIN_NS
        )
        for line in self._lines:
            if line.shared is not None and self._shared_inputs is not None:
                lines.append(await self._shared_line(line.shared, period, outages))
                continue
            served = line.equipment
            equipment = served or _meter_alone(line.meter_id, line.point)
            samples, power = await self._readings(line.meter_id, line.point, period)
            # Hours of readings: the arithmetic runs in a thread so that the event loop (and a
            # read-on-event) never waits for it longer than the interpreter's switch interval.
            allocation = await asyncio.to_thread(
                _allocate_line,
                self._config,
                equipment,
                line,
                (samples, power, outages),
                period,
                spans_of[served.id] if served is not None else [],
                states_of[served.id] if served is not None else [],
            )
            if served is None:
                carrier = allocation.carrier or (ELECTRICITY if allocation.unit == "kWh" else None)
                lines.append(BalanceLine(allocation, None, carrier))
            else:
                carrier = allocation.carrier or served.carrier
                lines.append(BalanceLine(allocation, served.id, carrier))
        record = build_balance_record(
            self._config.site.id, period, lines, orders, revision=revision
        )
        return record, json.dumps(inputs, sort_keys=True, separators=(",", ":"))

    async def _shared_line(
        self,
        shared: SharedEquipmentConfig,
        period: Interval,
        outages: Sequence[tuple[int, int]],
    ) -> BalanceLine:
        """A shared equipment over the period, allocated as the order records allocate it
        (the period is made of whole allocation intervals)."""
        assert self._shared_inputs is not None
        inputs = await self._shared_inputs(shared, period.start_ns, period.end_ns, outages)
        result = await asyncio.to_thread(allocate_shared_inputs, self._config, inputs, period)
        return BalanceLine(
            result.meter,
            None,
            shared.carrier,
            shared=result.allocation,
            shared_equipment_id=shared.id,
        )

    async def _readings(
        self, meter_id: str, point: str, period: Interval
    ) -> tuple[list[Sample], list[Sample]]:
        """The meter's readings around the period, loaded as the engine loads an order's, and
        its active power read with them (see shaping_power_point)."""
        since_ns = period.start_ns - _READING_MARGIN_NS
        until_ns = period.end_ns + _READING_MARGIN_NS
        meter = self._config.meter(meter_id)
        samples = await self._store.readings(meter_id, point, since_ns, until_ns)
        power: list[Sample] = []
        power_point = shaping_power_point(meter.points)
        if meter.points[point].role is PointRole.ENERGY and power_point is not None:
            power = await self._store.readings(meter_id, power_point, since_ns, until_ns)
        return samples, power

    async def _state_samples(self, equipment: EquipmentConfig, period: Interval) -> list[Sample]:
        state = equipment.state
        since_ns = period.start_ns - _READING_MARGIN_NS
        if isinstance(state, StateSource):
            return await self._store.readings(state.meter, state.point, since_ns, period.end_ns)
        if isinstance(state, DerivedState):
            meter = self._config.meter(state.meter)
            point = state.point or attributed_point_name(dict(meter.points), None)
            return await self._store.readings(
                state.meter, point, since_ns, period.end_ns + _READING_MARGIN_NS
            )
        return []
