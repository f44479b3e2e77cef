"""Fuzz of the order engine's MES bookkeeping (issue 7) over a real SQLite store.

Hypothesis writes scripts of MES messages for a few orders on two equipment — starts, stops,
pauses, resumes, cancels and lot completions in random ts order, duplicates re-sent with the
same event_id, corrections re-sent with new ids and ``supersedes``, stops before starts, events
for orders that never start, for the wrong or an unknown equipment, junk — and feeds them,
split into random batches, through the real :class:`~edge_agent.engine.OrderEngine` on a SQLite
file, parsing each batch as the intake does. Between batches the fake clock moves (sometimes
past ``mes.hold_without_start_s``), held events expire and orders are finalised. No meter is
ever read (``read_now`` returns nothing): this is about event bookkeeping, not energy.

After every step: no exception escapes; each outcome is accepted, duplicate, held or rejected
(with a code and a reason); the events table holds exactly what the outcomes say; rejection
counts grow by exactly the batch's rejections; every held event waits for a start that is not
in force, with its deadline, and none outlives it once expired; every order is open or final,
a final one with its record. At the end every message is accounted for exactly once (stored,
counted as rejected, or a duplicate of a stored event); every stopped order has its record
(``final_by_timeout``, last received stop in force), every cancelled one a zero-energy record;
a second engine opened on the same file after a restart sees the same state and takes every
stored event again as a duplicate.

Bugs the fuzz found are pinned by the regression tests at the end (each failed before its fix).

The default run tries ``EDGE_AGENT_FUZZ_EXAMPLES`` scripts (default 100, ~10 s: each one
commits durably to SQLite files). The test marked ``long`` (excluded by default) tries
``EDGE_AGENT_FUZZ_LONG_EXAMPLES`` scripts (default 100,000 event sequences, some hours on two
cores):

    .venv/bin/pytest -m long tests/integration/test_engine_fuzz.py
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge_agent.clock import FakeClock
from edge_agent.config import AgentConfig, parse_config
from edge_agent.domain import NS_PER_S, Sample, iso_from_ns
from edge_agent.engine import BatchResult, OrderEngine, Outcome
from edge_agent.errors import EventRejected
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.store import Store, open_store

EXAMPLES = int(os.environ.get("EDGE_AGENT_FUZZ_EXAMPLES", "100"))
LONG_EXAMPLES = int(os.environ.get("EDGE_AGENT_FUZZ_LONG_EXAMPLES", "100000"))

EQUIPMENT = ("eq-a", "eq-b")
# order -> (lot, equipment). Every order gets events at random, so each may well never start
# (its events are held, then expire); o3 and o-ghost share a lot and an equipment.
ORDERS = {
    "o1": ("L1", "eq-a"),
    "o2": ("L1", "eq-b"),
    "o3": ("L2", "eq-a"),
    "o4": ("L2", "eq-b"),
    "o-ghost": ("L2", "eq-a"),
}
LOTS = ("L1", "L2")
HOLD_S = 600
FINAL_TIMEOUT_S = 1
CLOCK_START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
STATUSES = ("accepted", "duplicate", "held", "rejected")
# Codes of a held event rejected when its start arrives (it was stored until then).


def agent_config(folder: Path) -> AgentConfig:
    """Two equipment with one Modbus meter each on 127.0.0.1 (never polled)."""
    energy = {"address": 0, "type": "uint32", "unit": "Wh", "role": "energy"}
    return parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {
                    "id": f"m-{eq}",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "points": {"energy": energy},
                }
                for eq in EQUIPMENT
            ],
            "equipment": [
                {
                    "id": eq,
                    "meters": [f"m-{eq}"],
                    "max_power_kw": 10,
                    "final_timeout_s": FINAL_TIMEOUT_S,
                }
                for eq in EQUIPMENT
            ],
            "mqtt": {"host": "127.0.0.1", "port": 1883, "topic_prefix": "p"},
            "mes": {"hold_without_start_s": HOLD_S},
            "emission_factors": {
                "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
            },
            "store": {"path": str(folder / "agent.db")},
        },
        folder,
    )


# -- scripts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    payloads: tuple[bytes, ...]


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Expire:
    pass


@dataclass(frozen=True)
class Finalise:
    pass


Step = Batch | Advance | Expire | Finalise


def _ts(minute: int, second: int = 0) -> str:
    return iso_from_ns(CLOCK_START_NS + (minute * 60 + second) * NS_PER_S)


@dataclass
class _Writer:
    """Draws messages that refer to what was sent before (re-sends, corrections)."""

    draw: st.DrawFn
    sent: list[dict[str, Any]] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def new_id(self) -> str:
        return f"e{next(self.ids)}"

    def message(self) -> bytes:
        draw = self.draw
        kind = draw(st.sampled_from(["new"] * 8 + ["resend", "correction", "reuse_id", "junk"]))
        if kind == "junk":
            return draw(st.sampled_from(JUNK))
        if kind == "resend" and self.sent:
            return json.dumps(draw(st.sampled_from(self.sent))).encode()
        if kind == "correction" and self.sent:
            target = draw(st.sampled_from(self.sent))
            corrected = {**target, "event_id": self.new_id(), "supersedes": target["event_id"]}
            if draw(st.booleans()):
                corrected["ts"] = _ts(draw(st.integers(-150, 30)), draw(st.integers(0, 59)))
            if "quantity_good" in corrected:
                corrected["quantity_good"] = draw(st.integers(0, 100))
            self.sent.append(corrected)
            return json.dumps(corrected).encode()
        event = self.new_event()
        if kind == "reuse_id" and self.sent:  # another event under an id already used
            event["event_id"] = draw(st.sampled_from(self.sent))["event_id"]
        self.sent.append(event)
        return json.dumps(event).encode()

    def new_event(self) -> dict[str, Any]:
        draw = self.draw
        kind = draw(
            st.sampled_from(
                ["start"] * 3 + ["stop"] * 3 + ["pause", "resume", "cancel", "lot_complete"]
            )
        )
        order_id = draw(st.sampled_from(sorted(ORDERS)))
        lot_id, equipment_id = ORDERS[order_id]
        if draw(st.integers(0, 9)) == 0:
            equipment_id = draw(st.sampled_from(EQUIPMENT))  # maybe the wrong one
        if draw(st.integers(0, 19)) == 0:
            lot_id = draw(st.sampled_from(LOTS))  # maybe the wrong one
        # Starts tend to come earlier on the floor than the rest; minutes make ties likely.
        minute = draw(st.integers(-180, 0) if kind == "start" else st.integers(-150, 30))
        event: dict[str, Any] = {
            "event_id": self.new_id(),
            "type": kind,
            "ts": _ts(minute, draw(st.sampled_from([0, 0, 0, 30]))),
            "lot_id": lot_id,
        }
        if kind != "lot_complete" or draw(st.integers(0, 3)) == 0:
            event["order_id"] = order_id
            event["equipment_id"] = equipment_id
        if kind == "start":
            event["product_id"] = "P-1"
        if kind == "stop" or (kind == "lot_complete" and draw(st.booleans())):
            event["quantity_good"] = draw(st.integers(0, 100))
        if kind == "stop":
            event["quantity_scrap"] = draw(st.integers(0, 5))
        if self.sent and draw(st.integers(0, 9)) == 0:  # names any earlier event
            target = draw(st.sampled_from(self.sent))["event_id"]
            if target != event["event_id"]:
                event["supersedes"] = target
        return event


JUNK = [
    b"{not json",
    b"[]",
    json.dumps(
        {
            "event_id": "j1",
            "type": "start",
            "ts": "9999-12-31T23:59:59Z",
            "order_id": "o1",
            "lot_id": "L1",
            "equipment_id": "eq-a",
            "product_id": "P",
        }
    ).encode(),
    json.dumps(
        {
            "event_id": "j2",
            "type": "stop",
            "ts": _ts(-10),
            "order_id": "o1",
            "lot_id": "L1",
            "equipment_id": "eq-a ",
            "quantity_good": 1,
            "quantity_scrap": 0,
        }
    ).encode(),
    json.dumps(
        {
            "event_id": "j3",
            "type": "start",
            "ts": _ts(-10),
            "order_id": "o1",
            "lot_id": "L1",
            "equipment_id": "oven",
            "product_id": "P",
        }
    ).encode(),
]


@st.composite
def scripts(draw: st.DrawFn) -> list[Step]:
    writer = _Writer(draw)
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 10))):
        what = draw(st.sampled_from(["batch"] * 5 + ["advance", "expire", "finalise"]))
        if what == "batch":
            size = draw(st.integers(1, 6))
            steps.append(Batch(tuple(writer.message() for _ in range(size))))
        elif what == "advance":
            steps.append(Advance(draw(st.sampled_from([0.5, 30, 300, HOLD_S + 1, 3600]))))
        elif what == "expire":
            steps.append(Expire())
        else:
            steps.append(Finalise())
    return steps


# -- the database as it is --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    rowid: int
    event_id: str
    type: str
    ts_ns: int
    order_id: str | None
    lot_id: str
    equipment_id: str | None
    payload: str
    received_ns: int
    supersedes: str | None
    held_until_ns: int | None


@dataclass(frozen=True)
class Snapshot:
    events: dict[str, Row]
    orders: dict[str, tuple[Any, ...]]  # order_id -> (lot, equipment, status, revision, record)
    lots: dict[str, tuple[Any, ...]]  # lot_id -> (status, revision, record)
    outbox: list[tuple[Any, ...]]  # (record_id, revision, kind, lot_id, order_id, payload)
    rejected: dict[str, int]

    def held(self) -> list[Row]:
        return [row for row in self.events.values() if row.held_until_ns is not None]

    def order_rows(self, order_id: str) -> list[Row]:
        """The order's events in force or corrected (not held), as received."""
        rows = [r for r in self.events.values() if r.order_id == order_id]
        return sorted(
            (r for r in rows if r.held_until_ns is None and r.type != "lot_complete"),
            key=lambda r: r.rowid,
        )

    def records(self, order_id: str) -> list[dict[str, Any]]:
        rows = sorted(
            (r for r in self.outbox if r[4] == order_id and r[2] == "order"), key=lambda r: r[1]
        )
        return [json.loads(r[5]) for r in rows]


