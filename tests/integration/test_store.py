"""The SQLite store on real database files."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import sys
import textwrap
from pathlib import Path

import aiosqlite
import pytest

from edge_agent.clock import FakeClock
from edge_agent.domain import PointRole, Quality, Sample
from edge_agent.errors import StoreError
from edge_agent.store import IntakeCommit, OutboxRecord, StoredEvent, migrate, open_store
from edge_agent.store.schema import MIGRATIONS

S = 1_000_000_000
REPO_ROOT = Path(__file__).resolve().parents[2]


def sample(
    t: int,
    value: float | None = 1.0,
    quality: Quality = Quality.GOOD,
    *,
    meter_id: str = "m1",
    point: str = "energy",
) -> Sample:
    return Sample(t * S, meter_id, point, PointRole.ENERGY, "kWh", value, quality)


def record(
    record_id: str = "r1", revision: int = 1, order_id: str | None = "o1", payload: str = '{"a":1}'
) -> OutboxRecord:
    return OutboxRecord(record_id, revision, "order", "lot-1", order_id, "t/x", payload, 5 * S)


def event(
    event_id: str,
    kind: str = "start",
    t: int = 1,
    order_id: str | None = "o1",
    lot_id: str = "lot-1",
    equipment_id: str | None = "laser",
) -> StoredEvent:
    return StoredEvent(event_id, kind, t * S, order_id, lot_id, equipment_id, "{}", t * S + 1)


async def pragma(path: Path, name: str) -> object:
    async with aiosqlite.connect(path) as db, db.execute(f"PRAGMA {name}") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def scalar(path: Path, query: str) -> object:
    async with aiosqlite.connect(path) as db, db.execute(query) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return row[0]


# -- opening and migrations ------------------------------------------------------------------


async def test_a_new_database_is_wal_with_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.db"  # the folder is created too
    async with await open_store(path) as store:
        assert await store.schema_version() == len(MIGRATIONS)
    assert await pragma(path, "journal_mode") == "wal"
    assert await pragma(path, "auto_vacuum") == 2  # incremental: the budget can shrink the file
    assert await pragma(path, "user_version") == len(MIGRATIONS)


async def test_migrates_a_version_1_database_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=1) == 1
        await db.execute(
            "INSERT INTO outbox (record_id, revision, kind, lot_id, order_id, topic, payload, "
            "created_ns) VALUES ('old', 1, 'order', 'lot-1', 'o1', 't/x', '{}', 7)"
        )
        await db.execute("INSERT INTO rejected_events (reason, count) VALUES ('bad json', 3)")
        await db.execute(
            "INSERT INTO orders (order_id, lot_id, equipment_id, status) "
            "VALUES ('o1', 'lot-1', 'laser', 'open')"
        )
    assert await pragma(path, "user_version") == 1

    async with await open_store(path) as store:
        assert await store.schema_version() == len(MIGRATIONS) == 6
        [row] = await store.unsent(10)
        assert (row.record_id, row.created_ns, row.attempts) == ("old", 7, 0)
        assert await store.rejected_counts() == {"bad json": 3}
        assert await store.rejected_last_seen_ns("bad json") is None
        assert await store.open_order_ids() == ["o1"]
        await store.note_attempts([row.seq])  # the new column works
        assert (await store.unsent(10))[0].attempts == 1


async def test_an_empty_file_is_migrated_from_scratch(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=0) == 0
    async with await open_store(path) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        await store.write_samples([sample(1)])
        assert await store.sample_count() == 1


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with await open_store(path):
        pass
    async with aiosqlite.connect(path) as db:
        await db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        await db.commit()
    with pytest.raises(StoreError, match="newer than this edge-agent"):
        await open_store(path)


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        await open_store(path)


# -- samples ---------------------------------------------------------------------------------


async def test_samples_round_trip_with_every_field(tmp_path: Path) -> None:
    written = [
        Sample(1 * S, "m1", "energy", PointRole.ENERGY, "kWh", 12.5),
        Sample(2 * S, "m1", "energy", PointRole.ENERGY, "kWh", None, Quality.TIMEOUT, None, "t/o"),
        Sample(3 * S, "m1", "state", PointRole.STATE, "", 2.0, Quality.GOOD, "running"),
    ]
    async with await open_store(tmp_path / "s.db") as store:
        await store.write_samples([])  # nothing to do, no transaction
        await store.write_samples(written)
        got = await store.readings("m1", "energy", 0, 10 * S, good_only=False)
        assert got == written[:2]
        assert await store.readings("m1", "state", 0, 10 * S) == [written[2]]
        assert await store.latest_sample("m1", "energy") == written[1]  # any quality
        assert await store.latest_sample("m1", "nope") is None


async def test_a_batch_is_one_transaction_all_or_nothing(tmp_path: Path) -> None:
    good = [sample(t) for t in range(10)]
    broken = Sample(11 * S, None, "energy", PointRole.ENERGY, "kWh", 1.0)  # type: ignore[arg-type]
    async with await open_store(tmp_path / "s.db") as store:
        with pytest.raises(StoreError, match="writing 11 samples"):
            await store.write_samples([*good, broken])
        assert await store.sample_count() == 0
        await store.write_samples(good)  # the store is usable after the failure
        assert await store.sample_count() == 10


async def test_readings_include_the_bracketing_samples(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "s.db") as store:
        await store.write_samples([sample(t, float(t)) for t in range(0, 100, 10)])
        # bad readings (a timeout inside the window, one after the last good) never count
        await store.write_samples(
            [sample(45, None, Quality.TIMEOUT), sample(95, None, Quality.TIMEOUT)]
        )
        await store.write_samples([sample(33, 1e9, meter_id="m2"), sample(34, 1e9, point="p")])
        got = await store.readings("m1", "energy", 25 * S, 55 * S)
        assert [s.ts_ns // S for s in got] == [20, 30, 40, 50, 60]
        # bounds are inclusive and the brackets are strictly outside
        got = await store.readings("m1", "energy", 30 * S, 50 * S)
        assert [s.ts_ns // S for s in got] == [20, 30, 40, 50, 60]
        # bad samples only when asked for
        got = await store.readings("m1", "energy", 41 * S, 49 * S, good_only=False)
        assert [s.ts_ns // S for s in got] == [40, 45, 50]
        got = await store.readings("m1", "energy", 41 * S, 49 * S)
        assert [s.ts_ns // S for s in got] == [40, 50]
        # at the edges of the data there is nothing to bracket with
        assert [s.ts_ns // S for s in await store.readings("m1", "energy", -5 * S, 5 * S)] == [
            0,
            10,
        ]
        assert [s.ts_ns // S for s in await store.readings("m1", "energy", 95 * S, 99 * S)] == [90]
        assert await store.has_reading_at_or_after("m1", "energy", 90 * S)
        assert not await store.has_reading_at_or_after("m1", "energy", 91 * S)
        assert not await store.has_reading_at_or_after("m2", "energy", 34 * S)


async def test_retention_prunes_samples_only(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "p.db") as store:
        # more rows than one delete chunk, so the chunked loop runs more than once
        await store.write_samples([sample(t) for t in range(25_000)])
        await store.write_samples([sample(t, meter_id="m2") for t in range(0, 100)])
        assert await store.insert_event(event("e1", t=0))
        await store.enqueue_record(record())
        assert await store.prune_samples(24_990 * S) == 24_990 + 100
        assert await store.sample_count() == 10
        assert [s.ts_ns // S for s in await store.readings("m1", "energy", 0, 24_991 * S)] == [
            24_990,
            24_991,
            24_992,
        ]
        assert len(await store.events_for_order("o1")) == 1
        assert len(await store.unsent(10)) == 1
        assert await store.prune_samples(0) == 0


async def test_budget_prunes_oldest_samples_never_records(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with await open_store(path) as store:
        await store.enqueue_record(record(payload="x" * 50_000))
        assert await store.insert_event(event("e1"))
        await store.write_samples([sample(t) for t in range(30_000)])
        before_pages = await store.size_bytes()
        budget = before_pages // 3
        deleted = await store.enforce_budget(budget)
        assert 0 < deleted < 30_000
        assert await store.size_bytes() <= budget
        # the oldest went first: what is left is the newest, without holes
        remaining = await store.sample_count()
        assert remaining == 30_000 - deleted
        kept = await store.readings("m1", "energy", 0, 30_000 * S)
        assert [s.ts_ns // S for s in kept] == list(range(deleted, 30_000))
        assert len(await store.unsent(10)) == 1
        assert len(await store.events_for_order("o1")) == 1
        # within budget: nothing happens
        assert await store.enforce_budget(budget) == 0
        # records alone over budget: samples go, records stay
        assert await store.enforce_budget(1) == remaining
        assert await store.sample_count() == 0
        assert len(await store.unsent(10)) == 1
    # free pages were given back to the file system
    assert await pragma(path, "freelist_count") == 0


# -- events, orders, lots --------------------------------------------------------------------


async def test_duplicate_events_are_ignored(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "e.db") as store:
        assert await store.insert_event(event("e1"))
        assert not await store.insert_event(event("e1", kind="stop", t=9))
        [stored] = await store.events_for_order("o1")
        assert stored == event("e1")


async def test_order_events_come_in_arrival_order_lot_events_in_floor_order(
    tmp_path: Path,
) -> None:
    async with await open_store(tmp_path / "e.db") as store:
        # arrival order differs from floor order (late events)
        assert await store.insert_event(event("e3", "stop", t=30))
        assert await store.insert_event(event("e1", "start", t=10))
        assert await store.insert_event(event("e2", "pause", t=20))
        assert await store.insert_event(
            event("x1", "start", t=15, order_id="o2", equipment_id="press")
        )
        assert await store.insert_event(
            event("l1", "lot_complete", t=40, order_id=None, equipment_id=None)
        )
        assert await store.insert_event(event("y1", "start", t=5, order_id="o3", lot_id="lot-2"))
        # arrival order: which of two stops counts depends on arrival (replay sorts by ts)
        assert [e.event_id for e in await store.events_for_order("o1")] == ["e3", "e1", "e2"]
        assert [e.event_id for e in await store.events_for_lot("lot-1")] == [
            "e1", "x1", "e2", "e3", "l1",
        ]  # fmt: skip
        completion = await store.lot_completion_event("lot-1")
        assert completion is not None
        assert completion.event_id == "l1"
        assert await store.lot_completed("lot-1")
        assert not await store.lot_completed("lot-2")
        assert await store.pending_lot_ids() == ["lot-1"]
        assert await store.order_ids_on_equipment("laser", 0, 100 * S) == ["o1", "o3"]
        assert await store.order_ids_on_equipment("laser", 6 * S, 100 * S) == ["o1"]
        assert await store.order_ids_in_lot("lot-1") == ["o1", "o2"]


async def test_an_event_opens_its_order_in_the_same_transaction(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "o.db") as store:
        assert await store.insert_event(event("e1"))
        status = await store.order_status("o1")
        assert status is not None
        assert (status.status, status.revision, status.record_id) == ("open", 0, None)
        assert await store.open_order_ids() == ["o1"]
        # a lot_complete names no order and opens none
        assert await store.insert_event(
            event("l1", "lot_complete", order_id=None, equipment_id=None)
        )
        assert await store.open_order_ids() == ["o1"]


async def test_order_status_open_then_final(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "o.db") as store:
        assert await store.order_status("o1") is None
        await store.upsert_order_open("o1", "lot-1", "laser")
        await store.upsert_order_open("o2", "lot-1", "press")
        await store.mark_order_final("o2", "rec-o2", 1, 77)
        assert await store.open_order_ids() == ["o1"]
        status = await store.order_status("o2")
        assert status is not None
        assert (status.status, status.revision, status.record_id, status.finalised_ns) == (
            "final", 1, "rec-o2", 77,
        )  # fmt: skip
        await store.upsert_order_open("o2", "lot-1", "press")  # a late start does not reopen it
        assert (await store.order_status("o2")) == status
        with pytest.raises(StoreError, match="never opened"):
            await store.mark_order_final("o9", "rec-o9", 1, 77)


async def test_finalise_order_is_atomic_and_idempotent(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "f.db") as store:
        await store.upsert_order_open("o1", "lot-1", "laser")
        seq = await store.finalise_order("o1", record())
        assert await store.finalise_order("o1", record()) == seq  # a repeat adds no second row
        assert [r.seq for r in await store.unsent(10)] == [seq]
        status = await store.order_status("o1")
        assert status is not None
        assert (status.status, status.revision, status.record_id) == ("final", 1, "r1")
        # a correction after a late event is a new revision of the same record id
        seq2 = await store.finalise_order("o1", record(revision=2, payload='{"a":2}'))
        assert seq2 > seq
        status = await store.order_status("o1")
        assert status is not None
        assert status.revision == 2
        assert await store.latest_record("o1") == {"a": 2}

        # the second half fails (the order was never opened): the enqueue is rolled back
        with pytest.raises(StoreError, match="never opened"):
            await store.finalise_order("o9", record("r9", order_id="o9"))
        assert [r.record_id for r in await store.unsent(10)] == ["r1", "r1"]


async def test_a_failure_inside_finalise_leaves_nothing_half_done(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with await open_store(path) as store:
        await store.upsert_order_open("o1", "lot-1", "laser")
        # Make the last statement of the transaction (the status update) fail in SQLite itself.
        async with aiosqlite.connect(path) as other:
            await other.execute(
                "CREATE TRIGGER fail_final BEFORE UPDATE OF status ON orders "
                "BEGIN SELECT RAISE(ABORT, 'disk said no'); END"
            )
            await other.execute(
                "CREATE TRIGGER fail_lot BEFORE INSERT ON lots "
                "BEGIN SELECT RAISE(ABORT, 'disk said no'); END"
            )
            await other.commit()
        with pytest.raises(StoreError, match="finalising order o1 failed: disk said no"):
            await store.finalise_order("o1", record())
        with pytest.raises(StoreError, match="finalising lot lot-1 failed: disk said no"):
            await store.finalise_lot("lot-1", record("lot-rec", order_id=None))
        assert await store.unsent(10) == []
        status = await store.order_status("o1")
        assert status is not None
        assert status.status == "open"
        assert await store.lot_status("lot-1") is None
        # the connection is not left inside a transaction: the next write works
        await store.write_samples([sample(1)])
    assert await scalar(path, "SELECT count(*) FROM outbox") == 0


CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from edge_agent.store import OutboxRecord, StoredEvent, open_store

    async def main() -> None:
        store = await open_store(Path(sys.argv[1]))
        await store.insert_event(StoredEvent("e1", "start", 1, "o1", "lot-1", "laser", "{}", 2))
        await store.enqueue_record(OutboxRecord("before", 1, "order", "lot-1", None, "t", "{}", 3))
        # Die like kill -9 in the middle of finalise: after the outbox insert, before the
        # order update and the commit. (Test-only hook on the store's own connection.)
        await store._db.create_function("die", 0, lambda: os._exit(9))
        await store._db.execute(
            "CREATE TEMP TRIGGER die_after_enqueue AFTER INSERT ON main.outbox "
            "BEGIN SELECT die(); END"
        )
        await store.finalise_order("o1", OutboxRecord("r1", 1, "order", "lot-1", "o1", "t", "{}", 4))
        print("finalise returned", flush=True)

    asyncio.run(main())
    """
)


