"""The samples journal (store migration 6): new samples are appended to an unindexed journal
and moved into the indexed table every samples_merge_s; every query sees both, on a real
SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.clock import FakeClock
from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample
from edge_agent.store import open_store
from edge_agent.store.sqlite import _meter_ranges


def sample(
    t_s: int, value: float, quality: Quality = Quality.GOOD, point: str = "energy"
) -> Sample:
    good = quality is Quality.GOOD
    return Sample(
        t_s * NS_PER_S, "m", point, PointRole.ENERGY, "kWh", value if good else None, quality
    )


def rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def reference(samples: list[Sample], start: int, end: int, good_only: bool) -> list[Sample]:
    """What readings() means, over every sample ever written (in writing order)."""
    usable = sorted(
        (s for s in samples if not good_only or s.quality is Quality.GOOD), key=lambda s: s.ts_ns
    )
    before = [s for s in usable if s.ts_ns < start][-1:]
    after = [s for s in usable if s.ts_ns > end][:1]
    return before + [s for s in usable if start <= s.ts_ns <= end] + after


async def test_samples_wait_in_the_journal_until_the_merge(tmp_path: Path) -> None:
    clock = FakeClock(start_monotonic_s=100.0)
    db = tmp_path / "agent.db"
    async with await open_store(db, clock=clock, sample_merge_s=60) as store:
        await store.write_samples([sample(t, t * 0.1) for t in range(10)])
        clock.advance(30)
        await store.write_samples([sample(t, t * 0.1) for t in range(10, 20)])
        assert (rows(db, "samples_journal"), rows(db, "samples")) == (20, 0)
        window = await store.readings("m", "energy", 5 * NS_PER_S, 12 * NS_PER_S)
        assert [s.ts_ns // NS_PER_S for s in window] == list(range(4, 14))
        clock.advance(31)  # past the merge time set by the first write
        await store.write_samples([sample(20, 2.0)])  # starts the merge, does not wait for it
        await store.wait_for_merge()
        assert (rows(db, "samples_journal"), rows(db, "samples")) == (0, 21)
        await store.write_samples([sample(21, 2.1)])
        assert await store.sample_count() == 22
        # Brackets and window across both tables.
        window = await store.readings("m", "energy", 19 * NS_PER_S, 21 * NS_PER_S)
        assert [s.ts_ns // NS_PER_S for s in window] == [18, 19, 20, 21]
        latest = await store.latest_sample("m", "energy")
        assert latest is not None
        assert latest.ts_ns == 21 * NS_PER_S
        assert await store.has_reading_at_or_after("m", "energy", 21 * NS_PER_S)
        assert not await store.has_reading_at_or_after("m", "energy", 22 * NS_PER_S)


async def test_retention_and_the_disk_budget_reach_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    async with await open_store(db, clock=FakeClock(), sample_merge_s=3600) as store:
        await store.write_samples([sample(t, float(t)) for t in range(1, 1001)])
        assert await store.prune_samples(500 * NS_PER_S) == 499
        assert await store.sample_count() == 501
        # Only journal rows left and the file over its budget: they are merged, then pruned.
        assert await store.enforce_budget(1) == 501
        assert await store.sample_count() == 0


async def test_a_journal_left_by_a_killed_agent_is_read_and_merged(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    async with await open_store(db, clock=FakeClock(), sample_merge_s=60) as store:
        await store.write_samples([sample(t, float(t)) for t in range(5)])
    clock = FakeClock(start_monotonic_s=0.0)
    async with await open_store(db, clock=clock, sample_merge_s=60) as store:
        assert len(await store.readings("m", "energy", 0, 4 * NS_PER_S)) == 5
        await store.write_samples([sample(5, 5.0)])
        clock.advance(61)
        await store.write_samples([sample(6, 6.0)])
        await store.wait_for_merge()
    assert (rows(db, "samples_journal"), rows(db, "samples")) == (0, 7)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),
            st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.TIMEOUT]),
            st.booleans(),  # merge after this write
        ),
        max_size=40,
    ),
    start=st.integers(min_value=0, max_value=40),
    length=st.integers(min_value=0, max_value=20),
    good_only=st.booleans(),
)
async def test_readings_are_the_same_wherever_the_samples_are(
    data: list[tuple[int, Quality, bool]],
    start: int,
    length: int,
    good_only: bool,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        written: list[Sample] = []
        async with await open_store(Path(folder) / "a.db", clock=FakeClock()) as store:
            for index, (t_s, quality, merge) in enumerate(data):
                item = sample(t_s, float(index), quality)
                await store.write_samples([item])
                written.append(item)
                if merge:
                    await store.merge_sample_journal()
            got = await store.readings(
                "m", "energy", start * NS_PER_S, (start + length) * NS_PER_S, good_only=good_only
            )
        want = reference(written, start * NS_PER_S, (start + length) * NS_PER_S, good_only)
        # Samples sharing a timestamp may come in either order at the brackets; compare as sets
        # of (time, value) plus the times in order.
        assert [s.ts_ns for s in got] == [s.ts_ns for s in want]
        inside = [
            (s.ts_ns, s.value)
            for s in got
            if start * NS_PER_S <= s.ts_ns <= (start + length) * NS_PER_S
        ]
        assert inside == [
            (s.ts_ns, s.value)
            for s in want
            if start * NS_PER_S <= s.ts_ns <= (start + length) * NS_PER_S
        ]


async def test_a_transaction_left_open_by_a_cancelled_task_does_not_block_the_next(
    tmp_path: Path,
) -> None:
    """A task cancelled while its BEGIN was queued leaves BEGIN to run in aiosqlite's thread
    after the await is given up; the next transaction must still work (it failed with "Safety
    level may not be changed inside a transaction" when an agent was stopped mid-write)."""
    async with await open_store(tmp_path / "agent.db", clock=FakeClock()) as store:
        for round_ in range(40):
            task = asyncio.create_task(store.write_samples([sample(round_, float(round_))]))
            for _ in range(round_ % 5):  # cancel at a different await each round
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.write_samples([sample(100, 100.0)])
        await store.prune_samples(0)  # a NORMAL then...
        await store.mark_sent_many([], 0)  # ...whatever level the next statement needs
        window = await store.readings("m", "energy", 100 * NS_PER_S, 100 * NS_PER_S)
        assert [s.value for s in window] == [100.0]


def meter_sample(meter: int, t_s: int) -> Sample:
    return Sample(
        t_s * NS_PER_S, f"m{meter:03d}", "energy", PointRole.ENERGY, "kWh", float(t_s),
        Quality.GOOD,
    )  # fmt: skip


async def test_the_merge_moves_whole_meters_in_short_transactions_beside_the_writes(
    tmp_path: Path,
) -> None:
    """A minute of samples at 1,000 meters merged in one transaction held the store for
    seconds (the soak's RSS steps): the merge runs in its own task, a few meters per
    transaction, and every sample is seen exactly once throughout."""
    clock = FakeClock(start_monotonic_s=0.0)
    db = tmp_path / "agent.db"
    async with await open_store(db, clock=clock, sample_merge_s=60) as store:
        for t_s in range(500):
            await store.write_samples([meter_sample(meter, t_s) for meter in range(120)])
        statements: list[str] = []
        await store._db.set_trace_callback(statements.append)
        clock.advance(61)
        await store.write_samples([meter_sample(0, 500)])  # due: the merge starts
        merge = store._merge_task
        assert merge is not None
        assert not merge.done()  # the write did not wait for it
        writes_during_merge = 0
        while not merge.done():
            await store.write_samples([meter_sample(1, 501 + writes_during_merge)])
            writes_during_merge += 1
            window = await store.readings("m005", "energy", 0, 499 * NS_PER_S)
            assert [s.ts_ns // NS_PER_S for s in window] == list(range(500))
        await store._db.set_trace_callback(None)
        moves = [s for s in statements if s.startswith("INSERT INTO samples (")]
        assert len(moves) >= 3  # 60,001 rows, at most about 20,000 a transaction
        assert writes_during_merge >= 2
        assert await store.sample_count() == 60_001 + writes_during_merge
        # What was written during the merge waits in the journal for the next one (the first
        # such write may have come before the merge took the journal's newest id).
        assert writes_during_merge - 1 <= rows(db, "samples_journal") <= writes_during_merge
        window = await store.readings("m001", "energy", 490 * NS_PER_S, 10_000 * NS_PER_S)
        assert [s.ts_ns // NS_PER_S for s in window] == [
            *range(489, 500),
            *range(501, 501 + writes_during_merge),
        ]


async def test_closing_the_store_during_a_merge_keeps_every_sample(tmp_path: Path) -> None:
    clock = FakeClock(start_monotonic_s=0.0)
    db = tmp_path / "agent.db"
    async with await open_store(db, clock=clock, sample_merge_s=60) as store:
        for t_s in range(300):
            await store.write_samples([meter_sample(meter, t_s) for meter in range(150)])
        clock.advance(61)
        await store.write_samples([meter_sample(0, 300)])
        await asyncio.sleep(0.05)  # somewhere in the merge
    assert rows(db, "samples_journal") + rows(db, "samples") == 45_001
    async with await open_store(db, clock=clock, sample_merge_s=60) as store:
        assert await store.sample_count() == 45_001
        await store.merge_sample_journal()
        window = await store.readings("m149", "energy", 0, 299 * NS_PER_S)
        assert [s.ts_ns // NS_PER_S for s in window] == list(range(300))
    assert rows(db, "samples_journal") == 0


@given(counts=st.lists(st.integers(min_value=1, max_value=50), max_size=30))
def test_meter_ranges_cover_every_meter_once_in_bounded_groups(counts: list[int]) -> None:
    per_meter = [(f"m{index:02d}", count) for index, count in enumerate(counts)]
    ranges = _meter_ranges(per_meter, 60)
    covered = [
        (meter, count)
        for first, last in ranges
        for meter, count in per_meter
        if first <= meter <= last
    ]
    assert covered == per_meter
    for first, last in ranges:
        group = [count for meter, count in per_meter if first <= meter <= last]
        assert sum(group) <= 60 or len(group) == 1


async def test_a_failed_merge_is_logged_and_keeps_the_samples_for_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(start_monotonic_s=0.0)
    db = tmp_path / "agent.db"
    async with await open_store(db, clock=clock, sample_merge_s=60) as store:
        with sqlite3.connect(db) as connection:  # as a failing disk would: every insert fails
            connection.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON samples "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
        await store.write_samples([sample(t, float(t)) for t in range(10)])
        clock.advance(61)
        await store.write_samples([sample(10, 10.0)])
        await store.wait_for_merge()
        failures = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(failures) == 1
        assert "moving samples from the journal failed" in failures[0].getMessage()
        assert "disk on fire" in failures[0].getMessage()
        assert (rows(db, "samples_journal"), rows(db, "samples")) == (11, 0)
        window = await store.readings("m", "energy", 0, 10 * NS_PER_S)
        assert [s.ts_ns // NS_PER_S for s in window] == list(range(11))
        with sqlite3.connect(db) as connection:
            connection.execute("DROP TRIGGER refuse")
        clock.advance(61)
        await store.write_samples([sample(11, 11.0)])  # the next merge retries
        await store.wait_for_merge()
    assert (rows(db, "samples_journal"), rows(db, "samples")) == (0, 12)
