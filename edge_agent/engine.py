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
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edge_agent.accounting import OrderInputs, build_lot, build_order, is_cancelled
from edge_agent.attribution.model import Interval
from edge_agent.attribution.standards import Standard, derive_standard
from edge_agent.clock import Clock
from edge_agent.clockwatch import clock_flags
from edge_agent.config import (
    AgentConfig,
    EquipmentConfig,
    attributed_point_name,
    shaping_power_point,
)
from edge_agent.config.models import DerivedState, SharedEquipmentConfig, StateSource
from edge_agent.domain import NS_PER_S, PointRole, Sample, iso_from_ns, ns_from_iso
from edge_agent.errors import EventRejected
from edge_agent.mes.events import ORDER_EVENT_TYPES, OrderEvent, parse_event
from edge_agent.mes.timeline import OrderTimeline, replay_order
from edge_agent.publish.topics import lot_topic, order_topic
from edge_agent.sharing import SharedInputs, extended_window, shared_points
from edge_agent.store import IntakeCommit, OutboxRecord, Status, Store, StoredEvent

log = logging.getLogger(__name__)

ReadNow = Callable[[Sequence[str]], Awaitable[list[Sample]]]
# (the order as replayed now, its record as last published, whether it was final before)
OrderListener = Callable[[OrderTimeline, Mapping[str, Any] | None, bool], None]

# Readings this far before an order's start and after its stop are loaded so that the
# boundary can be interpolated between the readings around it.
_READING_MARGIN_NS = 3600 * NS_PER_S
# Orders on one equipment are looked up this far back (longest plausible order).
_OVERLAP_LOOKBACK_NS = 7 * 86400 * NS_PER_S


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event of a batch."""

    status: Literal["accepted", "duplicate", "held", "rejected"]
    code: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LateRejection:
    """An event rejected after it was stored and acknowledged: a held event whose start never
    came, or came and contradicts it. The intake dead-letters it."""

    event_id: str
    code: str
    reason: str
    payload: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: list[Outcome]  # one per event, in order
    late: list[LateRejection]


@dataclass(frozen=True, slots=True)
class _Held:
    stored: StoredEvent
    event: OrderEvent
    batch_index: int | None  # its slot in this batch, None when stored by an earlier one


@dataclass(slots=True)
class _Admission:
    """A batch being judged: outcomes, the rows to store, rejections to count."""

    now_ns: int
    counts: Counter[str]
    outcomes: list[Outcome] = field(default_factory=list)
    slots: list[StoredEvent | None] = field(default_factory=list)
    slot_of: list[int | None] = field(default_factory=list)  # per outcome
    ids: list[str] = field(default_factory=list)  # per outcome: its event_id
    released: set[str] = field(default_factory=set)
    late: list[LateRejection] = field(default_factory=list)
    known_before: set[str] = field(default_factory=set)  # orders with events before the batch
    existing: set[str] = field(default_factory=set)  # event ids stored, or taken by this batch
    by_id: dict[str, OrderEvent] = field(default_factory=dict)  # this batch's events, taken
    stored: dict[str, list[StoredEvent]] = field(default_factory=dict)  # per order, prefetched

    def add(self, event_id: str, outcome: Outcome, stored: StoredEvent | None) -> int:
        self.ids.append(event_id)
        self.outcomes.append(outcome)
        if stored is None:
            self.slot_of.append(None)
            return -1
        self.slots.append(stored)
        self.slot_of.append(len(self.slots) - 1)
        return len(self.slots) - 1

    def _outcome_index(self, slot: int) -> int:
        return self.slot_of.index(slot)

    def unhold(self, slot: int) -> None:
        stored = self.slots[slot]
        assert stored is not None
        self.slots[slot] = replace(stored, held_until_ns=None)
        self.outcomes[self._outcome_index(slot)] = Outcome("accepted")

    def reject(self, slot: int, exc: EventRejected) -> None:
        index = self._outcome_index(slot)
        stored = self.slots[slot]
        if stored is not None:  # not stored after all: a fixed copy may come later
            self.existing.discard(stored.event_id)
            self.by_id.pop(stored.event_id, None)
        self.slots[slot] = None
        self.slot_of[index] = None
        self.outcomes[index] = Outcome("rejected", exc.code, exc.reason)
        self.counts[exc.code] += 1
        for later, event_id in enumerate(self.ids):  # its copies judged duplicates meanwhile
            copy = later > index and event_id == self.ids[index]
            if copy and self.outcomes[later].status == "duplicate":
                self.outcomes[later] = Outcome("rejected", exc.code, exc.reason)
                self.counts[exc.code] += 1

    def commit(self) -> tuple[IntakeCommit, list[int | None]]:
        """The store's batch, and per outcome its position in it (None: nothing stored)."""
        kept: list[StoredEvent] = []
        position_of_slot: dict[int, int] = {}
        for slot, stored in enumerate(self.slots):
            if stored is not None:
                position_of_slot[slot] = len(kept)
                kept.append(stored)
        positions = [position_of_slot.get(s) if s is not None else None for s in self.slot_of]
        commit = IntakeCommit(
            events=kept,
            rejected=dict(self.counts),
            released_orders=sorted(self.released),
            dropped_held=[rejection.event_id for rejection in self.late],
        )
        return commit, positions