def snapshot(db: sqlite3.Connection) -> Snapshot:
    events = {
        row[1]: Row(*row)
        for row in db.execute(
            "SELECT rowid, event_id, type, ts_ns, order_id, lot_id, equipment_id, payload, "
            "received_ns, supersedes, held_until_ns FROM events"
        )
    }
    orders = {
        row[0]: tuple(row[1:])
        for row in db.execute(
            "SELECT order_id, lot_id, equipment_id, status, revision, record_id FROM orders"
        )
    }
    lots = {
        row[0]: tuple(row[1:])
        for row in db.execute("SELECT lot_id, status, revision, record_id FROM lots")
    }
    outbox = list(
        db.execute(
            "SELECT record_id, revision, kind, lot_id, order_id, payload FROM outbox ORDER BY seq"
        )
    )
    rejected = dict(db.execute("SELECT reason, count FROM rejected_events"))
    return Snapshot(events, orders, lots, outbox, rejected)


@dataclass(frozen=True)
class Timeline:
    """What the correction contract says of an order's stored events (an independent model)."""

    start: Row | None
    stop: Row | None
    cancelled: bool


def model(rows: Sequence[Row]) -> Timeline:
    named = {r.supersedes for r in rows if r.supersedes is not None}
    in_force = [r for r in rows if r.event_id not in named]
    starts = [r for r in in_force if r.type == "start"]
    stops = [r for r in in_force if r.type == "stop"]
    start = starts[-1] if starts else None  # the last received counts
    stop = stops[-1] if stops else None
    if start is None or (stop is not None and stop.ts_ns < start.ts_ns):
        stop = None
    # A cancel naming an event only withdraws it; one naming none voids the order.
    cancelled = any(r.type == "cancel" and r.supersedes is None for r in in_force)
    return Timeline(start, stop, cancelled)


