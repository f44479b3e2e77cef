"""The order engine: MES events in, order and lot records into the outbox (imperative shell).

For each accepted event it (1) reads the equipment's meters at once (read-on-event, so the
boundary is measured, not stretched over a poll interval), (2) commits the event to SQLite —
only then may the intake acknowledge it to the broker — and (3) finalises orders and lots whose
data is complete. All arithmetic happens in :mod:`edge_agent.accounting` and the pure
:mod:`edge_agent.attribution` core; this module only gathers inputs and stores outputs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from edge_agent.accounting import OrderInputs, build_lot, build_order
from edge_agent.clock import Clock
from edge_agent.config import (
    AgentConfig,
    EquipmentConfig,
    attributed_point_name,
    shaping_power_point,
)
from edge_agent.config.models import DerivedState, StateSource
from edge_agent.domain import NS_PER_S, PointRole, Sample
from edge_agent.errors import EventRejected
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.mes.timeline import OrderTimeline, replay_order
from edge_agent.publish.topics import lot_topic, order_topic
from edge_agent.store import OutboxRecord, Store, StoredEvent

log = logging.getLogger(__name__)

ReadNow = Callable[[Sequence[str]], Awaitable[list[Sample]]]

# Readings this far before an order's start and after its stop are loaded so that the
# boundary can be interpolated between the readings around it.
_READING_MARGIN_NS = 3600 * NS_PER_S
# Orders on one equipment are looked up this far back (longest plausible order).
_OVERLAP_LOOKBACK_NS = 7 * 86400 * NS_PER_S


class OrderEngine:
    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        clock: Clock,
        read_now: ReadNow,
        on_record: Callable[[], None],
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._read_now = read_now
        self._on_record = on_record
        self._equipment = {item.id: item for item in config.equipment}
        self._pending_orders: set[str] = set()
        self._pending_lots: set[str] = set()
        self._lock = asyncio.Lock()  # one event or finalisation at a time: simple and ordered
        self._kick = asyncio.Event()
        self.records_enqueued = 0

    # -- start-up ---------------------------------------------------------------------------

    async def resume(self) -> None:
        """After a restart: orders stopped but not final, lots completed but not summarised."""
        for order_id in await self._store.open_order_ids():
            self._pending_orders.add(order_id)
        for lot_id in await self._store.pending_lot_ids():
            self._pending_lots.add(lot_id)
        if self._pending_orders or self._pending_lots:
            log.info(
                "resuming %d open orders and %d pending lots",
                len(self._pending_orders),
                len(self._pending_lots),
            )
        await self.finalise_ready()

    # -- MES events -------------------------------------------------------------------------

    async def handle_event(self, event: OrderEvent) -> None:
        """Commit one validated event; raises EventRejected for events inconsistent with state."""
        equipment = self._equipment.get(event.equipment_id or "")
        reading: asyncio.Task[None] | None = None
        if event.type != "lot_complete" and equipment is not None:
            # Read first, validate while the meters answer: the boundary reading is what matters.
            reading = asyncio.create_task(self._read_equipment(equipment))
        try:
            async with self._lock:
                await self._check_consistent(event)
                stored = StoredEvent(
                    event_id=event.event_id,
                    type=event.type,
                    ts_ns=event.ts_ns,
                    order_id=event.order_id,
                    lot_id=event.lot_id,
                    equipment_id=event.equipment_id,
                    payload_json=event.raw_json,
                    received_ns=self._clock.now_ns(),
                )
                if not await self._store.insert_event(stored):
                    log.info("duplicate event %s ignored", event.event_id)
                    return
                if event.type == "start" and event.order_id and event.equipment_id:
                    await self._store.upsert_order_open(
                        event.order_id, event.lot_id, event.equipment_id
                    )
        finally:
            if reading is not None:
                await reading
        if event.type == "lot_complete":
            self._pending_lots.add(event.lot_id)
        elif event.order_id is not None:
            status = await self._store.order_status(event.order_id)
            if event.type == "stop" or (status is not None and status.status == "final"):
                # A late pause/resume/stop for a final order is a correction: recompute.
                self._pending_orders.add(event.order_id)
        # Finalising (attribution, records) runs in the background so that the next event's
        # read-on-event is not queued behind it: the boundary reading is what must be fast.
        self._kick.set()

    async def run_finaliser(self) -> None:
        """Finalise whenever an event or a sample batch asks for it (until cancelled)."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            await self.finalise_ready()

    def request_finalise(self) -> None:
        self._kick.set()

    async def _check_consistent(self, event: OrderEvent) -> None:
        if event.type in ("stop", "pause", "resume") and event.order_id is not None:
            known = await self._store.events_for_order(event.order_id)
            starts = [e for e in known if e.type == "start"]
            if not starts:
                raise EventRejected(
                    f"{event.type} without start: order_id {event.order_id!r} has no start event"
                )
            if starts[0].equipment_id != event.equipment_id:
                raise EventRejected(
                    f"equipment_id {event.equipment_id!r} does not match order "
                    f"{event.order_id!r}, which started on {starts[0].equipment_id!r}"
                )

    async def _read_equipment(self, equipment: EquipmentConfig) -> None:
        meter_ids = [ref.meter for ref in equipment.meters]
        state = equipment.state
        if state is not None and state.meter not in meter_ids:
            meter_ids.append(state.meter)
        try:
            samples = await self._read_now(meter_ids)
            await self._store.write_samples(samples)
        except Exception:
            # A failed boundary read only widens the interpolation; the event still counts.
            log.exception("read-on-event for %s failed", equipment.id)

    # -- finalisation -----------------------------------------------------------------------

    async def finalise_ready(self) -> None:
        """Finalise every pending order whose data is complete (or timed out), then lots."""
        async with self._lock:
            for order_id in sorted(self._pending_orders):
                if await self._try_finalise_order(order_id):
                    self._pending_orders.discard(order_id)
            for lot_id in sorted(self._pending_lots):
                if await self._try_finalise_lot(lot_id):
                    self._pending_lots.discard(lot_id)

    @property
    def pending(self) -> tuple[int, int]:
        return len(self._pending_orders), len(self._pending_lots)

    async def _timeline(self, order_id: str, now_ns: int) -> OrderTimeline | None:
        stored = await self._store.events_for_order(order_id)
        events = [self._parse_stored(e) for e in stored]
        return replay_order([e for e in events if e is not None], open_end_ns=now_ns)

    def _parse_stored(self, stored: StoredEvent) -> OrderEvent | None:
        try:
            return parse_event(stored.payload_json.encode(), self._equipment.keys())
        except EventRejected:
            # Equipment removed from the config since the event was accepted: keep its time.
            log.warning("stored event %s no longer validates; ignored", stored.event_id)
            return None

    async def _try_finalise_order(self, order_id: str) -> bool:
        now_ns = self._clock.now_ns()
        timeline = await self._timeline(order_id, now_ns)
        if timeline is None or timeline.stop_ns is None:
            return True  # nothing to finalise (yet): forget until its stop arrives
        equipment = self._equipment.get(timeline.equipment_id)
        if equipment is None:
            log.warning("order %s ran on unknown equipment %s", order_id, timeline.equipment_id)
            return True
        complete = await self._boundary_covered(equipment, timeline.stop_ns)
        timed_out = now_ns >= timeline.stop_ns + int(equipment.final_timeout_s * NS_PER_S)
        if not complete and not timed_out:
            return False
        inputs = await self._order_inputs(equipment, timeline, now_ns)
        status = await self._store.order_status(order_id)
        revision = 1 if status is None or status.status != "final" else status.revision + 1
        record = build_order(inputs, revision=revision, final_by_timeout=not complete)
        topic = order_topic(self._config, equipment, timeline.lot_id)
        outbox = OutboxRecord(
            record_id=record.record_id,
            revision=revision,
            kind="order",
            lot_id=timeline.lot_id,
            order_id=order_id,
            topic=topic,
            payload=record.to_json(),
            created_ns=now_ns,
        )
        await self._store.finalise_order(order_id, outbox)
        self.records_enqueued += 1
        self._on_record()
        log.info(
            "order %s on %s final (rev %d): %.4f kWh, %.4f kg CO2e",
            order_id,
            equipment.id,
            revision,
            record.energy_kwh,
            record.co2e_kg,
        )
        if await self._store.lot_completed(timeline.lot_id):
            self._pending_lots.add(timeline.lot_id)
        return True

    async def _boundary_covered(self, equipment: EquipmentConfig, stop_ns: int) -> bool:
        for ref in equipment.meters:
            meter = self._config.meter(ref.meter)
            point = attributed_point_name(dict(meter.points), ref.point)
            if not await self._store.has_reading_at_or_after(meter.id, point, stop_ns):
                return False
        return True

    async def _order_inputs(
        self, equipment: EquipmentConfig, timeline: OrderTimeline, now_ns: int
    ) -> OrderInputs:
        stop_ns = timeline.stop_ns if timeline.stop_ns is not None else now_ns
        start_ns = timeline.start_ns
        readings: dict[tuple[str, str], list[Sample]] = {}
        shaping_power: dict[tuple[str, str], list[Sample]] = {}
        since_ns, until_ns = start_ns - _READING_MARGIN_NS, stop_ns + _READING_MARGIN_NS
        for ref in equipment.meters:
            meter = self._config.meter(ref.meter)
            point = attributed_point_name(dict(meter.points), ref.point)
            readings[(meter.id, point)] = await self._store.readings(
                meter.id, point, since_ns, until_ns
            )
            power_point = shaping_power_point(meter.points)
            if meter.points[point].role is PointRole.ENERGY and power_point is not None:
                shaping_power[(meter.id, point)] = await self._store.readings(
                    meter.id, power_point, since_ns, until_ns
                )
        state_samples: list[Sample] = []
        state = equipment.state
        if isinstance(state, StateSource):
            state_samples = await self._store.readings(
                state.meter, state.point, start_ns - _READING_MARGIN_NS, stop_ns
            )
        elif isinstance(state, DerivedState):
            meter = self._config.meter(state.meter)
            point = state.point or attributed_point_name(dict(meter.points), None)
            state_samples = await self._store.readings(
                state.meter, point, start_ns - _READING_MARGIN_NS, stop_ns + _READING_MARGIN_NS
            )
        neighbours = await self._overlapping_orders(equipment.id, timeline, now_ns)
        return OrderInputs(
            config=self._config,
            equipment=equipment,
            timeline=timeline,
            others=tuple(neighbours),
            readings=readings,
            state_samples=tuple(state_samples),
            shaping_power=shaping_power,
        )

    async def _overlapping_orders(
        self, equipment_id: str, timeline: OrderTimeline, now_ns: int
    ) -> list[OrderTimeline]:
        end_ns = timeline.stop_ns if timeline.stop_ns is not None else now_ns
        order_ids = await self._store.order_ids_on_equipment(
            equipment_id, timeline.start_ns - _OVERLAP_LOOKBACK_NS, end_ns
        )
        others = []
        for other_id in order_ids:
            if other_id == timeline.order_id:
                continue
            other = await self._timeline(other_id, now_ns)
            if other is not None and any(other.overlaps(a, b) for a, b in timeline.occupied):
                others.append(other)
        return others

    async def _try_finalise_lot(self, lot_id: str) -> bool:
        order_ids = await self._store.order_ids_in_lot(lot_id)
        statuses = [await self._store.order_status(order_id) for order_id in order_ids]
        if any(status is None or status.status != "final" for status in statuses):
            return False  # waits for its orders; finalised when the last one is
        records = [await self._store.latest_record(order_id) for order_id in order_ids]
        completion = await self._store.lot_completion_event(lot_id)
        if completion is None:
            return True
        completion_event = self._parse_stored(completion)
        lot_status = await self._store.lot_status(lot_id)
        revision = (
            1 if lot_status is None or lot_status.status != "final" else lot_status.revision + 1
        )
        record = build_lot(
            self._config,
            lot_id,
            [r for r in records if r is not None],
            quantity_good=completion_event.quantity_good if completion_event else None,
            revision=revision,
        )
        outbox = OutboxRecord(
            record_id=record.record_id,
            revision=revision,
            kind="lot",
            lot_id=lot_id,
            order_id=None,
            topic=lot_topic(self._config, lot_id),
            payload=record.to_json(),
            created_ns=self._clock.now_ns(),
        )
        await self._store.finalise_lot(lot_id, outbox)
        self.records_enqueued += 1
        self._on_record()
        log.info(
            "lot %s summarised: %.4f kWh, %.4f kg CO2e", lot_id, record.energy_kwh, record.co2e_kg
        )
        return True
