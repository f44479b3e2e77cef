"""Replay of one order's MES events into the time it occupied its equipment (pure).

Order state is never kept as mutable rows: the engine stores every accepted event and replays
them, sorted by their own ``ts``, whenever it needs the order. Late and out-of-order events are
therefore placed where they happened, and a recomputation always sees the same history.

Corrections (docs/contracts.md, "Correcting an event"): events are given in the order they were
received. An event named by another's ``supersedes`` is out of force. Of the events in force,
the last *received* ``start`` and the last received ``stop`` count (a re-sent stop with new
numbers corrects the old one; ties never depend on how ids sort). A ``cancel`` with
``supersedes`` withdraws just the event it names; a ``cancel`` without it voids the order.
Pauses and resumes all count, placed by their ``ts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Same-instant events are applied in the order a floor would produce them.
_TYPE_RANK = {"start": 0, "resume": 1, "pause": 2, "stop": 3, "cancel": 4, "lot_complete": 5}


class EventLike(Protocol):
    @property
    def event_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def ts_ns(self) -> int: ...
    @property
    def order_id(self) -> str | None: ...
    @property
    def lot_id(self) -> str: ...
    @property
    def equipment_id(self) -> str | None: ...
    @property
    def product_id(self) -> str | None: ...
    @property
    def quantity_good(self) -> float | None: ...
    @property
    def quantity_scrap(self) -> float | None: ...
    @property
    def unit(self) -> str: ...
    @property
    def supersedes(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class OrderTimeline:
    order_id: str
    lot_id: str
    equipment_id: str
    product_id: str | None
    start_ns: int
    stop_ns: int | None  # None while the order runs; the closing instant when auto-closed
    # [start, end) pieces, pauses removed; open end = stop or now
    occupied: tuple[tuple[int, int], ...]
    quantity_good: float | None
    quantity_scrap: float | None
    unit: str
    anomalies: tuple[str, ...]  # e.g. "resume without pause at ..." — become record flags
    corrections: tuple[str, ...] = ()  # events replaced by later ones — become record flags
    cancelled: bool = False  # a cancel is in force: the order occupied nothing
    auto_closed: bool = False  # no stop within the equipment's maximum order duration

    @property
    def is_stopped(self) -> bool:
        return self.stop_ns is not None

    @property
    def end_ns(self) -> int:
        """Stop, else the end of the last occupied piece, else the start."""
        if self.stop_ns is not None:
            return self.stop_ns
        return self.occupied[-1][1] if self.occupied else self.start_ns

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        return any(a < end_ns and b > start_ns for a, b in self.occupied)


def order_events_sorted(events: Iterable[EventLike]) -> list[EventLike]:
    return sorted(events, key=lambda e: (e.ts_ns, _TYPE_RANK.get(e.type, 9), e.event_id))


def in_force(events: Sequence[EventLike]) -> tuple[list[EventLike], list[str]]:
    """The events not superseded (receive order kept), and a note per superseded one."""
    named = {e.supersedes for e in events if e.supersedes is not None}
    kept = [e for e in events if e.event_id not in named]
    by_id = {e.event_id: e for e in events}
    notes = [
        f"{by_id[e.supersedes].type} {e.supersedes} superseded by {e.event_id}"
        for e in events
        if e.supersedes is not None and e.supersedes in by_id
    ]
    return kept, notes


def _differs(older: EventLike, newer: EventLike) -> bool:
    """A re-sent event with the same content (an MES retry under a new id) corrects nothing."""
    fields = ("ts_ns", "quantity_good", "quantity_scrap", "unit", "product_id", "lot_id")
    return any(getattr(older, name) != getattr(newer, name) for name in fields)


def replay_order(
    events: Sequence[EventLike], open_end_ns: int, max_duration_ns: int | None = None
) -> OrderTimeline | None:
    """The order's occupied time; ``open_end_ns`` closes a still-running order (usually now).

    ``events`` are in the order they were received (that decides which of two starts or two
    stops counts). An order still open at ``open_end_ns`` more than ``max_duration_ns`` after
    its start is closed at its last event and marked ``auto_closed``.
    Returns None when there is no start in force (the engine holds such events for a while).
    """
    current, corrections = in_force([e for e in events if e.type != "lot_complete"])
    starts = [e for e in current if e.type == "start"]
    if not starts:
        return None
    start = starts[-1]
    stops = [e for e in current if e.type == "stop"]
    stop: EventLike | None = stops[-1] if stops else None
    for older, newer in ((e, starts[-1]) for e in starts[:-1]):
        if _differs(older, newer):
            corrections.append(f"start {older.event_id} replaced by {newer.event_id}")
    for older, newer in ((e, stops[-1]) for e in stops[:-1]):
        if _differs(older, newer):
            corrections.append(f"stop {older.event_id} replaced by {newer.event_id}")
    anomalies: list[str] = []
    if stop is not None and stop.ts_ns < start.ts_ns:
        anomalies.append(f"stop at {stop.ts_ns} before start at {start.ts_ns}: ignored")
        stop = None
    # A cancel naming an event withdraws that event (done by in_force); one naming none
    # withdraws the order.
    cancelled = any(e.type == "cancel" and e.supersedes is None for e in current)
    others = [e for e in order_events_sorted(current) if e.type in ("pause", "resume")]
    pieces: list[tuple[int, int]] = []
    running_since: int | None = start.ts_ns
    last_activity = start.ts_ns
    for event in others:
        if event.ts_ns < start.ts_ns:
            anomalies.append(f"{event.type} before start at {event.ts_ns}")
            continue
        if stop is not None and event.ts_ns > stop.ts_ns:
            anomalies.append(f"{event.type} after stop at {event.ts_ns}")
            continue
        last_activity = max(last_activity, event.ts_ns)
        if event.type == "pause":
            if running_since is None:
                anomalies.append(f"pause while paused at {event.ts_ns}")
                continue
            pieces.append((running_since, event.ts_ns))
            running_since = None
        else:
            if running_since is not None:
                anomalies.append(f"resume without pause at {event.ts_ns}")
                continue
            running_since = event.ts_ns
    stop_ns = stop.ts_ns if stop is not None else None
    auto_closed = (
        stop_ns is None
        and not cancelled
        and max_duration_ns is not None
        and open_end_ns - start.ts_ns > max_duration_ns
    )
    if auto_closed:
        stop_ns = last_activity
    if running_since is not None:
        end = stop_ns if stop_ns is not None else max(open_end_ns, running_since)
        pieces.append((running_since, end))
    occupied = () if cancelled else tuple((a, b) for a, b in pieces if b > a)
    return OrderTimeline(
        order_id=start.order_id or "",
        lot_id=start.lot_id,
        equipment_id=start.equipment_id or "",
        product_id=start.product_id,
        start_ns=start.ts_ns,
        stop_ns=stop_ns if not cancelled else (stop_ns or last_activity),
        occupied=occupied,
        quantity_good=stop.quantity_good if stop is not None and not cancelled else None,
        quantity_scrap=stop.quantity_scrap if stop is not None and not cancelled else None,
        unit=(stop or start).unit,
        anomalies=tuple(anomalies),
        corrections=tuple(corrections),
        cancelled=cancelled,
        auto_closed=auto_closed,
    )
