"""The engine's judgement of MES events over a real SQLite store (no meters: bookkeeping only)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.clock import FakeClock
from edge_agent.config import parse_config
from edge_agent.domain import NS_PER_S, Sample, iso_from_ns
from edge_agent.engine import OrderEngine
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.store import Store, open_store

EQUIPMENT = ("laser", "press")


def agent_config(tmp_path: Path, **mes: Any) -> Any:
    return parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {
                    "id": f"m-{name}",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "points": {
                        "energy": {"address": 0, "type": "uint32", "unit": "Wh", "role": "energy"}
                    },
                }
                for name in EQUIPMENT
            ],
            "equipment": [
                {"id": name, "meters": [f"m-{name}"], "max_power_kw": 10} for name in EQUIPMENT
            ],
            "mes": mes,
            "emission_factors": {
                "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
            },
        },
        tmp_path,
    )


class Bench:
    def __init__(self, engine: OrderEngine, store: Store, clock: FakeClock) -> None:
        self.engine, self.store, self.clock = engine, store, clock

    def event(self, event_id: str, kind: str, t_s: float, **fields: Any) -> OrderEvent:
        body = {
            "event_id": event_id,
            "type": kind,
            "ts": iso_from_ns(self.clock.now_ns() + int(t_s * NS_PER_S)),
            "lot_id": "lot-1",
            "order_id": "o1",
            "equipment_id": "laser",
            **fields,
        }
        if kind == "start":
            body.setdefault("product_id", "P")
        if kind == "stop":
            body.setdefault("quantity_good", 1)
            body.setdefault("quantity_scrap", 0)
        return parse_event(json.dumps(body).encode(), EQUIPMENT)

    async def statuses(self, *events: OrderEvent) -> list[tuple[str, str]]:
        result = await self.engine.handle_batch(list(events))
        return [(o.status, o.code) for o in result.outcomes]


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    config = agent_config(tmp_path, max_events_per_order=10)
    clock = FakeClock(start_ns=1_800_000_000 * NS_PER_S)

    async def no_meters(_: Any) -> list[Sample]:
        return []

    async with await open_store(tmp_path / "e.db", clock=clock) as store:
        yield Bench(OrderEngine(config, store, clock, no_meters, lambda: None), store, clock)


async def test_a_held_event_on_the_wrong_machine_does_not_get_the_real_start_rejected(
    bench: Bench,
) -> None:
    wrong = bench.event("stop-wrong", "stop", 5, equipment_id="press")
    assert await bench.statuses(wrong) == [("held", "")]
    result = await bench.engine.handle_batch([bench.event("start", "start", 0)])
    assert [(o.status, o.code) for o in result.outcomes] == [("accepted", "")]
    assert [(late.event_id, late.code) for late in result.late] == [
        ("stop-wrong", "equipment_mismatch")
    ]
    assert await bench.store.held_count() == 0
    assert (await bench.store.rejected_counts())["equipment_mismatch"] == 1


async def test_held_events_in_the_same_batch_as_their_start_are_released_or_rejected(
    bench: Bench,
) -> None:
    early_stop = bench.event("bad-stop", "stop", -5)  # before the start that follows
    stop = bench.event("stop", "stop", 5)
    start = bench.event("start", "start", 0)
    assert await bench.statuses(early_stop, stop, start) == [
        ("rejected", "stop_before_start"),
        ("accepted", ""),
        ("accepted", ""),
    ]
    assert [e.event_id for e in await bench.store.events_for_order("o1")] == ["stop", "start"]
    assert await bench.store.held_count() == 0


async def test_a_rejected_event_can_be_fixed_under_the_same_id_in_the_same_batch(
    bench: Bench,
) -> None:
    start = bench.event("start", "start", 0)
    broken = bench.event("s1", "stop", -1)  # before the start: rejected
    fixed = bench.event("s1", "stop", 3)
    assert await bench.statuses(start, broken, fixed) == [
        ("accepted", ""),
        ("rejected", "stop_before_start"),
        ("accepted", ""),
    ]
    # and an exact re-delivery later is a duplicate
    assert await bench.statuses(fixed) == [("duplicate", "")]


async def test_a_start_can_only_be_replaced_by_a_start(bench: Bench) -> None:
    assert await bench.statuses(bench.event("start", "start", 0)) == [("accepted", "")]
    withdraw = bench.event("c1", "cancel", 1, supersedes="start")
    moved = bench.event("start-2", "start", 1, supersedes="start")
    other_order = bench.event("x", "stop", 2, order_id="o2", supersedes="start")
    assert await bench.statuses(withdraw, moved, other_order) == [
        ("rejected", "invalid_supersedes"),
        ("accepted", ""),
        ("rejected", "invalid_supersedes"),
    ]


async def test_one_order_cannot_take_unbounded_events(bench: Bench) -> None:
    events = [bench.event("start", "start", 0)]
    events += [bench.event(f"p{i}", "pause" if i % 2 else "resume", i) for i in range(1, 12)]
    outcomes = await bench.statuses(*events)
    assert outcomes[:10] == [("accepted", "")] * 10
    assert outcomes[10:] == [("rejected", "too_many_events")] * 2


async def test_a_withdrawn_stop_reopens_the_order_and_the_next_stop_is_the_next_revision(
    bench: Bench,
) -> None:
    await bench.statuses(bench.event("start", "start", -10), bench.event("stop", "stop", -5))
    bench.clock.advance(60)  # past final_timeout_s: finalised without readings (flagged)
    await bench.engine.finalise_ready()
    status = await bench.store.order_status("o1")
    assert status is not None
    assert (status.status, status.revision) == ("final", 1)
    assert await bench.statuses(bench.event("w", "cancel", -60, supersedes="stop")) == [
        ("accepted", "")
    ]
    await bench.engine.finalise_ready()
    status = await bench.store.order_status("o1")
    assert status is not None
    assert (status.status, status.revision) == ("open", 1)
    assert await bench.store.open_order_ids() == ["o1"]
    await bench.statuses(bench.event("stop-2", "stop", -30))
    bench.clock.advance(60)
    await bench.engine.finalise_ready()
    record = await bench.store.latest_record("o1")
    assert record is not None
    assert record["revision"] == 2
    assert record["end"] == iso_from_ns(bench.clock.now_ns() - 90 * NS_PER_S)