async def test_a_crash_inside_finalise_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH_SCRIPT,
        str(path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 9, stderr.decode()
    assert b"finalise returned" not in stdout
    async with await open_store(path) as store:
        # everything committed before the crash is there; nothing of the interrupted transaction
        assert [e.event_id for e in await store.events_for_order("o1")] == ["e1"]
        assert [r.record_id for r in await store.unsent(10)] == ["before"]
        assert await store.open_order_ids() == ["o1"]
        # finalising again after the restart enqueues the record exactly once
        await store.finalise_order("o1", record())
        await store.finalise_order("o1", record())
        assert [r.record_id for r in await store.unsent(10)] == ["before", "r1"]
        assert await store.open_order_ids() == []


async def test_an_intake_batch_commits_events_and_rejection_counts_together(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start_ns=1000 * S)
    async with await open_store(tmp_path / "i.db", clock=clock) as store:
        held_stop = dataclasses.replace(
            event("s1", "stop", t=20, order_id="o9"), held_until_ns=600 * S
        )
        inserted = await store.commit_intake(
            IntakeCommit(
                events=[event("e1"), held_stop, event("e1")],
                rejected={"bad_json": 2, "invalid_id": 1},
            )
        )
        assert inserted == [True, True, False]  # the repeated id is a duplicate
        assert await store.rejected_counts() == {"bad_json": 2, "invalid_id": 1}
        # a held event does not open its order (its lot must not wait for a start that never comes)
        assert await store.open_order_ids() == ["o1"]
        assert await store.events_for_order("o9") == []
        assert [e.event_id for e in await store.held_events("o9")] == ["s1"]
        assert await store.existing_event_ids(["e1", "s1", "zz"]) == {"e1", "s1"}

        # its start arrives: released in the same transaction that stores the start
        await store.commit_intake(
            IntakeCommit(
                events=[event("a9", "start", t=10, order_id="o9")],
                rejected={},
                released_orders=["o9"],
            )
        )
        assert [e.event_id for e in await store.events_for_order("o9")] == ["s1", "a9"]
        assert await store.held_count() == 0

        # a held event whose time ran out is removed and counted
        late = dataclasses.replace(
            event("p7", "pause", t=30, order_id="o7"), held_until_ns=1500 * S
        )
        await store.commit_intake(IntakeCommit(events=[late], rejected={}))
        assert await store.expire_held(1499 * S, "without_start") == []
        [expired] = await store.expire_held(1500 * S, "without_start")
        assert expired.event_id == "p7"
        assert (await store.rejected_counts())["without_start"] == 1
        assert await store.existing_event_ids(["p7"]) == set()


async def test_a_superseded_lot_complete_is_out_of_force(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "l.db") as store:
        first = event("l1", "lot_complete", t=40, order_id=None, equipment_id=None)
        fixed = dataclasses.replace(
            event("l2", "lot_complete", t=40, order_id=None, equipment_id=None), supersedes="l1"
        )
        later_id_sorting_first = event("l0", "lot_complete", t=40, order_id=None, equipment_id=None)
        await store.commit_intake(IntakeCommit(events=[first, fixed], rejected={}))
        completion = await store.lot_completion_event("lot-1")
        assert completion is not None
        assert completion.event_id == "l2"
        # the last received one in force counts, whatever its id sorts like
        await store.commit_intake(IntakeCommit(events=[later_id_sorting_first], rejected={}))
        completion = await store.lot_completion_event("lot-1")
        assert completion is not None
        assert completion.event_id == "l0"


async def test_lots_open_then_final(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "l.db") as store:
        await store.upsert_lot_open("lot-1")
        status = await store.lot_status("lot-1")
        assert status is not None
        assert (status.status, status.revision) == ("open", 0)
        assert await store.insert_event(
            event("l1", "lot_complete", order_id=None, equipment_id=None)
        )
        assert await store.pending_lot_ids() == ["lot-1"]
        seq = await store.finalise_lot("lot-1", record("lot-rec", order_id=None))
        assert await store.finalise_lot("lot-1", record("lot-rec", order_id=None)) == seq
        assert await store.pending_lot_ids() == []
        status = await store.lot_status("lot-1")
        assert status is not None
        assert (status.status, status.revision, status.record_id) == ("final", 1, "lot-rec")
        await store.mark_lot_final("lot-2", "lot2-rec", 3, 99)  # a lot may be final directly
        status = await store.lot_status("lot-2")
        assert status is not None
        assert (status.revision, status.finalised_ns) == (3, 99)
        assert [r.record_id for r in await store.unsent(10)] == ["lot-rec"]


# -- outbox ----------------------------------------------------------------------------------


async def test_outbox_order_paging_mark_sent_and_stats(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "o.db") as store:
        assert await store.outbox_stats() == type(await store.outbox_stats())(0, 0, None, 0)
        seqs = []
        for index in range(5):
            rec = OutboxRecord(f"r{index}", 1, "order", "lot-1", None, "t", "x" * (index + 1),
                               (10 + index) * S)  # fmt: skip
            seqs.append(await store.enqueue_record(rec))
        assert seqs == sorted(seqs)
        assert await store.enqueue_record(record("r2", payload="other")) == seqs[2]  # idempotent
        assert [r.record_id for r in await store.unsent(2)] == ["r0", "r1"]
        assert [r.record_id for r in await store.unsent(10, after_seq=seqs[2])] == ["r3", "r4"]

        await store.mark_sent(seqs[0], 100)
        await store.mark_sent_many([seqs[1], seqs[3]], 200)
        await store.mark_sent(seqs[0], 300)  # a late duplicate PUBACK keeps the first time
        await store.mark_sent_many([], 400)
        assert [r.record_id for r in await store.unsent(10)] == ["r2", "r4"]
        stats = await store.outbox_stats()
        assert (stats.unsent_count, stats.unsent_bytes, stats.oldest_unsent_ns, stats.sent_count) == (
            2, 3 + 5, 12 * S, 3,
        )  # fmt: skip
        recent = await store.recent_records(3)
        assert [(r.record_id, r.sent_ns) for r in recent] == [
            ("r4", None),
            ("r3", 200),
            ("r2", None),
        ]
        await store.note_attempts([seqs[2], seqs[2], seqs[4]])
        assert [(r.record_id, r.attempts) for r in await store.unsent(10)] == [("r2", 2), ("r4", 1)]
        assert (await store.recent_records(5))[-1].sent_ns == 100


async def test_restart_keeps_unsent_records_open_orders_and_state(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await open_store(path) as store:
        for index in range(5):
            await store.enqueue_record(record(f"r{index}", order_id=None))
        rows = await store.unsent(10)
        await store.mark_sent_many([rows[0].seq, rows[1].seq], 9 * S)
        assert await store.insert_event(event("e9", order_id="o9"))
        await store.upsert_order_open("o8", "lot-8", "press")
        await store.finalise_order("o8", record("r8", order_id="o8"))
        await store.set_state("last_poll", "123")
    async with await open_store(path) as store:
        assert [r.record_id for r in await store.unsent(10)] == ["r2", "r3", "r4", "r8"]
        assert await store.open_order_ids() == ["o9"]
        stats = await store.outbox_stats()
        assert (stats.unsent_count, stats.sent_count) == (4, 2)
        assert await store.get_state("last_poll") == "123"


# -- agent state, rejected events, concurrency -----------------------------------------------


async def test_agent_state_and_rejected_counters(tmp_path: Path) -> None:
    clock = FakeClock(start_ns=1_000 * S)
    async with await open_store(tmp_path / "k.db", clock=clock) as store:
        assert await store.get_state("k") is None
        await store.set_state("k", "v1")
        await store.set_state("k", "v2")
        assert await store.get_state("k") == "v2"
        await store.count_rejected("bad json")
        clock.advance(5)
        await store.count_rejected("bad json")
        await store.count_rejected("unknown equipment")
        assert await store.rejected_counts() == {"bad json": 2, "unknown equipment": 1}
        assert await store.rejected_last_seen_ns("bad json") == 1_005 * S
        assert await store.rejected_last_seen_ns("never") is None


async def test_concurrent_writers_take_turns(tmp_path: Path) -> None:
    """Many tasks on one connection: without serialisation a BEGIN would land in another
    task's transaction and fail."""
    async with await open_store(tmp_path / "c.db") as store:
        await store.upsert_order_open("o0", "lot-1", "laser")

        async def samples(batch: int) -> None:
            await store.write_samples([sample(batch * 100 + t) for t in range(100)])

        async def events(index: int) -> None:
            assert await store.insert_event(event(f"e{index}", order_id=f"o{index}", t=index))

        async def records(index: int) -> None:
            await store.enqueue_record(record(f"r{index}"))
            await store.readings("m1", "energy", 0, 10 * S)

        await asyncio.gather(
            *(samples(i) for i in range(20)),
            *(events(i) for i in range(1, 21)),
            *(records(i) for i in range(20)),
            store.finalise_order("o0", record("final-o0", order_id="o0")),
        )
        assert await store.sample_count() == 2_000
        assert len(await store.open_order_ids()) == 20
        assert len(await store.unsent(100)) == 21


async def test_budget_pruning_runs_in_short_transactions_and_lets_writes_through(
    tmp_path: Path,
) -> None:
    """The first pruning at the budget held the store for seconds at 1,000 meters; the polls'
    samples piled up in memory meanwhile (the hour-long soak's RSS step)."""
    async with await open_store(tmp_path / "b.db", sample_merge_s=1) as store:
        await store.write_samples([sample(t) for t in range(100_000)])
        await store.merge_sample_journal()
        statements: list[str] = []
        await store._db.set_trace_callback(statements.append)
        prune = asyncio.create_task(store.enforce_budget(await store.size_bytes() // 4))
        await asyncio.sleep(0)  # the pruning holds the store now
        await store.write_samples([sample(200_000)])
        written_while_pruning = not prune.done()
        deleted = await prune
        await store._db.set_trace_callback(None)
        deletes = [s for s in statements if s.startswith("DELETE FROM samples WHERE id IN")]
        assert deleted > 2 * 20_000
        assert len(deletes) >= 3  # at most 20,000 rows each
        assert written_while_pruning
        vacuum_steps = [s for s in statements if "incremental_vacuum" in s]
        assert len(vacuum_steps) >= 2  # free pages given back in steps, once after the deletes
        assert statements.index(vacuum_steps[0]) > statements.index(deletes[-1])
    assert await pragma(tmp_path / "b.db", "freelist_count") == 0


async def test_budget_pruning_ends_on_a_file_without_incremental_vacuum(tmp_path: Path) -> None:
    """A database whose auto_vacuum was turned off cannot give its free pages back: the pruning
    still ends (it looped for ever once), the free pages left in the file."""
    path = tmp_path / "b.db"
    async with await open_store(path) as store:
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA auto_vacuum=NONE")
        db.execute("VACUUM")
    assert await pragma(path, "auto_vacuum") == 0
    async with await open_store(path, sample_merge_s=1) as store:
        await store.write_samples([sample(t) for t in range(30_000)])
        await store.merge_sample_journal()
        budget = await store.size_bytes() // 3
        deleted = await asyncio.wait_for(store.enforce_budget(budget), timeout=30)
        assert 0 < deleted < 30_000
        assert await store.size_bytes() <= budget
    assert int(str(await pragma(path, "freelist_count"))) > 0