def check_state(snap: Snapshot) -> None:
    """Invariants that hold after every step."""
    hold_ns = HOLD_S * NS_PER_S
    for row in snap.events.values():
        if row.held_until_ns is not None:
            assert row.type in ("stop", "pause", "resume", "cancel"), row
            assert row.order_id is not None
            assert row.held_until_ns == row.received_ns + hold_ns, row
            assert model(snap.order_rows(row.order_id)).start is None, (
                f"{row.event_id} still held while its order {row.order_id} has a start in force"
            )
        elif row.order_id is not None and row.equipment_id is not None:
            assert row.order_id in snap.orders, f"{row.event_id} stored, its order never opened"
    keys = {(r[0], r[1]) for r in snap.outbox}
    for order_id, (lot_id, _, status, revision, record_id) in snap.orders.items():
        assert status in ("open", "final")
        assert snap.order_rows(order_id), f"order {order_id} open without an order event"
        records = snap.records(order_id)
        # Revisions count up from 1; an order reopened (its stop withdrawn) keeps its count.
        assert [r["revision"] for r in records] == list(range(1, revision + 1)), order_id
        if status == "open":
            continue
        assert (record_id, revision) in keys, order_id
        assert records[-1]["order_id"] == order_id
        assert records[-1]["lot_id"] == lot_id, (
            f"order {order_id} is in lot {lot_id} for the store, in {records[-1]['lot_id']} "
            "for its record"
        )
    for lot_id, (status, revision, record_id) in snap.lots.items():
        assert status in ("open", "final")
        if status == "final":
            assert (record_id, revision) in keys, lot_id


