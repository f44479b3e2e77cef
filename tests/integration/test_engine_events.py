"""The engine's judgement of MES events over a real SQLite store (no meters: bookkeeping only)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.clock import FakeClock
from edge_agent.config import parse_config
from edge_agent.domain import NS_PER_S, Sample, iso_from_ns
from edge_agent.engine import OrderEngine
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.mes.timeline import replay_order
from edge_agent.store import IntakeCommit, Store, StoredEvent, open_store

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


@st.composite
def order_histories(draw: st.DrawFn) -> list[StoredEvent]:
    """Orders on one equipment: a start, stops (some re-sent, some superseded or withdrawn),
    pauses, cancels — stored in a random arrival order."""
    events: list[StoredEvent] = []
    for number in range(draw(st.integers(1, 6))):
        order = f"o{number}"
        start = draw(st.integers(0, 100))
        rows = [(f"{order}-start", "start", start, None)]
        for index in range(draw(st.integers(0, 3))):
            ts = draw(st.integers(0, 120))
            supersedes = draw(st.sampled_from([None, *[r[0] for r in rows]]))
            kind = draw(st.sampled_from(["stop", "stop", "pause", "resume", "cancel"]))
            if supersedes is not None and supersedes.endswith("start"):
                kind = "start"  # the engine lets only a start replace a start
            rows.append((f"{order}-{index}", kind, ts, supersedes))
        for event_id, kind, ts, supersedes in draw(st.permutations(rows)):
            body = {"quantity_good": 1, "quantity_scrap": 0} if kind == "stop" else {}
            events.append(
                StoredEvent(
                    event_id, kind, ts * NS_PER_S, order, "lot-1", "laser",
                    json.dumps({
                        "event_id": event_id, "type": kind, "ts": iso_from_ns(ts * NS_PER_S),
                        "order_id": order, "lot_id": "lot-1", "equipment_id": "laser",
                        "product_id": "P", "supersedes": supersedes, **body,
                    }),
                    0, supersedes,
                )
            )  # fmt: skip
    return events


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=order_histories(), window=st.tuples(st.integers(0, 130), st.integers(1, 60)))
async def test_the_overlap_prefilter_never_misses_an_overlapping_order(
    tmp_path: Path, history: list[StoredEvent], window: tuple[int, int]
) -> None:
    """Finalising an order replays only the candidates the SQL pre-filter returns: it may return
    too many, never too few, whatever corrections and withdrawals the orders went through."""
    path = tmp_path / f"o-{uuid.uuid4().hex}.db"
    async with await open_store(path) as store:
        await store.commit_intake(IntakeCommit(events=history, rejected={}))
        start_s, length_s = window
        a, b = start_s * NS_PER_S, (start_s + length_s) * NS_PER_S
        candidates = set(await store.order_ids_possibly_overlapping("laser", -(10**12), a, b))
        for order in {e.order_id for e in history}:
            assert order is not None
            stored = await store.events_for_order(order)
            parsed = [parse_event(e.payload_json.encode(), EQUIPMENT) for e in stored]
            timeline = replay_order(parsed, open_end_ns=200 * NS_PER_S)
            if timeline is not None and timeline.overlaps(a, b):
                assert order in candidates, (order, [(e.event_id, e.type, e.ts_ns) for e in stored])


async def test_copies_of_a_held_event_rejected_at_its_start_are_rejected_too(bench: Bench) -> None:
    """Found by the engine fuzz: a held pause, its copy (a duplicate while the pause was held),
    then a start of another lot: the pause is rejected, and so is its copy — both counted."""
    pause = bench.event("e0", "pause", 0, lot_id="L2")
    start = bench.event("e1", "start", 0, lot_id="L1")
    assert await bench.statuses(pause, pause, start) == [
        ("rejected", "lot_mismatch"),
        ("rejected", "lot_mismatch"),
        ("accepted", ""),
    ]
    assert (await bench.store.rejected_counts())["lot_mismatch"] == 2
