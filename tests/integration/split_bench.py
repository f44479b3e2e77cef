"""A bench for the order engine with energy: one equipment, one synthetic kWh counter, a real
SQLite store and a fake clock (issue 8: split conservation, lot summaries).

The counter's power is constant between two of its readings (every ``READ_S`` seconds), so the
straight line the agent draws between readings is the truth, and every energy the tests compute
here — metered, idle — is exact and independent of the agent's code. Readings are written as the
clock moves (a poll every ``READ_S``), and read-on-event returns the counter at the current
instant, as a meter would.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.clock import FakeClock
from edge_agent.config import AgentConfig, parse_config
from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample, iso_from_ns, ns_from_iso
from edge_agent.engine import OrderEngine, Outcome
from edge_agent.errors import EventRejected
from edge_agent.mes.events import parse_event
from edge_agent.mes.timeline import OrderTimeline, replay_order
from edge_agent.store import Store, open_store

EQUIPMENT = "press"
METER = "m-press"
READ_S = 10
T0_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z: the floor's time 0
HISTORY_S = 2 * 3600  # the counter is read from this long before T0
SITE = "s1"
ENERGY_POINT = {"address": 0, "type": "float64", "unit": "kWh", "role": "energy"}


def agent_config(folder: Path, split: str, **equipment: Any) -> AgentConfig:
    return parse_config(
        {
            "site": {"id": SITE},
            "meters": [
                {
                    "id": METER,
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "interval_s": READ_S,
                    "points": {"energy": ENERGY_POINT},
                }
            ],
            "equipment": [
                {
                    "id": EQUIPMENT,
                    "meters": [METER],
                    "max_power_kw": 100,
                    "overlap_split": split,
                    "final_timeout_s": 60,
                    **equipment,
                }
            ],
            "mqtt": {"host": "127.0.0.1", "port": 1883, "topic_prefix": "p"},
            "emission_factors": {
                "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
            },
            "store": {"path": str(folder / "agent.db")},
        },
        folder,
    )


@dataclass(frozen=True)
class Counter:
    """kWh counter: ``powers_kw[i]`` is the power over [origin + i·READ_S, origin + (i+1)·READ_S);
    the last one holds on."""

    powers_kw: tuple[float, ...]
    origin_ns: int = T0_NS - HISTORY_S * NS_PER_S
    start_kwh: float = 1000.0
    _totals: list[float] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        slot_h = READ_S / 3600
        self._totals.extend(
            itertools.accumulate((p * slot_h for p in self.powers_kw), initial=self.start_kwh)
        )

    def at(self, t_ns: int) -> float:
        slot_ns = READ_S * NS_PER_S
        index = min((t_ns - self.origin_ns) // slot_ns, len(self.powers_kw) - 1)
        if index < 0:
            raise ValueError("before the counter's first reading")
        since = t_ns - (self.origin_ns + index * slot_ns)
        return self._totals[index] + self.powers_kw[index] * since / (3600 * NS_PER_S)

    def energy(self, a_ns: int, b_ns: int) -> float:
        return self.at(b_ns) - self.at(a_ns)

    def sample(self, t_ns: int) -> Sample:
        return Sample(t_ns, METER, "energy", PointRole.ENERGY, "kWh", self.at(t_ns), Quality.GOOD)


def steady(kw: float) -> Counter:
    return Counter((kw,))


def at(minutes: float) -> int:
    """Floor time: minutes after T0."""
    return T0_NS + round(minutes * 60 * NS_PER_S)


def event(
    event_id: str, kind: str, t_ns: int, order_id: str, lot_id: str = "L1", **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id, "type": kind, "ts": iso_from_ns(t_ns), "lot_id": lot_id,
    }  # fmt: skip
    if kind != "lot_complete":
        body.update(order_id=order_id, equipment_id=EQUIPMENT)
    if kind == "start":
        body["product_id"] = "P-1"
    if kind == "stop":
        body.setdefault("quantity_scrap", 0)
    return {**body, **fields}


class Plant:
    """The engine on a store file; the clock only moves through :meth:`advance_to`, which
    writes the counter's polls up to the new instant first."""

    def __init__(self, config: AgentConfig, store: Store, clock: FakeClock, counter: Counter):
        self.config, self.store, self.clock, self.counter = config, store, clock, counter
        self.engine = OrderEngine(config, store, clock, self.read_now, lambda: None)
        self.polled_until_ns = counter.origin_ns - 1
        self.written: set[int] = set()
        self.polling = True  # False: the meter stops answering polls
        self.read_on_event = True  # False: reads on event fail

    @classmethod
    async def open(
        cls, folder: Path, counter: Counter, split: str = "equal", *, clock: FakeClock | None = None,
        **equipment: Any,
    ) -> Plant:  # fmt: skip
        config = agent_config(folder, split, **equipment)
        clock = clock or FakeClock(start_ns=counter.origin_ns)
        store = await open_store(config.store.path, clock=clock)
        plant = cls(config, store, clock, counter)
        await plant.poll()
        return plant

    async def close(self) -> None:
        await self.store.close()

    async def restart(self) -> Plant:
        """The agent stops (its in-memory queues are lost) and a new engine resumes on the same
        file; the meter and the clock go on."""
        await self.store.close()
        store = await open_store(self.config.store.path, clock=self.clock)
        plant = Plant(self.config, store, self.clock, self.counter)
        plant.polled_until_ns, plant.written = self.polled_until_ns, self.written
        plant.polling, plant.read_on_event = self.polling, self.read_on_event
        await plant.engine.resume()
        return plant

    async def _write(self, times: Sequence[int]) -> None:
        fresh = [t for t in times if t not in self.written]
        self.written.update(fresh)
        await self.store.write_samples([self.counter.sample(t) for t in fresh])

    async def poll(self) -> None:
        """The meter's polls up to now."""
        if not self.polling:
            self.polled_until_ns = self.clock.now_ns()
            return
        slot_ns = READ_S * NS_PER_S
        first = (
            self.counter.origin_ns
            + ((self.polled_until_ns - self.counter.origin_ns) // slot_ns + 1) * slot_ns
        )
        now = self.clock.now_ns()
        await self._write(range(first, now + 1, slot_ns))
        self.polled_until_ns = max(self.polled_until_ns, now)

    async def read_now(self, meter_ids: Sequence[str]) -> list[Sample]:
        now = self.clock.now_ns()
        if now in self.written or not self.read_on_event:
            return []
        self.written.add(now)  # the engine stores what it reads
        return [self.counter.sample(now)]

    async def advance_to(self, t_ns: int, *, finalise: bool = True) -> None:
        if t_ns > self.clock.now_ns():
            self.clock.advance((t_ns - self.clock.now_ns()) / NS_PER_S)
        await self.poll()
        if finalise:
            await self.engine.finalise_ready()

    async def send(self, *bodies: dict[str, Any]) -> list[Outcome]:
        events, rejected = [], 0
        for body in bodies:
            try:
                events.append(
                    parse_event(
                        json.dumps(body).encode(), [EQUIPMENT], limits=self.config.mes,
                        now_ns=self.clock.now_ns(),
                    )
                )  # fmt: skip
            except EventRejected:
                rejected += 1
        assert not rejected, bodies
        result = await self.engine.handle_batch(events)
        return result.outcomes

    async def settle(self, rounds: int = 10) -> None:
        """Finalise until nothing is pending (rechecks are taken on the next pass)."""
        for _ in range(rounds):
            await self.engine.finalise_ready()
            if self.engine.pending == (0, 0):
                return
        raise AssertionError(f"still pending after {rounds} passes: {self.engine.pending}")

    # -- what the store says ------------------------------------------------------------------

    async def record(self, order_id: str) -> dict[str, Any]:
        record = await self.store.latest_record(order_id)
        assert record is not None, order_id
        return record

    async def lot(self, lot_id: str = "L1") -> dict[str, Any] | None:
        return await self.store.latest_lot_record(lot_id)

    async def revisions(self, kind: str, key: str) -> list[dict[str, Any]]:
        column = "order_id" if kind == "order" else "lot_id"
        rows = await self.store.recent_records(100_000)
        return sorted(
            (json.loads(r.payload) for r in rows if r.kind == kind and getattr(r, column) == key),
            key=lambda p: int(p["revision"]),
        )

    async def timeline(self, order_id: str) -> OrderTimeline | None:
        stored = await self.store.events_for_order(order_id)
        events = [parse_event(e.payload_json.encode(), [EQUIPMENT]) for e in stored]
        equipment = self.config.equipment[0]
        return replay_order(
            events,
            open_end_ns=self.clock.now_ns(),
            max_duration_ns=int(equipment.max_order_duration_s * NS_PER_S),
        )


@dataclass(frozen=True)
class Balance:
    """Metered energy over a window, and the part no order occupied — from the counter alone."""

    window: tuple[int, int]
    metered: float
    idle: float
    orders: float  # the final revisions' energies, added up

    @property
    def error(self) -> float:
        """(orders + idle − metered) / metered."""
        return (self.orders + self.idle - self.metered) / self.metered


def union(intervals: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


async def balance(plant: Plant, order_ids: Sequence[str]) -> Balance:
    """Σ final revisions + idle vs metered, over the span of every order's record."""
    records: list[dict[str, Any]] = []
    occupied: list[tuple[int, int]] = []
    for order_id in order_ids:
        timeline = await plant.timeline(order_id)
        if timeline is None:
            continue
        record = await plant.record(order_id)
        records.append(record)
        occupied.extend(timeline.occupied)
    assert records, "no records"
    a = min(ns_from_iso(r["start"]) for r in records)
    b = max(ns_from_iso(r["end"]) for r in records)
    a, b = min([a, *(i[0] for i in occupied)]), max([b, *(i[1] for i in occupied)])
    busy = union(occupied)
    gaps, cursor = [], a
    for s, e in busy:
        gaps.append((cursor, s))
        cursor = e
    gaps.append((cursor, b))
    idle = sum(plant.counter.energy(s, e) for s, e in gaps if e > s)
    return Balance((a, b), plant.counter.energy(a, b), idle, sum(r["energy_kwh"] for r in records))