# -- running a script -------------------------------------------------------------------------


async def read_nothing(meter_ids: Sequence[str]) -> list[Sample]:
    return []


class Announcements:
    """The engine's on_record callback: counts the records it says it enqueued."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@dataclass
class Agent:
    """An engine on a store file, with a read connection to check the file."""

    config: AgentConfig
    clock: FakeClock
    store: Store
    engine: OrderEngine
    db: sqlite3.Connection
    announced: Announcements
    outcomes: list[str] = field(default_factory=list)  # status of every message, in order

    @classmethod
    async def open(cls, folder: Path, clock: FakeClock) -> Agent:
        config = agent_config(folder)
        store = await open_store(config.store.path, clock=clock)
        announced = Announcements()
        engine = OrderEngine(config, store, clock, read_nothing, announced)
        await engine.resume()
        db = sqlite3.connect(config.store.path)
        return cls(config, clock, store, engine, db, announced)

    async def close(self) -> None:
        self.db.close()
        await self.store.close()

    def parse(self, payloads: Sequence[bytes]) -> tuple[list[OrderEvent], Counter[str]]:
        """As the intake does: parse every message, count the rejected ones by code."""
        events, rejected = [], Counter[str]()
        for payload in payloads:
            try:
                events.append(
                    parse_event(
                        payload, EQUIPMENT, limits=self.config.mes, now_ns=self.clock.now_ns()
                    )
                )
            except EventRejected as exc:
                rejected[exc.code] += 1
        return events, rejected

    async def batch(self, payloads: Sequence[bytes]) -> BatchResult:
        before = snapshot(self.db)
        now_ns = self.clock.now_ns()
        events, parse_rejected = self.parse(payloads)
        self.outcomes.extend(["rejected"] * sum(parse_rejected.values()))
        result = await self.engine.handle_batch(events, parse_rejected)
        after = snapshot(self.db)
        check_batch(before, after, events, parse_rejected, result, now_ns)
        self.outcomes.extend(o.status for o in result.outcomes)
        check_state(after)
        return result

    async def expire(self) -> None:
        before = snapshot(self.db)
        now_ns = self.clock.now_ns()
        late = await self.engine.expire_held()
        after = snapshot(self.db)
        due = {
            r.event_id
            for r in before.held()
            if r.held_until_ns is not None and r.held_until_ns <= now_ns
        }
        assert {item.event_id for item in late} == due
        assert all(item.code == "without_start" and item.reason for item in late)
        assert set(before.events) - set(after.events) == due
        assert not [
            r for r in after.held() if r.held_until_ns is not None and r.held_until_ns <= now_ns
        ]
        assert counts_added(before, after) == Counter({"without_start": len(due)})
        check_state(after)

    async def finalise(self) -> None:
        before = snapshot(self.db)
        announced = self.announced.count
        await self.engine.finalise_ready()
        after = snapshot(self.db)
        assert after.outbox[: len(before.outbox)] == before.outbox  # append-only
        assert len(after.outbox) - len(before.outbox) == self.announced.count - announced
        assert after.events == before.events
        for order_id, (_, _, status, revision, _) in before.orders.items():
            new_status, new_revision = after.orders[order_id][2:4]
            if (status, new_status) == ("final", "open"):  # only when its stop is withdrawn
                timeline = model(after.order_rows(order_id))
                assert timeline.stop is None, order_id
                assert not timeline.cancelled, order_id
            assert new_revision >= revision
        check_state(after)

    async def run(self, step: Step) -> None:
        if isinstance(step, Batch):
            await self.batch(step.payloads)
        elif isinstance(step, Advance):
            self.clock.advance(step.seconds)
        elif isinstance(step, Expire):
            await self.expire()
        else:
            await self.finalise()


def counts_added(before: Snapshot, after: Snapshot) -> Counter[str]:
    added = Counter(after.rejected)
    added.subtract(before.rejected)
    return +added


def check_batch(
    before: Snapshot,
    after: Snapshot,
    events: Sequence[OrderEvent],
    parse_rejected: Counter[str],
    result: BatchResult,
    now_ns: int,
) -> None:
    """The events table and the rejection counts say exactly what the outcomes say."""
    assert all(parse_rejected), parse_rejected  # every parse rejection has a code
    assert len(result.outcomes) == len(events)
    stored_here: set[str] = set()  # ids this batch stored
    rejected_ids: set[str] = set()
    earlier: dict[str, list[Outcome]] = {}  # outcomes of the batch's messages so far, by id
    accepted_starts = set()
    late_ids = {item.event_id for item in result.late}
    for event, outcome in zip(events, result.outcomes, strict=True):
        assert outcome.status in STATUSES
        if outcome.status == "rejected":
            assert outcome.code, outcome
            assert outcome.reason, outcome
            rejected_ids.add(event.event_id)
        else:
            assert not outcome.code, outcome
        # A duplicate is one of a stored event; a rejected event's id is not used up, so a copy
        # sent again (even in the same batch) is judged anew (docs/contracts.md). A held event
        # rejected when its start comes later in the batch was stored when a copy came before
        # that start; a copy after it is judged anew.
        copies = earlier.get(event.event_id, [])
        if outcome.status == "duplicate":
            assert event.event_id in before.events or any(
                o.status in ("accepted", "held") for o in copies
            ), (event, outcome)
            assert event.event_id in after.events or event.event_id in late_ids, (event, outcome)
        else:
            assert event.event_id not in before.events, (event, outcome)
            assert not any(o.status in ("accepted", "held") for o in copies), (event, outcome)
        earlier.setdefault(event.event_id, []).append(outcome)
        if outcome.status in ("accepted", "held"):
            row = after.events[event.event_id]
            assert row.payload == event.raw_json
            assert row.received_ns == now_ns
            expected = None if outcome.status == "accepted" else now_ns + HOLD_S * NS_PER_S
            assert row.held_until_ns == expected, (outcome, row)
            stored_here.add(event.event_id)
            if event.type == "start" and outcome.status == "accepted":
                accepted_starts.add(event.order_id)
    for event_id in rejected_ids:  # not stored, unless a later copy in the batch was
        assert event_id not in after.events or event_id in stored_here, event_id
    for item in result.late:
        assert item.code, item
        assert item.reason, item
        assert before.events[item.event_id].held_until_ns is not None
        assert item.event_id not in after.events
    statuses = Counter(o.status for o in result.outcomes)
    expected_counts = parse_rejected + Counter(
        o.code for o in result.outcomes if o.status == "rejected"
    )
    expected_counts.update(item.code for item in result.late)
    assert counts_added(before, after) == expected_counts
    assert len(after.events) - len(before.events) == (
        statuses["accepted"] + statuses["held"] - len(result.late)
    )
    for event_id, old in before.events.items():
        if event_id in {item.event_id for item in result.late}:
            continue
        new = after.events[event_id]
        if new != old:  # only a release: a held event whose start was accepted now
            assert old.held_until_ns is not None, (old, new)
            assert new == Row(**{**old.__dict__, "held_until_ns": None})
            assert old.order_id in accepted_starts, old


async def play(agent: Agent, steps: Sequence[Step]) -> None:
    for step in steps:
        await agent.run(step)
    # The end: every hold runs out, every stop (dated up to 30 min ahead) times out, and
    # everything is finalised.
    await agent.run(Advance(HOLD_S + 3600))
    await agent.expire()
    for _ in range(3):
        await agent.finalise()


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def check_end(agent: Agent, steps: Sequence[Step]) -> Snapshot:
    snap = snapshot(agent.db)
    assert not snap.held(), "held events outlived their deadline"
    # Every message accounted for once: stored, counted as rejected, or a duplicate.
    sent = sum(len(step.payloads) for step in steps if isinstance(step, Batch))
    assert len(agent.outcomes) == sent
    duplicates = agent.outcomes.count("duplicate")
    assert len(snap.events) + sum(snap.rejected.values()) + duplicates == sent, (
        len(snap.events),
        snap.rejected,
        duplicates,
        sent,
    )
    for order_id in ORDERS:
        timeline = model(snap.order_rows(order_id))
        records = snap.records(order_id)
        status = snap.orders.get(order_id, (None, None, None))[2]
        if timeline.start is None:
            continue  # no start in force: nothing to account (yet)
        if timeline.cancelled:
            assert status == "final", (order_id, "cancelled")
            flags = {flag["code"] for flag in records[-1]["flags"]}
            assert "order_cancelled" in flags
            assert records[-1]["energy_kwh"] == 0
        elif timeline.stop is not None:
            assert status == "final", (order_id, "stopped")
            record = records[-1]
            flags = {flag["code"] for flag in record["flags"]}
            assert "final_by_timeout" in flags  # no reading at or after the stop, ever
            assert record["start"] == iso_from_ns(timeline.start.ts_ns)
            assert record["end"] == iso_from_ns(timeline.stop.ts_ns)
            stop = json.loads(timeline.stop.payload)
            assert record["quantity_good"] == stop["quantity_good"]  # the last received stop
            assert record["quantity_scrap"] == stop["quantity_scrap"]
        else:  # running; reopened if its stop was withdrawn (docs/contracts.md)
            assert status == "open", (order_id, "running")
    for lot_id in sorted(LOTS):
        rows = sorted(
            (r for r in snap.events.values() if r.lot_id == lot_id), key=lambda r: r.rowid
        )
        named = {r.supersedes for r in rows}
        completions = [r for r in rows if r.type == "lot_complete" and r.event_id not in named]
        lot_orders = [oid for oid, o in snap.orders.items() if o[0] == lot_id]
        status = snap.lots.get(lot_id, (None,))[0]
        if status == "final":
            assert any(r.type == "lot_complete" for r in rows), lot_id
        if not completions or any(snap.orders[oid][2] != "final" for oid in lot_orders):
            continue  # the summary (if any) waits for its orders
        # Complete and every order final: the latest summary has every step's latest record.
        assert status == "final", (lot_id, "complete, its orders final, no summary")
        summary = [json.loads(r[5]) for r in snap.outbox if r[2] == "lot" and r[3] == lot_id][-1]
        listed = sorted((o["order_id"], o["revision"]) for o in summary["orders"])
        latest = {oid: snap.records(oid)[-1] for oid in lot_orders}
        expected = sorted(
            (oid, record["revision"])
            for oid, record in latest.items()
            if "order_cancelled" not in {flag["code"] for flag in record["flags"]}
        )
        assert listed == expected, (lot_id, listed, expected)
        quantity = json.loads(completions[-1].payload).get("quantity_good")
        if quantity is not None:
            assert summary["quantity_good"] == quantity, (lot_id, summary["quantity_good"])
    return snap


async def restart_and_replay(
    folder: Path, clock: FakeClock, steps: Sequence[Step], before: Snapshot
) -> None:
    """A second engine on the same file: same state after resume(); every stored event it is
    sent again is a duplicate."""
    agent = await Agent.open(folder, clock)
    try:
        after_resume = snapshot(agent.db)
        assert after_resume == before
        for step in steps:
            if not isinstance(step, Batch):
                continue
            stored = set(snapshot(agent.db).events)
            events, _ = agent.parse(step.payloads)
            result = await agent.batch(step.payloads)
            for event, outcome in zip(events, result.outcomes, strict=True):
                if event.event_id in stored:
                    assert outcome.status == "duplicate", (event.event_id, outcome)
        replayed = snapshot(agent.db)
        for event_id, row in before.events.items():
            assert replayed.events[event_id] == row
        assert replayed.outbox[: len(before.outbox)] == before.outbox
    finally:
        await agent.close()


async def scenario(folder: Path, steps: Sequence[Step]) -> None:
    clock = FakeClock(start_ns=CLOCK_START_NS)
    agent = await Agent.open(folder, clock)
    try:
        await play(agent, steps)
        end = check_end(agent, steps)
    finally:
        await agent.close()
    await restart_and_replay(folder, clock, steps, end)


@pytest.mark.parametrize(
    "examples",
    [
        # A failure is shrunk for up to 5 minutes: let it report rather than time out.
        pytest.param(EXAMPLES, id="short", marks=pytest.mark.timeout(900)),
        pytest.param(
            LONG_EXAMPLES, id="long", marks=[pytest.mark.long, pytest.mark.timeout(7 * 86400)]
        ),
    ],
)
def test_engine_bookkeeping_survives_any_event_sequence(tmp_path: Path, examples: int) -> None:
    calls = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # No explain phase: re-running scripts under a line tracer adds minutes to a failure.
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scripts())
    def run(steps: list[Step]) -> None:
        nonlocal calls
        calls += 1
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            asyncio.run(scenario(Path(folder), steps))

    run()
    assert calls >= examples, f"{calls} scripts run, {examples} asked"


# -- what the fuzz found (minimal cases) ------------------------------------------------------


def message(
    event_id: str,
    kind: str,
    minute: int,
    order_id: str | None = "o1",
    *,
    lot_id: str = "L1",
    equipment_id: str | None = "eq-a",
    **fields: Any,
) -> bytes:
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": kind,
        "ts": _ts(minute),
        "lot_id": lot_id,
    }
    if order_id is not None:
        event["order_id"] = order_id
    if equipment_id is not None:
        event["equipment_id"] = equipment_id
    return json.dumps({**event, **fields}).encode()


START = message("s1", "start", -60, product_id="P-1")
STOP = message("p1", "stop", -30, quantity_good=5, quantity_scrap=0)


async def test_a_lot_complete_naming_an_order_does_not_open_it(tmp_path: Path) -> None:
    """order_id is optional on a lot_complete; naming an order that never runs (a typo, an
    order of another lot) must not keep the lot's summary waiting for it."""
    clock = FakeClock(start_ns=CLOCK_START_NS)
    agent = await Agent.open(tmp_path, clock)
    try:
        done = message("c1", "lot_complete", -20, order_id="o-typo", quantity_good=5)
        await agent.batch([START, STOP, done])
        clock.advance(FINAL_TIMEOUT_S + 1)
        await agent.finalise()
        assert await agent.store.order_status("o-typo") is None
        status = await agent.store.lot_status("L1")
        assert status is not None
        assert status.status == "final"
    finally:
        await agent.close()