@dataclass(slots=True)
class _Lookups:
    """Store answers kept for the finalisation of one order (every store call is a thread hop,
    and under load each hop waits for the event loop)."""

    overlapping: dict[tuple[str, int, int, int], list[str]] = field(default_factory=dict)
    timelines: dict[tuple[str, int], OrderTimeline | None] = field(default_factory=dict)


def _stored(event: OrderEvent, now_ns: int, held_until_ns: int | None) -> StoredEvent:
    is_order_event = event.type != "lot_complete"  # an order_id on a lot_complete is ignored
    return StoredEvent(
        event_id=event.event_id,
        type=event.type,
        ts_ns=event.ts_ns,
        order_id=event.order_id if is_order_event else None,
        lot_id=event.lot_id,
        equipment_id=event.equipment_id if is_order_event else None,
        payload_json=event.raw_json,
        received_ns=now_ns,
        supersedes=event.supersedes,
        held_until_ns=held_until_ns,
    )


def _same_numbers(published: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> bool:
    """Whether a recomputed record says what the published one says (revision aside)."""
    return {k: v for k, v in published.items() if k != "revision"} == {
        k: v for k, v in rebuilt.items() if k != "revision"
    }


def _check_same_equipment(event: OrderEvent, equipment_id: str | None) -> None:
    if event.equipment_id != equipment_id:
        raise EventRejected(
            f"equipment_id {event.equipment_id!r} does not match order {event.order_id!r}, "
            f"which is on {equipment_id!r} (to move an order, cancel it and start a new "
            "order id)",
            "equipment_mismatch",
        )


def _check_same_lot(event: OrderEvent, lot_id: str) -> None:
    if event.lot_id != lot_id:
        raise EventRejected(
            f"lot_id {event.lot_id!r} does not match order {event.order_id!r}, which belongs "
            f"to lot {lot_id!r} (an order produces one lot: cancel it and start a new order id)",
            "lot_mismatch",
        )


def _check_after_start(event: OrderEvent, start_ns: int) -> None:
    if event.type in ("stop", "pause", "resume") and event.ts_ns < start_ns:
        raise EventRejected(
            f"{event.type} at {iso_from_ns(event.ts_ns)} is before its order's start at "
            f"{iso_from_ns(start_ns)} (order_id {event.order_id!r})",
            "stop_before_start" if event.type == "stop" else "before_start",
        )


class OrderEngine:
    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        clock: Clock,
        read_now: ReadNow,
        on_record: Callable[[], None],
        *,
        unwritten_since: Callable[[], int | None] = lambda: None,
        write_samples_soon: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        # The time of the oldest polled sample not yet in the store (None: all written).
        self._unwritten_since = unwritten_since
        # Asks the sample writer for its pending batch now rather than at the batch's age: a
        # stopped order waits for the polls before its stop (up to store.batch_max_delay_s).
        self._write_samples_soon = write_samples_soon
        self._store = store
        self._clock = clock
        self._read_now = read_now
        self._on_record = on_record
        self._equipment = {item.id: item for item in config.equipment}
        self._pending_orders: set[str] = set()  # own events changed, or not final yet
        # Final orders to recompute only because an order that shared their equipment changed
        # (their own timeline did not: recomputing them passes nothing on).
        self._recheck_orders: set[str] = set()
        self._pending_lots: set[str] = set()
        self._lock = asyncio.Lock()  # one event or finalisation at a time: simple and ordered
        self._lookups: _Lookups | None = None  # set while an order is being finalised
        self._kick = asyncio.Event()
        self.records_enqueued = 0
        # Told of every order record computed (published or not): the energy balances.
        self.order_listener: OrderListener | None = None

    # -- start-up ---------------------------------------------------------------------------

    async def resume(self) -> None:
        """After a restart: orders stopped but not final, final orders corrected or left to
        recheck, lots completed but not summarised or whose summary may be stale."""
        for order_id in await self._store.open_order_ids():
            self._pending_orders.add(order_id)
        self._pending_orders.update(await self._store.final_orders_changed_since_final())
        self._queue_recheck(await self._store.recheck_order_ids())
        for lot_id in await self._store.pending_lot_ids():
            self._pending_lots.add(lot_id)
        self._pending_lots.update(await self._store.stale_lot_ids())
        if self._pending_orders or self._pending_lots:
            log.info(
                "resuming %d open orders and %d pending lots",
                len(self._pending_orders),
                len(self._pending_lots),
            )
        await self.finalise_ready()

    # -- MES events -------------------------------------------------------------------------

    async def handle_batch(
        self, events: Sequence[OrderEvent], rejected: Mapping[str, int] | None = None
    ) -> BatchResult:
        """Judge and commit a batch of parsed events in one durable transaction.

        ``rejected`` counts the batch's messages that failed parsing: they are committed with
        it. Events inconsistent with what is stored are rejected (an outcome, not an
        exception); an exception means the batch was not committed and nothing may be
        acknowledged.
        """
        reads = [
            asyncio.create_task(self._read_equipment(self._equipment[equipment_id]))
            for equipment_id in sorted(
                {e.equipment_id for e in events if e.type in ORDER_EVENT_TYPES and e.equipment_id}
            )
            if equipment_id in self._equipment
        ]  # read first, judge while the meters answer: the boundary reading is what matters
        try:
            async with self._lock:
                admission = await self._admit(events, rejected or {})
                commit, positions = admission.commit()
                inserted = await self._store.commit_intake(commit)
        finally:
            if reads:
                await asyncio.gather(*reads)
        outcomes = list(admission.outcomes)
        for index, position in enumerate(positions):
            if position is not None and not inserted[position]:
                outcomes[index] = Outcome("duplicate")
        try:
            await self._schedule(events, outcomes, admission.released, admission.known_before)
        except Exception:  # committed: the batch must not be processed twice
            log.exception("scheduling after an MES batch failed; recomputing its orders")
            self._pending_orders.update(e.order_id for e in events if e.order_id is not None)
            self._pending_lots.update(e.lot_id for e in events if e.type == "lot_complete")
            self._kick.set()
        return BatchResult(outcomes, admission.late)

    async def _admit(
        self, events: Sequence[OrderEvent], parse_rejected: Mapping[str, int]
    ) -> _Admission:
        now_ns = self._clock.now_ns()
        hold_until = now_ns + int(self._config.mes.hold_without_start_s * NS_PER_S)
        admission = _Admission(now_ns=now_ns, counts=Counter(parse_rejected))
        existing = admission.existing = await self._store.existing_event_ids(
            [e.event_id for e in events]
        )
        orders = sorted({e.order_id for e in events if e.order_id and e.type != "lot_complete"})
        admission.stored = await self._store.events_of_orders(orders)
        history: dict[str, list[OrderEvent]] = {}  # per order: stored + this batch, as received
        held: dict[str, list[_Held]] = {}  # per order: held events, stored or from this batch
        for event in events:
            if event.event_id in existing:
                admission.add(event.event_id, Outcome("duplicate"), None)
                continue
            try:
                verdict = await self._judge(event, history, held, admission)
            except EventRejected as exc:
                # Not stored: a fixed copy under the same id later in the batch is judged anew.
                admission.counts[exc.code] += 1
                admission.add(event.event_id, Outcome("rejected", exc.code, exc.reason), None)
                continue
            existing.add(event.event_id)
            admission.by_id[event.event_id] = event
            stored = _stored(event, now_ns, hold_until if verdict == "held" else None)
            index = admission.add(event.event_id, Outcome(verdict), stored)
            if event.order_id is not None and event.type != "lot_complete":
                if verdict == "held":
                    held[event.order_id].append(_Held(stored, event, index))
                else:
                    history[event.order_id].append(event)
        for rejection in admission.late:
            admission.counts[rejection.code] += 1
        return admission

    async def _judge(
        self,
        event: OrderEvent,
        history: dict[str, list[OrderEvent]],
        held: dict[str, list[_Held]],
        admission: _Admission,
    ) -> Literal["accepted", "held"]:
        """Accepted or held; raises EventRejected with the reason."""
        if event.type == "lot_complete":
            if event.supersedes is not None:
                await self._check_supersedes(event, [], admission)
            return "accepted"
        assert event.order_id is not None  # the parser requires it for order events
        order_id = event.order_id
        if order_id not in history:
            stored = admission.stored.get(order_id, [])
            in_force = [e for e in stored if e.held_until_ns is None]
            history[order_id] = [e for e in map(self._parse_stored, in_force) if e is not None]
            held[order_id] = [
                _Held(row, parsed, None)
                for row in stored
                if row.held_until_ns is not None and (parsed := self._parse_stored(row)) is not None
            ]
            if in_force:
                admission.known_before.add(order_id)
        known = history[order_id]
        # Held events are not evidence yet: a wrong one must not get the real start rejected.
        reference = known or ([] if event.type == "start" else [h.event for h in held[order_id]])
        for other in reference[:1]:
            _check_same_equipment(event, other.equipment_id)
            _check_same_lot(event, other.lot_id)
        if len(known) + len(held[order_id]) >= self._config.mes.max_events_per_order:
            raise EventRejected(
                f"order {order_id!r} already has {len(known) + len(held[order_id])} events "
                f"(mes.max_events_per_order {self._config.mes.max_events_per_order})",
                "too_many_events",
            )
        if event.supersedes is not None:
            await self._check_supersedes(
                event, [*known, *(h.event for h in held[order_id])], admission
            )
        before = replay_order(known, open_end_ns=admission.now_ns)
        if event.type != "start":
            if before is None:
                return "held"
            _check_after_start(event, before.start_ns)
            return "accepted"
        after = replay_order([*known, event], open_end_ns=admission.now_ns)
        if after is not None and any(a.startswith("stop at") for a in after.anomalies):
            raise EventRejected(
                f"start at {iso_from_ns(event.ts_ns)} is after the order's stop "
                f"at {iso_from_ns(before.stop_ns or 0) if before else '?'}",
                "stop_before_start",
            )
        if held[order_id]:
            self._release(event, held.pop(order_id), history, admission)
            held[order_id] = []
        return "accepted"

    def _release(
        self,
        start: OrderEvent,
        waiting: list[_Held],
        history: dict[str, list[OrderEvent]],
        admission: _Admission,
    ) -> None:
        """A start arrived: its held events count from now on, unless they contradict it."""
        assert start.order_id is not None
        for item in waiting:
            try:
                _check_same_equipment(item.event, start.equipment_id)
                _check_same_lot(item.event, start.lot_id)
                _check_after_start(item.event, start.ts_ns)
            except EventRejected as exc:
                if item.batch_index is None:
                    admission.late.append(
                        LateRejection(
                            item.stored.event_id, exc.code, exc.reason, item.stored.payload_json
                        )
                    )
                else:  # held in this very batch: never stored, rejected like any other
                    admission.reject(item.batch_index, exc)
                continue
            if item.batch_index is None:
                admission.released.add(start.order_id)
            else:
                admission.unhold(item.batch_index)
            history[start.order_id].append(item.event)

    async def _check_supersedes(
        self, event: OrderEvent, known: Sequence[OrderEvent], admission: _Admission
    ) -> None:
        target_id = event.supersedes
        target = next((e for e in known if e.event_id == target_id), None)
        if target is None and target_id is not None:
            target = admission.by_id.get(target_id)  # earlier in this very batch
        if target is None and target_id is not None:
            stored = await self._store.event_by_id(target_id)
            target = self._parse_stored(stored) if stored is not None else None
        if target is None:
            return  # not known (yet): it is out of force whenever it arrives
        same = (
            target.lot_id == event.lot_id
            if event.type == "lot_complete"
            else target.order_id == event.order_id
        )
        if target.type == "start" and event.type != "start":
            raise EventRejected(
                f"supersedes {target_id!r}, the start of order {target.order_id!r}: a start can "
                "only be replaced by another start (to withdraw the order, send a cancel "
                "without supersedes)",
                "invalid_supersedes",
            )
        if not same or (target.type == "lot_complete") != (event.type == "lot_complete"):
            what = (
                f"lot {event.lot_id!r}"
                if event.type == "lot_complete"
                else f"order {event.order_id!r}"
            )
            raise EventRejected(
                f"supersedes {target_id!r}, a {target.type} of order {target.order_id!r} "
                f"lot {target.lot_id!r}: a correction must replace an event of the same {what}",
                "invalid_supersedes",
            )

    async def _schedule(
        self,
        events: Sequence[OrderEvent],
        outcomes: Sequence[Outcome],
        released: set[str],
        known_before: set[str],
    ) -> None:
        """Orders and lots to (re)compute after a committed batch."""
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome.status != "accepted":
                continue
            if event.type == "lot_complete":
                self._pending_lots.add(event.lot_id)
                continue
            assert event.order_id is not None
            if event.type == "start" and await self._store.lot_completed(event.lot_id):
                # An order starting in a completed lot makes the lot's summary incomplete
                # again (a new revision says so) — also when earlier events of the order were
                # held waiting for this start.
                status = await self._store.order_status(event.order_id)
                if status is None or status.status != "final":
                    self._pending_lots.add(event.lot_id)
            if event.type in ("stop", "cancel") or event.order_id in released:
                self._pending_orders.add(event.order_id)
                self._write_samples_soon()
                continue
            if event.order_id not in known_before:
                continue  # a new order cannot be final yet
            status = await self._store.order_status(event.order_id)
            if status is not None and status.status == "final":
                # A late pause/resume/start for a final order is a correction: recompute.
                self._pending_orders.add(event.order_id)
        # Finalising (attribution, records) runs in the background so that the next batch's
        # read-on-event is not queued behind it: the boundary reading is what must be fast.
        self._kick.set()

    async def expire_held(self) -> list[LateRejection]:
        """Held events whose start did not come in time: removed, counted, to be dead-lettered."""
        async with self._lock:
            expired = await self._store.expire_held(self._clock.now_ns(), "without_start")
        hold_s = self._config.mes.hold_without_start_s
        return [
            LateRejection(
                e.event_id,
                "without_start",
                f"{e.type} for order {e.order_id!r} without start: no start arrived within "
                f"{hold_s:g} s (mes.hold_without_start_s)",
                e.payload_json,
            )
            for e in expired
        ]

    async def close_stale(self) -> int:
        """Queue open orders older than their equipment's maximum duration (auto-close)."""
        if not self._equipment:
            return 0
        shortest = min(item.max_order_duration_s for item in self._equipment.values())
        cutoff = self._clock.now_ns() - int(shortest * NS_PER_S)
        stale = await self._store.stale_open_orders(cutoff)
        self._pending_orders.update(stale)
        if stale:
            self._kick.set()
        return len(stale)

    async def run_finaliser(self) -> None:
        """Finalise whenever an event or a sample batch asks for it (until cancelled)."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            await self.finalise_ready()

    def request_finalise(self) -> None:
        self._kick.set()

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
        """Finalise every pending order whose data is complete (or timed out), then lots.

        The lock is taken per order, so a long backlog never holds MES batches up for long;
        orders queued for a recheck meanwhile are taken on the next call (the finaliser is
        kicked for them).
        """
        for order_id in sorted(self._pending_orders | self._recheck_orders):
            async with self._lock:
                if await self._try_finalise_order(order_id):
                    self._pending_orders.discard(order_id)
                    self._recheck_orders.discard(order_id)
        for lot_id in sorted(self._pending_lots):
            async with self._lock:
                if await self._try_finalise_lot(lot_id):
                    self._pending_lots.discard(lot_id)

    @property
    def pending(self) -> tuple[int, int]:
        return len(self._pending_orders | self._recheck_orders), len(self._pending_lots)

    def _queue_recheck(self, order_ids: Sequence[str]) -> None:
        fresh = [order_id for order_id in order_ids if order_id not in self._pending_orders]
        self._recheck_orders.update(fresh)
        if fresh:
            self._kick.set()

    async def _timeline(self, order_id: str, now_ns: int) -> OrderTimeline | None:
        return (await self._history(order_id, now_ns))[1]

    async def _history(
        self, order_id: str, now_ns: int
    ) -> tuple[list[StoredEvent], OrderTimeline | None]:
        """The order's stored events (in force or corrected) and their replay."""
        stored = await self._store.events_for_order(order_id)
        events = [e for e in map(self._parse_stored, stored) if e is not None]
        equipment = next(
            (self._equipment[e.equipment_id] for e in events if e.equipment_id in self._equipment),
            None,
        )
        max_ns = int(equipment.max_order_duration_s * NS_PER_S) if equipment else None
        return stored, replay_order(events, open_end_ns=now_ns, max_duration_ns=max_ns)

    def _parse_stored(self, stored: StoredEvent) -> OrderEvent | None:
        try:
            return parse_event(stored.payload_json.encode(), self._equipment.keys())
        except EventRejected:
            # Equipment removed from the config since the event was accepted: keep its time.
            log.warning("stored event %s no longer validates; ignored", stored.event_id)
            return None

    async def _try_finalise_order(self, order_id: str) -> bool:
        """Compute the order's record; publish it as a new revision if a number changed.

        Conservation by construction: a record depends on another order only where both
        occupied the equipment (the split of each piece of time). So when an order's own
        events changed — or it becomes final, having been seen running — every final order
        that overlapped any extent it ever had is queued for a recheck, durably with the
        record. A recheck changes no timeline, so it queues nothing further: it terminates.
        """
        now_ns = self._clock.now_ns()
        status = await self._store.order_status(order_id)
        was_final = status is not None and status.status == "final"
        own_change = order_id in self._pending_orders or not was_final
        stored, timeline = await self._history(order_id, now_ns)
        if timeline is None or timeline.stop_ns is None:
            if was_final:
                # Its stop was withdrawn: running again; the next stop (or the auto-close)
                # publishes the next revision, and its lot's summary is incomplete again.
                await self._store.reopen_order(order_id)
                log.warning("order %s reopened: its stop was withdrawn", order_id)
                if timeline is not None and await self._store.lot_completed(timeline.lot_id):
                    self._pending_lots.add(timeline.lot_id)
            return True  # nothing to finalise (yet): forget until its stop arrives
        equipment = self._equipment.get(timeline.equipment_id)
        if equipment is None:
            log.warning("order %s ran on unknown equipment %s", order_id, timeline.equipment_id)
            return True
        # The free check first (an order waiting for its polls costs no query per retry), and
        # again after the query, as before: a failed sample write puts its batch back.
        written = self._samples_written_through(timeline.stop_ns)
        if not written:
            self._write_samples_soon()
        complete = (
            written
            and await self._boundary_covered(equipment, timeline.stop_ns)
            and self._samples_written_through(timeline.stop_ns)
        )
        timed_out = now_ns >= timeline.stop_ns + int(equipment.final_timeout_s * NS_PER_S)
        if not complete and not timed_out and not timeline.cancelled:
            return False
        self._lookups = _Lookups()
        try:
            return await self._finalise_order(
                order_id,
                status,
                stored,
                timeline,
                equipment,
                now_ns,
                complete=complete,
                own_change=own_change,
            )
        finally:
            self._lookups = None

    async def _finalise_order(
        self,
        order_id: str,
        status: Status | None,
        stored: list[StoredEvent],
        timeline: OrderTimeline,
        equipment: EquipmentConfig,
        now_ns: int,
        *,
        complete: bool,
        own_change: bool,
    ) -> bool:
        """Compute the record of a stopped order whose data is complete (or timed out)."""
        was_final = status is not None and status.status == "final"
        inputs = await self._order_inputs(equipment, timeline, now_ns)
        published = await self._store.latest_record(order_id)
        revision = (status.revision if status is not None else 0) + 1  # reopened orders go on
        record = build_order(inputs, revision=revision, final_by_timeout=not complete)
        if self.order_listener is not None:  # the energy balances of the time it touches
            self.order_listener(timeline, published, was_final)
        recheck = (
            await self._neighbours_to_recheck(timeline, stored, published, now_ns)
            if own_change
            else []
        )
        if published is not None and _same_numbers(published, record.to_json_dict()):
            # Recomputed to the same record: no new revision (final now, rechecks queued).
            await self._store.confirm_order(
                order_id, record.record_id, int(published["revision"]), now_ns, recheck=recheck
            )
            self._queue_recheck(recheck)
            if not was_final and await self._store.lot_completed(timeline.lot_id):
                self._pending_lots.add(timeline.lot_id)
            return True
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
        await self._store.finalise_order(order_id, outbox, recheck=recheck)
        self.records_enqueued += 1
        self._on_record()
        how = ", cancelled" if timeline.cancelled else ""
        how = how or (", auto-closed" if timeline.auto_closed else "")
        log.info(
            "order %s on %s final (rev %d%s): %.4f kWh, %.4f kg CO2e%s",
            order_id,
            equipment.id,
            revision,
            how,
            record.energy_kwh,
            record.co2e_kg,
            f"; rechecking {len(recheck)} overlapping orders" if recheck else "",
        )
        self._queue_recheck(recheck)
        if await self._store.lot_completed(timeline.lot_id):
            self._pending_lots.add(timeline.lot_id)
        return True

    async def _neighbours_to_recheck(
        self,
        timeline: OrderTimeline,
        stored: Sequence[StoredEvent],
        published: Mapping[str, Any] | None,
        now_ns: int,
    ) -> list[str]:
        """Final orders whose record may count another extent of this order than it has now.

        What another order's record saw of this one, when it was computed:
        - with a stop in force: at most [earliest, latest] of all its events' ``ts`` (every
          start, stop, pause it ever had, superseded ones included) and its published extent;
        - with no stop in force (running, reopened, before an auto-close or a cancel): its
          start up to the moment the other was computed — a moment between the arrival of its
          first event and that of its last one (now, when it is auto-closed).
        A superset is harmless: a recheck that changes nothing publishes nothing.
        """
        times = [e.ts_ns for e in stored] + [timeline.start_ns, timeline.end_ns]
        if published is not None:
            times += [ns_from_iso(published["start"]), ns_from_iso(published["end"])]
        lo, hi = min(times), max(times)
        received = [e.received_ns for e in stored]
        seen_from = min(received, default=now_ns)
        seen_until = now_ns if timeline.auto_closed else max(received, default=now_ns)
        # The same equipment; and the other equipment of a shared equipment serving it, whose
        # orders split the shared energy of the same allocation intervals with this one.
        extents = {timeline.equipment_id: (lo, hi)}
        for shared in self._config.sharing(timeline.equipment_id):
            window = extended_window(Interval(lo, hi), shared.interval_s)
            for sibling in shared.serves:
                a, b = extents.get(sibling, (window.start_ns, window.end_ns))
                extents[sibling] = (min(a, window.start_ns), max(b, window.end_ns))
        by_extent: set[str] = set()
        seen_running: set[str] = set()
        for equipment_id, (a, b) in extents.items():
            by_extent.update(
                await self._possibly_overlapping(equipment_id, a - _OVERLAP_LOOKBACK_NS, a, b)
            )
            seen_running.update(
                await self._store.final_orders_finalised_between(
                    equipment_id, seen_from, seen_until
                )
            )
        recheck = []
        for other_id in sorted({*by_extent, *seen_running} - {timeline.order_id}):
            status = await self._store.order_status(other_id)
            if status is None or status.status != "final":
                continue  # computed when it is final, with what is stored then
            other = await self._timeline_looked_up(other_id, now_ns)
            if other is None:
                continue
            computed_ns = status.finalised_ns if status.finalised_ns is not None else now_ns
            a, b = extents.get(other.equipment_id, (lo, hi))
            if other.overlaps(a, b) or (
                other_id in seen_running and other.overlaps(a, computed_ns)
            ):
                recheck.append(other_id)
        return recheck

    def _samples_written_through(self, stop_ns: int) -> bool:
        """The polls up to the stop are in the store. The read-on-event sample at the stop is
        written at once, the polls before it in batches: computed in between, the record would
        see a reading gap that is not there (and call its boundary an estimate)."""
        oldest = self._unwritten_since()
        return oldest is None or oldest > stop_ns

    async def _boundary_covered(self, equipment: EquipmentConfig, stop_ns: int) -> bool:
        for ref in equipment.meters:
            meter = self._config.meter(ref.meter)
            point = attributed_point_name(dict(meter.points), ref.point)
            if not await self._store.has_reading_at_or_after(meter.id, point, stop_ns):
                return False
        # A shared equipment's part is computed over whole allocation intervals: its meters
        # must have read past the end of the interval the stop falls in.
        for shared in self._config.sharing(equipment.id):
            end_ns = extended_window(Interval(stop_ns, stop_ns), shared.interval_s).end_ns
            for meter_id, point in shared_points(self._config, [*shared.meters, *shared.subtract]):
                if not await self._store.has_reading_at_or_after(meter_id, point, end_ns):
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
        outages = await self._store.agent_downtimes(since_ns, until_ns)
        shared = [
            await self.shared_inputs(item, start_ns, stop_ns, outages)
            for item in self._config.sharing(equipment.id)
        ]
        standard = await self.standard_for(
            timeline.product_id, equipment.id, timeline.lot_id, start_ns
        )
        return OrderInputs(
            config=self._config,
            equipment=equipment,
            timeline=timeline,
            others=tuple(neighbours),
            readings=readings,
            state_samples=tuple(state_samples),
            shaping_power=shaping_power,
            clock_flags=clock_flags(self._clock, start_ns, stop_ns, now_ns),
            outages=tuple(outages),
            shared=tuple(shared),
            standard=standard,
        )

    async def standard_for(
        self, product_id: str | None, equipment_id: str | None, lot_id: str, before_ns: int
    ) -> Standard | None:
        """The configured standard of the product's step (or whole lot: ``equipment_id``
        None), else one derived from the last lots that ended before ``before_ns``."""
        settings = self._config.standards
        item = settings.configured(product_id, equipment_id)
        if item is not None:
            return Standard(item.kwh_per_unit, item.co2e_kg_per_unit, "configured", item.source)
        wanted = settings.derive_from_last_lots
        if not wanted or product_id is None:
            return None
        history = await self._store.recent_intensities(
            product_id, equipment_id or "", before_ns, lot_id, wanted
        )
        return derive_standard(history, wanted)

    async def shared_inputs(
        self,
        shared: SharedEquipmentConfig,
        start_ns: int,
        end_ns: int,
        outages: Sequence[tuple[int, int]],
    ) -> SharedInputs:
        """What allocating a shared equipment over [start, end] needs: its meters' readings
        over the whole allocation intervals, the orders on the equipment it serves then (and,
        for key direct_energy, their meters' readings)."""
        window = extended_window(Interval(start_ns, end_ns), shared.interval_s)
        since_ns = window.start_ns - _READING_MARGIN_NS
        until_ns = window.end_ns + _READING_MARGIN_NS
        readings: dict[tuple[str, str], list[Sample]] = {}
        for meter_id, point in shared_points(self._config, [*shared.meters, *shared.subtract]):
            readings[(meter_id, point)] = await self._store.readings(
                meter_id, point, since_ns, until_ns
            )
        served: dict[str, list[OrderTimeline]] = {}
        served_readings: dict[tuple[str, str], list[Sample]] = {}
        for equipment_id in shared.serves:
            served[equipment_id] = await self.timelines_overlapping(
                equipment_id, window.start_ns, window.end_ns
            )
            if shared.key != "direct_energy" or not served[equipment_id]:
                continue
            equipment = self._config.equipment_by_id(equipment_id)
            for meter_id, point in shared_points(self._config, equipment.meters):
                served_readings[(meter_id, point)] = await self._store.readings(
                    meter_id, point, since_ns, until_ns
                )
        return SharedInputs(shared, readings, served, served_readings, tuple(outages))

    async def timelines_overlapping(
        self, equipment_id: str, start_ns: int, end_ns: int
    ) -> list[OrderTimeline]:
        """The orders that occupied the equipment in [start, end), replayed now (a running
        order occupies it until now) — the orders an order record there would split with."""
        now_ns = self._clock.now_ns()
        order_ids = await self._store.order_ids_possibly_overlapping(
            equipment_id, start_ns - _OVERLAP_LOOKBACK_NS, start_ns, end_ns
        )
        timelines = []
        for order_id in order_ids:
            timeline = await self._timeline(order_id, now_ns)
            if timeline is not None and timeline.overlaps(start_ns, end_ns):
                timelines.append(timeline)
        return timelines

    async def _overlapping_orders(
        self, equipment_id: str, timeline: OrderTimeline, now_ns: int
    ) -> list[OrderTimeline]:
        end_ns = timeline.stop_ns if timeline.stop_ns is not None else now_ns
        order_ids = await self._possibly_overlapping(
            equipment_id, timeline.start_ns - _OVERLAP_LOOKBACK_NS, timeline.start_ns, end_ns
        )
        others = []
        for other_id in order_ids:
            if other_id == timeline.order_id:
                continue
            other = await self._timeline_looked_up(other_id, now_ns)
            if other is not None and any(other.overlaps(a, b) for a, b in timeline.occupied):
                others.append(other)
        return others

    async def _possibly_overlapping(
        self, equipment_id: str, started_from_ns: int, from_ns: int, to_ns: int
    ) -> list[str]:
        """The store's overlap candidates, asked once per finalisation (its inputs and its
        rechecks ask the same: the events cannot change while the engine's lock is held)."""
        key = (equipment_id, started_from_ns, from_ns, to_ns)
        lookups = self._lookups
        if lookups is not None and key in lookups.overlapping:
            return lookups.overlapping[key]
        found = await self._store.order_ids_possibly_overlapping(*key)
        if lookups is not None:
            lookups.overlapping[key] = found
        return found

    async def _timeline_looked_up(self, order_id: str, now_ns: int) -> OrderTimeline | None:
        """Another order replayed at ``now_ns``, once per finalisation (see above)."""
        lookups = self._lookups
        if lookups is not None and (order_id, now_ns) in lookups.timelines:
            return lookups.timelines[(order_id, now_ns)]
        timeline = await self._timeline(order_id, now_ns)
        if lookups is not None:
            lookups.timelines[(order_id, now_ns)] = timeline
        return timeline

    async def _try_finalise_lot(self, lot_id: str) -> bool:
        """The lot summary, made on ``lot_complete`` (docs/contracts.md, "Lot records").

        It waits only for orders that have stopped and are waiting for their boundary reading
        (final within their equipment's ``final_timeout_s``). Orders still running do not hold
        it: it is published with ``incomplete`` and ``open_steps``, and re-issued (revision + 1)
        as they become final.
        """
        completion = await self._store.lot_completion_event(lot_id)
        if completion is None:
            return True
        now_ns = self._clock.now_ns()
        final_ids: list[str] = []
        open_ids: list[str] = []
        for order_id, status in await self._store.lot_orders(lot_id):
            if status.status == "final":
                final_ids.append(order_id)
            elif await self._about_to_be_final(order_id, now_ns):
                return False  # retried on the next pass (samples and events kick it)
            else:
                open_ids.append(order_id)
        latest = [await self._store.latest_record(order_id) for order_id in final_ids]
        # A cancelled order is not a step of its lot.
        records = [r for r in latest if r is not None and not is_cancelled(r)]
        completion_event = self._parse_stored(completion)
        lot_status = await self._store.lot_status(lot_id)
        revision = (
            1 if lot_status is None or lot_status.status != "final" else lot_status.revision + 1
        )
        products = {r.get("product_id") for r in records}
        starts = [ns_from_iso(r["start"]) for r in records]
        standard = (
            await self.standard_for(products.pop(), None, lot_id, min(starts))
            if len(products) == 1 and starts
            else None
        )
        record = build_lot(
            self._config,
            lot_id,
            records,
            quantity_good=completion_event.quantity_good if completion_event else None,
            revision=revision,
            open_orders=open_ids,
            standard=standard,
        )
        published = await self._store.latest_lot_record(lot_id)
        if published is not None and _same_numbers(published, record.to_json_dict()):
            # An order was recomputed without changing the lot: checked now (a restart does
            # not check it again, see Store.stale_lot_ids).
            if lot_status is not None and lot_status.record_id is not None:
                await self._store.mark_lot_final(
                    lot_id, lot_status.record_id, lot_status.revision, now_ns
                )
            return True
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
            "lot %s summarised (rev %d%s): %.4f kWh, %.4f kg CO2e",
            lot_id,
            revision,
            f", incomplete: {len(open_ids)} steps not final" if open_ids else "",
            record.energy_kwh,
            record.co2e_kg,
        )
        return True

    async def _about_to_be_final(self, order_id: str, now_ns: int) -> bool:
        """Whether a lot summary should wait for this order (not final yet): it has stopped
        and its boundary reading is due within ``final_timeout_s``, or it is queued and will
        be final on the next pass (cancelled, auto-closed, or timed out)."""
        timeline = await self._timeline(order_id, now_ns)
        if timeline is None or timeline.stop_ns is None:
            return False  # running: the summary does not wait
        equipment = self._equipment.get(timeline.equipment_id)
        if equipment is None:
            return False  # it will never be final
        if timeline.auto_closed and order_id not in self._pending_orders:
            self._pending_orders.add(order_id)  # due for its auto-close: do it now
            self._kick.set()
        if order_id in self._pending_orders:
            return True  # the next pass finalises it (past due, cancelled, or auto-closed)
        return now_ns < timeline.stop_ns + int(equipment.final_timeout_s * NS_PER_S)
