"""Replay of one order's MES events into the time it occupied its equipment (pure).

Order state is never kept as mutable rows: the engine stores every accepted event and replays
them, sorted by their own ``ts``, whenever it needs the order. Late and out-of-order events are
therefore placed where they happened, and a recomputation always sees the same history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Same-instant events are applied in the order a floor would produce them.
_TYPE_RANK = {"start": 0, "resume": 1, "pause": 2, "stop": 3, "lot_complete": 4}


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


@dataclass(frozen=True, slots=True)
class OrderTimeline:
    order_id: str
    lot_id: str
    equipment_id: str
    product_id: str | None
    start_ns: int
    stop_ns: int | None  # None while the order runs
    occupied: tuple[
        tuple[int, int], ...
    ]  # [start, end) pieces, pauses removed; open end = stop or now
    quantity_good: float | None
    quantity_scrap: float | None
    unit: str
    anomalies: tuple[str, ...]  # e.g. "resume without pause at ..." — become record flags

    @property
    def is_stopped(self) -> bool:
        return self.stop_ns is not None

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        return any(a < end_ns and b > start_ns for a, b in self.occupied)


def order_events_sorted(events: Iterable[EventLike]) -> list[EventLike]:
    return sorted(events, key=lambda e: (e.ts_ns, _TYPE_RANK.get(e.type, 9), e.event_id))


def replay_order(events: Sequence[EventLike], open_end_ns: int) -> OrderTimeline | None:
    """The order's occupied time; ``open_end_ns`` closes a still-running order (usually now).

    Returns None when there is no start event (the engine rejects stop-without-start before it
    stores anything, so this only happens for orders known from other events alone).
    """
    ordered = [e for e in order_events_sorted(events) if e.type != "lot_complete"]
    starts = [e for e in ordered if e.type == "start"]
    if not starts:
        return None
    start = starts[0]
    anomalies = [f"repeated start at {e.ts_ns}" for e in starts[1:]]
    pieces: list[tuple[int, int]] = []
    running_since: int | None = start.ts_ns
    stop: EventLike | None = None
    for event in ordered:
        if event.ts_ns < start.ts_ns or event is start or event.type == "start":
            if event.ts_ns < start.ts_ns:
                anomalies.append(f"{event.type} before start at {event.ts_ns}")
            continue
        if stop is not None:
            anomalies.append(f"{event.type} after stop at {event.ts_ns}")
            continue
        if event.type == "pause":
            if running_since is None:
                anomalies.append(f"pause while paused at {event.ts_ns}")
                continue
            pieces.append((running_since, event.ts_ns))
            running_since = None
        elif event.type == "resume":
            if running_since is not None:
                anomalies.append(f"resume without pause at {event.ts_ns}")
                continue
            running_since = event.ts_ns
        elif event.type == "stop":
            stop = event
            if running_since is not None:
                pieces.append((running_since, event.ts_ns))
            running_since = None
    if stop is None and running_since is not None:
        pieces.append((running_since, max(open_end_ns, running_since)))
    occupied = tuple((a, b) for a, b in pieces if b > a)
    return OrderTimeline(
        order_id=start.order_id or "",
        lot_id=start.lot_id,
        equipment_id=start.equipment_id or "",
        product_id=start.product_id,
        start_ns=start.ts_ns,
        stop_ns=stop.ts_ns if stop is not None else None,
        occupied=occupied,
        quantity_good=stop.quantity_good if stop is not None else None,
        quantity_scrap=stop.quantity_scrap if stop is not None else None,
        unit=(stop or start).unit,
        anomalies=tuple(anomalies),
    )