@pytest.mark.parametrize(
    "batches",
    [
        pytest.param(
            # the pause is held, then stored before the start in the same transaction
            [[message("u1", "pause", -50, lot_id="L2"), START], [STOP]],
            id="held-pause-of-another-lot",
        ),
        pytest.param(
            [
                [START],
                [message("s2", "start", -60, lot_id="L2", product_id="P-1", supersedes="s1"), STOP],
            ],
            id="start-corrected-to-another-lot",
        ),
    ],
)
async def test_an_order_is_in_the_lot_its_record_names(
    tmp_path: Path, batches: list[list[bytes]]
) -> None:
    clock = FakeClock(start_ns=CLOCK_START_NS)
    agent = await Agent.open(tmp_path, clock)
    try:
        for payloads in batches:
            await agent.batch(payloads)
        completions = [
            message(f"c-{lot}", "lot_complete", -10, None, lot_id=lot, equipment_id=None)
            for lot in LOTS
        ]
        await agent.batch(completions)
        clock.advance(FINAL_TIMEOUT_S + 1)
        await agent.finalise()
        record = await agent.store.latest_record("o1")
        assert record is not None
        assert "o1" in await agent.store.order_ids_in_lot(record["lot_id"])
        summary = await agent.store.latest_lot_record(record["lot_id"])
        assert summary is not None
        assert [o["order_id"] for o in summary["orders"]] == ["o1"]
    finally:
        await agent.close()


PAUSE_TOO_EARLY = message("u1", "pause", -70)  # before the start: rejected before_start
PAUSE_FIXED = message("u1", "pause", -50)  # the same event_id, fixed and sent again


async def test_a_message_sent_again_after_its_rejection_is_judged_again(tmp_path: Path) -> None:
    """docs/contracts.md: a rejected event is not stored, so its event_id is not used up."""
    agent = await Agent.open(tmp_path, FakeClock(start_ns=CLOCK_START_NS))
    try:
        first = await agent.batch([START, PAUSE_TOO_EARLY])
        assert [o.status for o in first.outcomes] == ["accepted", "rejected"]
        assert first.outcomes[1].code == "before_start"
        again = await agent.batch([PAUSE_FIXED])
        assert [o.status for o in again.outcomes] == ["accepted"]
    finally:
        await agent.close()


async def test_a_message_sent_again_in_the_batch_of_its_rejection_is_judged_again(
    tmp_path: Path,
) -> None:
    """The same messages as above, taken in one batch (a burst): the outcome must not depend
    on how the intake happened to batch them."""
    agent = await Agent.open(tmp_path, FakeClock(start_ns=CLOCK_START_NS))
    try:
        result = await agent.batch([START, PAUSE_TOO_EARLY, PAUSE_FIXED])
        assert [o.status for o in result.outcomes] == ["accepted", "rejected", "accepted"]
    finally:
        await agent.close()


async def test_an_order_event_cannot_withdraw_a_lot_complete_of_its_batch(tmp_path: Path) -> None:
    """In a later batch the pause is rejected invalid_supersedes; in the same batch it is
    stored, and the lot's summary never comes (not even after a restart)."""
    clock = FakeClock(start_ns=CLOCK_START_NS)
    agent = await Agent.open(tmp_path, clock)
    try:
        done = message("c1", "lot_complete", -20, None, equipment_id=None, quantity_good=5)
        wrong = message("x1", "pause", -40, supersedes="c1")
        result = await agent.batch([START, STOP, done, wrong])
        assert (result.outcomes[-1].status, result.outcomes[-1].code) == (
            "rejected",
            "invalid_supersedes",
        )
        clock.advance(FINAL_TIMEOUT_S + 1)
        await agent.finalise()
        status = await agent.store.lot_status("L1")
        assert status is not None
        assert status.status == "final"
    finally:
        await agent.close()


async def test_a_held_event_rejected_at_its_start_can_be_sent_again_in_that_batch(
    tmp_path: Path,
) -> None:
    """The stop comes before its start, names the wrong equipment, is held, and is rejected
    equipment_mismatch when the start arrives; the MES sends it again, fixed. In a later batch
    the fixed stop is accepted; in the same batch it must be too, or the order never stops."""
    wrong = message("p1", "stop", -30, equipment_id="eq-b", quantity_good=5, quantity_scrap=0)
    agent = await Agent.open(tmp_path, FakeClock(start_ns=CLOCK_START_NS))
    try:
        result = await agent.batch([wrong, START, STOP])  # STOP: event_id p1 as well
        assert [(o.status, o.code) for o in result.outcomes] == [
            ("rejected", "equipment_mismatch"),
            ("accepted", ""),
            ("accepted", ""),
        ]
    finally:
        await agent.close()


async def test_a_held_event_rejected_at_its_start_can_be_sent_again_later(
    tmp_path: Path,
) -> None:
    """The same messages, the fixed stop in the next batch: accepted."""
    wrong = message("p1", "stop", -30, equipment_id="eq-b", quantity_good=5, quantity_scrap=0)
    agent = await Agent.open(tmp_path, FakeClock(start_ns=CLOCK_START_NS))
    try:
        first = await agent.batch([wrong, START])
        assert [(o.status, o.code) for o in first.outcomes] == [
            ("rejected", "equipment_mismatch"),
            ("accepted", ""),
        ]
        again = await agent.batch([STOP])
        assert [o.status for o in again.outcomes] == ["accepted"]
    finally:
        await agent.close()
