"""The gateway's single source of truth: samples, MES events, order status, the outbox.

Durability, chosen per transaction (WAL mode; ``synchronous`` is set before each BEGIN):

* Business records — MES events, order and lot status, the outbox — commit with
  ``synchronous=FULL``: the WAL is fsynced before the commit returns, so an MES event
  acknowledged to the broker or a record in the outbox survives power loss.
* Raw samples commit with ``synchronous=NORMAL`` (no fsync per commit). On power loss WAL +
  NORMAL never corrupts the file; it can only drop the newest commits, i.e. the last second or so
  of samples — which attribution tolerates like any short communication gap. Because the WAL is
  append-only and a FULL commit fsyncs the whole file, every sample written before a business
  commit becomes durable with it.
* ``mark_sent`` and ``note_attempts`` also use NORMAL: losing one only means a record is
  published again after a crash, which the deterministic ``record_id`` makes harmless (consumers
  de-duplicate), and it keeps the outbox drain from paying one fsync per PUBACK batch.
* The agent's heartbeat (``record_run_alive``) uses NORMAL too: losing the last ones on power
  loss only makes its down-time look longer (more boundaries estimated, never fewer).

Samples are written one transaction per batch (executemany), never per row; aiosqlite costs a
thread hop per await, so every method here does its work in as few awaits as possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import aiosqlite

from edge_agent.clock import Clock, SystemClock
from edge_agent.domain import PointRole, Quality, Sample, ns_from_iso
from edge_agent.errors import StoreError
from edge_agent.store.runs import (
    RUN_HISTORY_MAX,
    RUN_HISTORY_NS,
    RUN_KEY_END,
    RUN_KEY_PREFIX,
    AgentRun,
    downtimes,
    parse_run,
    run_key,
)
from edge_agent.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

_Sync = Literal["FULL", "NORMAL"]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An MES event as stored: its routing fields plus the original JSON."""

    event_id: str
    type: str
    ts_ns: int
    order_id: str | None
    lot_id: str
    equipment_id: str | None
    payload_json: str
    received_ns: int
    supersedes: str | None = None
    held_until_ns: int | None = None  # set while it waits for its order's start


@dataclass(frozen=True, slots=True)
class IntakeCommit:
    """One MES batch, committed in one durable transaction before any of it is acknowledged."""

    events: Sequence[StoredEvent]  # accepted or held (``held_until_ns`` set)
    rejected: Mapping[str, int]  # rejection counts by code
    released_orders: Sequence[str] = ()  # orders whose held events met their start
    dropped_held: Sequence[str] = ()  # held event ids rejected when their start came


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A record to publish; (record_id, revision) identifies it, so enqueueing is idempotent."""

    record_id: str
    revision: int
    kind: str  # "order" | "lot" | "balance"
    lot_id: str
    order_id: str | None
    topic: str
    payload: str
    created_ns: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A stored outbox record with its queue position and delivery state."""

    seq: int
    record_id: str
    revision: int
    kind: str
    lot_id: str
    order_id: str | None
    topic: str
    payload: str
    created_ns: int
    sent_ns: int | None
    attempts: int = 0


class OutboxMessage(NamedTuple):
    """What the publisher needs of an unsent record (the payload as the bytes to send); a
    named tuple, built straight from the row, as the drain reads thousands a second.

    ``fields``: the payload's top-level ``kind`` and ``schema_version`` as SQLite's JSON
    functions found them, a JSON array of their raw values (null where absent); None when
    SQLite finds the payload is not JSON."""

    seq: int
    topic: str
    payload: bytes
    kind: str
    created_ns: int
    fields: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    unsent_count: int
    unsent_bytes: int
    oldest_unsent_ns: int | None
    sent_count: int


@dataclass(frozen=True, slots=True)
class Status:
    """Status of an order or a lot."""

    status: str  # "open" | "final"
    revision: int
    record_id: str | None
    finalised_ns: int | None = None


@dataclass(frozen=True, slots=True)
class BalancePeriod:
    """An energy-balance period already computed; its record is in the outbox."""

    start_ns: int
    end_ns: int
    record_id: str
    revision: int  # the latest published
    inputs: str  # JSON: per equipment, the order spans the period was computed with
    computed_ns: int


_SAMPLE_COLUMNS = "ts_ns, meter_id, point, role, unit, value, quality, state, detail"
_EVENT_COLUMNS = (
    "event_id, type, ts_ns, order_id, lot_id, equipment_id, payload, received_ns, supersedes, "
    "held_until_ns"
)
_OUTBOX_COLUMNS = (
    "seq, record_id, revision, kind, lot_id, order_id, topic, payload, created_ns, sent_ns, "
    "attempts"
)
# The publisher's queue. SQLite's JSON functions (C, off the event loop) pick the payload's
# top-level kind and schema_version out as raw JSON values, cheaper than json.loads of it all.
_UNSENT_MESSAGES = (
    "SELECT seq, topic, CAST(payload AS BLOB), kind, created_ns, CASE WHEN json_valid(payload) "
    "THEN json_array(payload -> '$.kind', payload -> '$.schema_version') END "
    "FROM outbox WHERE sent_ns IS NULL AND seq > ? ORDER BY seq LIMIT ?"
)
# Raw samples are merged and deleted in chunks of about this many rows, so no housekeeping
# step holds the write lock for long.
_CHUNK_ROWS = 20_000
# Free pages given back to the file system per step (4 KB each): 8 MB.
_VACUUM_STEP_PAGES = 2_000
# The journal is merged early past this many rows, so reading it stays cheap (1,000 meters
# polled every second write ~2,000 rows a second).
_JOURNAL_MAX_ROWS = 200_000
SAMPLE_MERGE_S = 60.0
# Housekeeping waits this long at most after each of its steps (see Store._paced).
_PACE_MAX_S = 1.0
# agent_state keys of final orders to recompute (see Store.recheck_order_ids).
_RECHECK = "split_recheck/"
_CHANGED = "order_changed/"


def _sample(row: Any) -> Sample:
    ts_ns, meter_id, point, role, unit, value, quality, state, detail = row
    return Sample(
        ts_ns, meter_id, point, PointRole(role), unit, value, Quality(quality), state, detail
    )


def _bracketed(ordered: list[Sample], start_ns: int, end_ns: int) -> list[Sample]:
    """Of time-ordered samples: the last before start, those in [start, end], the first after."""
    before = [s for s in ordered if s.ts_ns < start_ns][-1:]
    after = [s for s in ordered if s.ts_ns > end_ns][:1]
    return before + [s for s in ordered if start_ns <= s.ts_ns <= end_ns] + after


def _event(row: Any) -> StoredEvent:
    return StoredEvent(*row)


def _outbox(row: Any) -> OutboxRow:
    return OutboxRow(*row)


def _meter_ranges(counts: Sequence[Any], max_rows: int) -> list[tuple[str, str]]:
    """(first, last) meter ids of consecutive groups of (meter_id, rows) sorted by meter id,
    each of at most ``max_rows`` rows unless one meter alone has more."""
    ranges: list[tuple[str, str]] = []
    first: str | None = None
    last = ""
    rows = 0
    for meter_id, count in counts:
        if first is not None and rows + count > max_rows:
            ranges.append((first, last))
            first = None
        if first is None:
            first, rows = meter_id, 0
        last = meter_id
        rows += count
    if first is not None:
        ranges.append((first, last))
    return ranges


def _consecutive_runs(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive integers among ``numbers``, in any order."""
    runs: list[tuple[int, int]] = []
    for number in sorted(set(numbers)):
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


class Store:
    """Open with :func:`open_store`; all methods are coroutines on one connection."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        clock: Clock,
        sample_merge_s: float = SAMPLE_MERGE_S,
    ) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        self.sample_merge_s = sample_merge_s
        self._merge_at_s: float | None = None  # set by the first write of samples
        self._journal_rows = 0  # written since the last merge, by this process
        # One connection is shared by every task. A transaction spans several awaits, so every
        # statement takes this lock: another task's write would otherwise land inside it, and
        # another task's read would see rows that may still be rolled back.
        self._lock = asyncio.Lock()
        self._sync: _Sync = "FULL"  # what open_store set
        self._merge_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._merge_task is not None:
            # Its transactions are whole meters: what did not move stays in the journal.
            self._merge_task.cancel()
            await asyncio.wait([self._merge_task])
        async with self._lock:
            await self._db.close()

    async def schema_version(self) -> int:
        row = await self._one("PRAGMA user_version")
        return int(row[0]) if row else 0

    # -- samples ----------------------------------------------------------------------------
    #
    # New samples go to samples_journal, which has no index but its rowid: a commit writes the
    # pages its rows fill. Every samples_merge_s they move into samples, sorted by meter point.
    # samples' (meter_id, point, ts_ns) index puts each point's newest entries on a page of its
    # own, so a commit straight into it rewrites one 4 KB page per point: at 1 s polling that
    # was most of what the agent wrote to its disk (docs/performance.md, bytes per day). Every
    # query reads both tables.

    async def write_samples(self, samples: Sequence[Sample]) -> None:
        """Append a batch of samples in one transaction (all or none)."""
        if not samples:
            return
        rows = [
            (
                s.ts_ns, s.meter_id, s.point, s.role.value, s.unit, s.value, s.quality.value,
                s.state, s.detail,
            )
            for s in samples
        ]  # fmt: skip
        async with self._transaction("NORMAL", f"writing {len(rows)} samples"):
            await self._db.executemany(
                f"INSERT INTO samples_journal ({_SAMPLE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        self._journal_rows += len(rows)
        now_s = self._clock.monotonic_s()
        if self._merge_at_s is None:
            self._merge_at_s = now_s + self.sample_merge_s
        elif now_s >= self._merge_at_s or self._journal_rows >= _JOURNAL_MAX_ROWS:
            self._start_merge()

    def _start_merge(self) -> None:
        """Merge in a task of its own: the writer (and the polls' samples behind it) must not
        wait for the whole merge, which takes seconds at 1,000 meters."""
        if self._merge_task is not None and not self._merge_task.done():
            return
        self._merge_task = asyncio.create_task(self._merge_in_background(), name="sample merge")

    async def _merge_in_background(self) -> None:
        try:
            await self.merge_sample_journal()
        except StoreError as exc:
            # The samples stay in the journal (every query reads it) and the next write past
            # the merge time tries again.
            log.error("%s; the samples stay in the journal and the merge is tried again", exc)

    async def wait_for_merge(self) -> None:
        """Wait until a merge started by the writes (if any) has ended."""
        if self._merge_task is not None:
            await asyncio.wait([self._merge_task])

    async def merge_sample_journal(self) -> int:
        """Move the journal's samples into the indexed table, sorted by meter point; returns
        how many moved.

        The rows move in transactions of whole meters, each of at most about
        _CHUNK_ROWS, the store's lock released in between: one transaction of a minute's
        samples at 1,000 meters held every other store user for seconds, and the polls' samples
        piled up in memory meanwhile (the hour-long soak's RSS steps). A meter's rows move in
        one transaction, so a query sees each sample exactly once. Each meter's points still
        get their index entries in one go per merge (what keeps the bytes written low).
        """
        self._journal_rows = 0
        self._merge_at_s = self._clock.monotonic_s() + self.sample_merge_s
        newest = await self._one("SELECT max(id) FROM samples_journal")
        if newest is None or newest[0] is None:
            return 0
        last_id = int(newest[0])
        per_meter = await self._all(
            "SELECT meter_id, count(*) FROM samples_journal WHERE id <= ? "
            "GROUP BY meter_id ORDER BY meter_id",
            (last_id,),
        )
        moved = 0
        for first, last in _meter_ranges(per_meter, _CHUNK_ROWS):
            async with (
                self._paced(),
                self._transaction("NORMAL", "moving samples from the journal"),
            ):
                cursor = await self._db.execute(
                    f"INSERT INTO samples ({_SAMPLE_COLUMNS}) SELECT {_SAMPLE_COLUMNS} "
                    "FROM samples_journal WHERE id <= ? AND meter_id BETWEEN ? AND ? "
                    "ORDER BY meter_id, point, ts_ns, id",
                    (last_id, first, last),
                )
                moved += cursor.rowcount
                await self._db.execute(
                    "DELETE FROM samples_journal WHERE id <= ? AND meter_id BETWEEN ? AND ?",
                    (last_id, first, last),
                )
        return moved

    async def readings(
        self, meter_id: str, point: str, start_ns: int, end_ns: int, *, good_only: bool = True
    ) -> list[Sample]:
        """Samples in [start, end] plus the last one before start and the first one after end.

        Attribution interpolates the counter at the window's edges, so it needs the readings
        that bracket it. With ``good_only`` the brackets are good readings too.
        """
        good = "AND quality = 'good'" if good_only else ""
        where = f"meter_id = ? AND point = ? {good}"
        # The journal holds at most samples_merge_s of samples: all of this point's are read.
        query = f"""
            SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                           WHERE {where} AND ts_ns < ? ORDER BY ts_ns DESC LIMIT 1)
            UNION ALL
            SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                           WHERE {where} AND ts_ns BETWEEN ? AND ? ORDER BY ts_ns)
            UNION ALL
            SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                           WHERE {where} AND ts_ns > ? ORDER BY ts_ns ASC LIMIT 1)
            UNION ALL
            SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples_journal
                           WHERE {where} ORDER BY id)
        """
        params = (
            meter_id, point, start_ns,
            meter_id, point, start_ns, end_ns,
            meter_id, point, end_ns,
            meter_id, point,
        )  # fmt: skip
        rows = await self._all(query, params)
        # Sort once for a stable order: samples sharing a timestamp keep their insertion order
        # (the indexed table's rows came first; Python's sort is stable).
        ordered = sorted((_sample(row) for row in rows), key=lambda s: s.ts_ns)
        return _bracketed(ordered, start_ns, end_ns)

    async def has_reading_at_or_after(self, meter_id: str, point: str, ts_ns: int) -> bool:
        """Whether a good reading at or after ``ts_ns`` exists (an order's stop is measured)."""
        where = "meter_id = ? AND point = ? AND quality = 'good' AND ts_ns >= ?"
        query = (
            f"SELECT EXISTS (SELECT 1 FROM samples_journal WHERE {where}) "
            f"OR EXISTS (SELECT 1 FROM samples WHERE {where})"
        )
        row = await self._one(query, (meter_id, point, ts_ns) * 2)
        return bool(row[0]) if row else False

    async def latest_sample(self, meter_id: str, point: str) -> Sample | None:
        """The newest sample of any quality (the probe and health show failures too)."""
        query = f"""
            SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                           WHERE meter_id = ? AND point = ? ORDER BY ts_ns DESC LIMIT 1)
            UNION ALL
            SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples_journal
                           WHERE meter_id = ? AND point = ? ORDER BY ts_ns DESC, id DESC LIMIT 1)
        """
        rows = await self._all(query, (meter_id, point) * 2)
        # On a tie the journal's (the later insertion) is the newer.
        return max((_sample(row) for row in rows), key=lambda s: s.ts_ns, default=None)

    async def sample_count(self) -> int:
        row = await self._one(
            "SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM samples_journal)"
        )
        return int(row[0]) if row else 0

    async def _sample_count_estimate(self) -> int:
        """About how many samples are stored, from the ids at both ends of each table (four
        index look-ups): a full count(*) read the whole 540 MB file of an hour at 1,000 meters,
        1.5 s with the store locked. Pruning leaves gaps in the ids, so this counts up to a
        merge's worth too many; the budget only needs a size per sample."""
        row = await self._one(
            "SELECT coalesce((SELECT max(id) FROM samples) - (SELECT min(id) FROM samples) + 1, 0)"
            " + coalesce((SELECT max(id) FROM samples_journal)"
            " - (SELECT min(id) FROM samples_journal) + 1, 0)"
        )
        return int(row[0]) if row else 0

    async def prune_samples(self, older_than_ns: int) -> int:
        """Retention: delete samples older than ``older_than_ns``. Never touches anything else."""
        async with self._transaction("NORMAL", "pruning samples"):
            cursor = await self._db.execute(
                "DELETE FROM samples_journal WHERE ts_ns < ?", (older_than_ns,)
            )
        deleted = cursor.rowcount
        while True:
            async with self._paced(), self._transaction("NORMAL", "pruning samples"):
                cursor = await self._db.execute(
                    "DELETE FROM samples WHERE id IN (SELECT id FROM samples WHERE ts_ns < ? "
                    "LIMIT ?)",
                    (older_than_ns, _CHUNK_ROWS),
                )
            deleted += cursor.rowcount
            if cursor.rowcount < _CHUNK_ROWS:
                return deleted

    async def enforce_budget(self, max_bytes: int) -> int:
        """Delete the oldest raw samples while the database is over budget; never records.

        Returns how many samples were deleted. If events and records alone exceed the budget,
        nothing else is deleted (they are business data) and a warning is logged.

        Deletes run in transactions of at most _CHUNK_ROWS and the free pages are given
        back in steps, the store's lock released in between: the sample writes go on, where one
        long pruning held them (and the polls' samples in memory) for seconds at 1,000 meters.
        """
        deleted = 0
        bytes_per_sample: float | None = None
        while (used := await self.size_bytes()) > max_bytes:
            if bytes_per_sample is None:
                samples = await self._sample_count_estimate()
                if samples == 0:
                    self._warn_over_budget_without_samples(used, max_bytes)
                    break
                bytes_per_sample = max(used / samples, 1.0)
            # The oldest samples that free the excess (plus 10 % headroom).
            wanted = max(1_000, int((used - max_bytes) / bytes_per_sample * 1.1))
            async with (
                self._paced(),
                self._transaction("NORMAL", "pruning samples for the disk budget"),
            ):
                cursor = await self._db.execute(
                    "DELETE FROM samples WHERE id IN "
                    "(SELECT id FROM samples ORDER BY ts_ns LIMIT ?)",
                    (min(wanted, _CHUNK_ROWS),),
                )
            deleted += cursor.rowcount
            if cursor.rowcount == 0:
                if await self.merge_sample_journal() == 0:
                    self._warn_over_budget_without_samples(used, max_bytes)
                    break
                bytes_per_sample = None  # indexed rows take more room than journal rows
        if deleted:
            await self._give_back_free_pages()
        return deleted

    @staticmethod
    def _warn_over_budget_without_samples(used: int, max_bytes: int) -> None:
        log.warning(
            "database uses %d bytes, over its budget of %d, with no samples left to prune: "
            "records and events are kept",
            used,
            max_bytes,
        )

    async def _give_back_free_pages(self) -> None:
        """Shrink the files: release free pages, then fold the WAL into the database."""
        try:
            free_before: int | None = None
            while True:
                async with self._paced(), self._lock:
                    # auto_vacuum=INCREMENTAL is set when the file is created. The pragma frees
                    # one page per step and returns no rows, and Python's execute() stops after
                    # the first step of such a statement; executescript() steps it to the end.
                    await self._db.executescript(
                        f"PRAGMA incremental_vacuum({_VACUUM_STEP_PAGES});"
                    )
                row = await self._one("PRAGMA freelist_count")
                free = int(row[0]) if row else 0
                # No progress: a file without auto_vacuum=INCREMENTAL keeps its free pages.
                if free in (0, free_before):
                    break
                free_before = free
            async with self._lock:
                await self._db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except aiosqlite.Error as exc:
            raise StoreError(f"giving free pages back failed: {exc}") from exc

    async def size_bytes(self) -> int:
        """Bytes in use by the database (excluding free pages and the WAL file)."""
        row = await self._one(
            "SELECT (page_count - freelist_count) * page_size "
            "FROM pragma_page_count(), pragma_page_size(), pragma_freelist_count()"
        )
        return int(row[0]) if row else 0

    # -- MES events -------------------------------------------------------------------------

    async def insert_event(self, event: StoredEvent) -> bool:
        """Commit an event durably; False when its event_id is already stored (a duplicate).

        An event that names an order and its equipment also registers the order as open in the
        same transaction, so a crash can never leave an event whose order is forgotten.
        """
        async with self._transaction("FULL", f"storing event {event.event_id}"):
            [inserted] = await self._insert_events([event])
        return inserted

    async def commit_intake(self, batch: IntakeCommit) -> list[bool]:
        """Store a batch of MES events and rejection counts in one FULL transaction.

        Returns, per event, whether it was new (False: a duplicate event_id, ignored).
        """
        what = f"storing {len(batch.events)} MES events"
        async with self._transaction("FULL", what):
            for event_id in batch.dropped_held:
                await self._db.execute(
                    "DELETE FROM events WHERE event_id = ? AND held_until_ns IS NOT NULL",
                    (event_id,),
                )
            for order_id in batch.released_orders:
                await self._db.execute(
                    "UPDATE events SET held_until_ns = NULL WHERE order_id = ? "
                    "AND held_until_ns IS NOT NULL",
                    (order_id,),
                )
            inserted = await self._insert_events(batch.events)
            await self._mark_final_orders_changed(set(batch.released_orders))
            await self._count_rejected(batch.rejected)
        return inserted

    async def _mark_final_orders_changed(self, order_ids: set[str]) -> None:
        """Final orders with a new event: to recompute, after a restart too (the engine clears
        the mark when it has)."""
        if not order_ids:
            return
        await self._db.execute(
            "INSERT INTO agent_state (key, value) SELECT ? || order_id, '' FROM orders "
            f"WHERE status = 'final' AND order_id IN ({', '.join('?' * len(order_ids))}) "
            "ON CONFLICT (key) DO NOTHING",
            [_CHANGED, *sorted(order_ids)],
        )

    async def _insert_events(self, events: Sequence[StoredEvent]) -> list[bool]:
        """Insert in two statements (events, then the orders they open), not one per row.

        Inside the caller's transaction; returns per event whether it was new (a stored id, or
        an id repeated in ``events``, is a duplicate: the first one wins).
        """
        taken = {
            row[0]
            for row in await self._db.execute_fetchall(
                f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(events))})",
                [e.event_id for e in events],
            )
        }  # one thread hop (a cursor's execute, fetch and close are three)
        inserted = []
        for event in events:
            inserted.append(event.event_id not in taken)
            taken.add(event.event_id)
        new = [e for e, is_new in zip(events, inserted, strict=True) if is_new]
        await self._db.executemany(
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' * 10)})",
            [
                (
                    e.event_id, e.type, e.ts_ns, e.order_id, e.lot_id, e.equipment_id,
                    e.payload_json, e.received_ns, e.supersedes, e.held_until_ns,
                )
                for e in new
            ],
        )  # fmt: skip
        opening = {
            (e.order_id, e.lot_id, e.equipment_id): None
            for e in new
            if e.held_until_ns is None
            and e.order_id
            and e.equipment_id
            and e.type != "lot_complete"
        }
        await self._db.executemany(
            "INSERT INTO orders (order_id, lot_id, equipment_id, status) "
            "VALUES (?, ?, ?, 'open') ON CONFLICT (order_id) DO NOTHING",
            list(opening),
        )
        await self._mark_final_orders_changed({order_id for order_id, _, _ in opening})
        return inserted

    async def held_events(self, order_id: str) -> list[StoredEvent]:
        """Events of the order still waiting for its start, in the order received."""
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = ? "
            "AND held_until_ns IS NOT NULL ORDER BY rowid"
        )
        return [_event(row) for row in await self._all(query, (order_id,))]

    async def held_count(self) -> int:
        row = await self._one("SELECT COUNT(*) FROM events WHERE held_until_ns IS NOT NULL")
        return int(row[0]) if row else 0

    async def expire_held(self, now_ns: int, code: str) -> list[StoredEvent]:
        """Remove held events whose time ran out, counting them as rejected under ``code``."""
        async with self._transaction("FULL", "expiring held MES events"):
            async with self._db.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE held_until_ns IS NOT NULL "
                "AND held_until_ns <= ? ORDER BY rowid",
                (now_ns,),
            ) as cursor:
                expired = [_event(row) for row in await cursor.fetchall()]
            if expired:
                await self._db.executemany(
                    "DELETE FROM events WHERE event_id = ?", [(e.event_id,) for e in expired]
                )
                await self._count_rejected({code: len(expired)})
        return expired

    async def events_for_order(self, order_id: str) -> list[StoredEvent]:
        """The order's events in force or corrected, in the order received (replay sorts by
        ``ts``; which of two stops counts depends on arrival, never on how ids sort)."""
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = ? "
            "AND held_until_ns IS NULL ORDER BY rowid"
        )
        return [_event(row) for row in await self._all(query, (order_id,))]

    async def event_by_id(self, event_id: str) -> StoredEvent | None:
        row = await self._one(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        )
        return _event(row) if row else None

    async def events_for_lot(self, lot_id: str) -> list[StoredEvent]:
        """All events of a lot (every order's, plus lot_complete) in floor-time order."""
        query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE lot_id = ? ORDER BY ts_ns, event_id"
        return [_event(row) for row in await self._all(query, (lot_id,))]

    async def lot_completion_event(self, lot_id: str) -> StoredEvent | None:
        """The lot_complete in force: the last received that no later one supersedes."""
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events e WHERE lot_id = ? AND type = 'lot_complete' "
            "AND NOT EXISTS (SELECT 1 FROM events s WHERE s.supersedes = e.event_id "
            "AND s.lot_id = e.lot_id) ORDER BY rowid DESC LIMIT 1"
        )
        row = await self._one(query, (lot_id,))
        return _event(row) if row else None

    async def lot_completed(self, lot_id: str) -> bool:
        return await self.lot_completion_event(lot_id) is not None

    async def order_ids_on_equipment(
        self, equipment_id: str, from_ns: int, to_ns: int
    ) -> list[str]:
        """Orders with a start on this equipment in [from, to] (candidates for overlap)."""
        query = (
            "SELECT DISTINCT order_id FROM events WHERE equipment_id = ? AND type = 'start' "
            "AND ts_ns BETWEEN ? AND ? ORDER BY order_id"
        )
        return [row[0] for row in await self._all(query, (equipment_id, from_ns, to_ns))]

    async def order_ids_possibly_overlapping(
        self, equipment_id: str, started_from_ns: int, from_ns: int, to_ns: int
    ) -> list[str]:
        """Orders on this equipment started in [started_from, to] that may occupy part of
        [from, to]; a superset: the replay decides.

        An order is left out only when it certainly ended before ``from``: it has a stop, none
        of its stops is after ``from`` or before one of its starts, and it has no correction
        (``supersedes``) at all — a withdrawn stop reopens an order, and corrections are rare
        enough to replay. This keeps finalising one order from replaying a week of them.
        """
        query = (
            "SELECT DISTINCT s.order_id FROM events s WHERE s.equipment_id = ? "
            "AND s.type = 'start' AND s.held_until_ns IS NULL AND s.ts_ns BETWEEN ? AND ? "
            "AND NOT (EXISTS (SELECT 1 FROM events t WHERE t.order_id = s.order_id "
            "    AND t.type = 'stop' AND t.held_until_ns IS NULL) "
            "  AND NOT EXISTS (SELECT 1 FROM events t WHERE t.order_id = s.order_id "
            "    AND t.type = 'stop' AND (t.ts_ns > ? OR t.ts_ns < ("
            "      SELECT MAX(u.ts_ns) FROM events u WHERE u.order_id = s.order_id "
            "      AND u.type = 'start'))) "
            "  AND NOT EXISTS (SELECT 1 FROM events t WHERE t.order_id = s.order_id "
            "    AND t.supersedes IS NOT NULL)) "
            "ORDER BY s.order_id"
        )
        params = (equipment_id, started_from_ns, to_ns, from_ns)
        return [row[0] for row in await self._all(query, params)]

    async def events_of_orders(self, order_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        """Every stored event (held ones included) of these orders, each in arrival order.

        One query for a whole MES batch: every aiosqlite call is a thread hop.
        """
        found: dict[str, list[StoredEvent]] = {order_id: [] for order_id in order_ids}
        for chunk_start in range(0, len(order_ids), 500):  # SQLite's bound-parameter limit
            chunk = order_ids[chunk_start : chunk_start + 500]
            marks = ", ".join("?" * len(chunk))
            query = (
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id IN ({marks}) ORDER BY rowid"
            )
            for row in await self._all(query, chunk):
                event = _event(row)
                found[event.order_id or ""].append(event)
        return found

    async def order_ids_in_lot(self, lot_id: str) -> list[str]:
        query = "SELECT order_id FROM orders WHERE lot_id = ? ORDER BY order_id"
        return [row[0] for row in await self._all(query, (lot_id,))]

    async def count_rejected(self, reason: str, count: int = 1) -> None:
        """Count rejected MES events under ``reason`` (and remember when it was last seen)."""
        async with self._transaction("NORMAL", "counting a rejected event"):
            await self._count_rejected({reason: count})

    async def _count_rejected(self, counts: Mapping[str, int]) -> None:
        now_ns = self._clock.now_ns()
        rows = [(reason, count, now_ns) for reason, count in counts.items() if count > 0]
        if not rows:  # most batches: no statement, no thread hop
            return
        await self._db.executemany(
            "INSERT INTO rejected_events (reason, count, last_ns) VALUES (?, ?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count, "
            "last_ns = excluded.last_ns",
            rows,
        )

    async def stale_open_orders(self, started_before_ns: int) -> list[str]:
        """Open orders whose start lies before the given instant (candidates for auto-close)."""
        query = (
            "SELECT o.order_id FROM orders o JOIN events e ON e.order_id = o.order_id "
            "WHERE o.status = 'open' AND e.type = 'start' AND e.held_until_ns IS NULL "
            "GROUP BY o.order_id HAVING MIN(e.ts_ns) < ? ORDER BY o.order_id"
        )
        return [row[0] for row in await self._all(query, (started_before_ns,))]

    async def probe_write(self) -> None:
        """A small durable write: raises StoreError when the database cannot commit."""
        async with self._transaction("FULL", "probing the database"):
            await self._db.execute(
                "INSERT INTO agent_state (key, value) VALUES ('store_probe_ns', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(self._clock.now_ns()),),
            )

    async def rejected_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT reason, count FROM rejected_events ORDER BY reason")
        return {row[0]: int(row[1]) for row in rows}

    async def rejected_last_seen_ns(self, reason: str) -> int | None:
        row = await self._one("SELECT last_ns FROM rejected_events WHERE reason = ?", (reason,))
        return int(row[0]) if row and row[0] is not None else None

    # -- orders and lots --------------------------------------------------------------------

    async def upsert_order_open(self, order_id: str, lot_id: str, equipment_id: str) -> None:
        """Register an order as open; an order already known (open or final) is left as is."""
        async with self._transaction("FULL", f"opening order {order_id}"):
            await self._insert_open_order(order_id, lot_id, equipment_id)

    async def _insert_open_order(self, order_id: str, lot_id: str, equipment_id: str) -> None:
        await self._db.execute(
            "INSERT INTO orders (order_id, lot_id, equipment_id, status) "
            "VALUES (?, ?, ?, 'open') ON CONFLICT (order_id) DO NOTHING",
            (order_id, lot_id, equipment_id),
        )

    async def mark_order_final(
        self, order_id: str, record_id: str, revision: int, ts_ns: int
    ) -> None:
        """Mark an order final without a record (prefer :meth:`finalise_order`)."""
        async with self._transaction("FULL", f"finalising order {order_id}"):
            await self._set_order_final(order_id, record_id, revision, ts_ns)

    async def _set_order_final(
        self, order_id: str, record_id: str, revision: int, ts_ns: int
    ) -> None:
        cursor = await self._db.execute(
            "UPDATE orders SET status = 'final', revision = ?, record_id = ?, finalised_ns = ? "
            "WHERE order_id = ?",
            (revision, record_id, ts_ns, order_id),
        )
        if cursor.rowcount == 0:
            # Raising inside the transaction rolls back whatever it already did (the enqueue).
            raise StoreError(f"cannot finalise order {order_id!r}: it was never opened")

    async def reopen_order(self, order_id: str) -> None:
        """A final order runs again (its stop was withdrawn); its revision count is kept."""
        async with self._transaction("FULL", f"reopening order {order_id}"):
            await self._db.execute(
                "UPDATE orders SET status = 'open' WHERE order_id = ?", (order_id,)
            )
            await self._db.execute("DELETE FROM agent_state WHERE key = ?", (_CHANGED + order_id,))

    async def order_status(self, order_id: str) -> Status | None:
        query = "SELECT status, revision, record_id, finalised_ns FROM orders WHERE order_id = ?"
        row = await self._one(query, (order_id,))
        return Status(row[0], int(row[1]), row[2], row[3]) if row else None

    async def open_order_ids(self) -> list[str]:
        """Orders with events and no final record yet (resumed after a restart)."""
        rows = await self._all(
            "SELECT order_id FROM orders WHERE status = 'open' ORDER BY order_id"
        )
        return [row[0] for row in rows]

    async def upsert_lot_open(self, lot_id: str) -> None:
        async with self._transaction("FULL", f"opening lot {lot_id}"):
            await self._db.execute(
                "INSERT INTO lots (lot_id, status) VALUES (?, 'open') "
                "ON CONFLICT (lot_id) DO NOTHING",
                (lot_id,),
            )

    async def mark_lot_final(self, lot_id: str, record_id: str, revision: int, ts_ns: int) -> None:
        """Mark a lot final without a record (prefer :meth:`finalise_lot`)."""
        async with self._transaction("FULL", f"finalising lot {lot_id}"):
            await self._set_lot_final(lot_id, record_id, revision, ts_ns)

    async def _set_lot_final(self, lot_id: str, record_id: str, revision: int, ts_ns: int) -> None:
        await self._db.execute(
            "INSERT INTO lots (lot_id, status, revision, record_id, finalised_ns) "
            "VALUES (?, 'final', ?, ?, ?) ON CONFLICT (lot_id) DO UPDATE SET "
            "status = 'final', revision = excluded.revision, record_id = excluded.record_id, "
            "finalised_ns = excluded.finalised_ns",
            (lot_id, revision, record_id, ts_ns),
        )

    async def lot_status(self, lot_id: str) -> Status | None:
        query = "SELECT status, revision, record_id, finalised_ns FROM lots WHERE lot_id = ?"
        row = await self._one(query, (lot_id,))
        return Status(row[0], int(row[1]), row[2], row[3]) if row else None

    async def pending_lot_ids(self) -> list[str]:
        """Lots with a lot_complete event and no summary yet."""
        query = (
            "SELECT DISTINCT e.lot_id FROM events e LEFT JOIN lots l ON l.lot_id = e.lot_id "
            "WHERE e.type = 'lot_complete' AND (l.status IS NULL OR l.status != 'final') "
            "ORDER BY e.lot_id"
        )
        return [row[0] for row in await self._all(query)]

    async def finalise_order(
        self, order_id: str, record: OutboxRecord, *, recheck: Sequence[str] = ()
    ) -> int:
        """Mark the order final and enqueue its record in one durable transaction.

        Returns the record's outbox seq. Either both happen or neither: a crash or an error in
        between leaves the order open and the outbox unchanged, and repeating the call with the
        same (record_id, revision) adds no second row. ``recheck``: final orders that shared
        the equipment with this one and must be recomputed (see :meth:`recheck_order_ids`);
        the order's own recheck mark, if any, is cleared.
        """
        async with self._transaction("FULL", f"finalising order {order_id}"):
            seq = await self._enqueue(record)
            await self._set_order_final(
                order_id, record.record_id, record.revision, record.created_ns
            )
            await self._mark_recheck(order_id, recheck)
        return seq

    async def confirm_order(
        self,
        order_id: str,
        record_id: str,
        revision: int,
        ts_ns: int,
        *,
        recheck: Sequence[str] = (),
    ) -> None:
        """The order was recomputed to its published record: final at ``ts_ns`` with that
        revision, ``recheck`` marked, its own recheck mark cleared — one durable transaction."""
        async with self._transaction("FULL", f"confirming order {order_id}"):
            await self._set_order_final(order_id, record_id, revision, ts_ns)
            await self._mark_recheck(order_id, recheck)

    async def _mark_recheck(self, order_id: str, recheck: Sequence[str]) -> None:
        await self._db.execute(
            "DELETE FROM agent_state WHERE key IN (?, ?)",
            (_RECHECK + order_id, _CHANGED + order_id),
        )
        others = [(_RECHECK + other,) for other in recheck if other != order_id]
        if others:  # usually none: a statement less, a thread hop less
            await self._db.executemany(
                "INSERT INTO agent_state (key, value) VALUES (?, '') ON CONFLICT (key) DO NOTHING",
                others,
            )

    async def recheck_order_ids(self) -> list[str]:
        """Final orders to recompute because an order that shared their equipment changed.

        Kept in ``agent_state`` (keys ``split_recheck/<order_id>``), written in the transaction
        that publishes the change, so a crash cannot leave a split half updated.
        """
        query = "SELECT substr(key, ?) FROM agent_state WHERE substr(key, 1, ?) = ? ORDER BY key"
        params = (len(_RECHECK) + 1, len(_RECHECK), _RECHECK)
        return [row[0] for row in await self._all(query, params)]

    async def final_orders_finalised_between(
        self, equipment_id: str, from_ns: int, to_ns: int
    ) -> list[str]:
        """Final orders on this equipment whose record was last computed in [from, to]."""
        query = (
            "SELECT order_id FROM orders WHERE equipment_id = ? AND status = 'final' "
            "AND finalised_ns BETWEEN ? AND ? ORDER BY order_id"
        )
        return [row[0] for row in await self._all(query, (equipment_id, from_ns, to_ns))]

    async def final_orders_changed_since_final(self) -> list[str]:
        """Final orders with an event (in force, not held) committed after they were finalised:
        a correction committed just before a crash, still to be recomputed.

        Marked in ``agent_state`` (keys ``order_changed/<order_id>``) by the transaction that
        stores the event, so a tie of timestamps cannot hide one; stores written by earlier
        versions are read by receive time.
        """
        query = (
            "SELECT substr(key, ?) FROM agent_state WHERE substr(key, 1, ?) = ? UNION "
            "SELECT o.order_id FROM orders o WHERE o.status = 'final' AND EXISTS ("
            "SELECT 1 FROM events e WHERE e.order_id = o.order_id AND e.held_until_ns IS NULL "
            "AND e.received_ns > o.finalised_ns) ORDER BY 1"
        )
        params = (len(_CHANGED) + 1, len(_CHANGED), _CHANGED)
        return [row[0] for row in await self._all(query, params)]

    async def lot_orders(self, lot_id: str) -> list[tuple[str, Status]]:
        """The lot's orders with their status, in one query."""
        query = (
            "SELECT order_id, status, revision, record_id, finalised_ns FROM orders "
            "WHERE lot_id = ? ORDER BY order_id"
        )
        return [
            (row[0], Status(row[1], int(row[2]), row[3], row[4]))
            for row in await self._all(query, (lot_id,))
        ]

    async def stale_lot_ids(self) -> list[str]:
        """Summarised lots with an order that is open or was finalised at or after the summary
        (recomputed after a restart: the summary may miss its newest order revisions)."""
        query = (
            "SELECT l.lot_id FROM lots l WHERE l.status = 'final' AND EXISTS ("
            "SELECT 1 FROM orders o WHERE o.lot_id = l.lot_id AND (o.status = 'open' "
            "OR o.finalised_ns >= l.finalised_ns)) ORDER BY l.lot_id"
        )
        return [row[0] for row in await self._all(query)]

    async def finalise_lot(self, lot_id: str, record: OutboxRecord) -> int:
        """Mark the lot final and enqueue its summary record in one durable transaction."""
        async with self._transaction("FULL", f"finalising lot {lot_id}"):
            seq = await self._enqueue(record)
            await self._set_lot_final(lot_id, record.record_id, record.revision, record.created_ns)
        return seq

    async def latest_record(self, order_id: str) -> dict[str, Any] | None:
        """The payload of the order's newest record revision."""
        query = "SELECT payload FROM outbox WHERE order_id = ? ORDER BY revision DESC LIMIT 1"
        row = await self._one(query, (order_id,))
        if row is None:
            return None
        payload: dict[str, Any] = json.loads(row[0])
        return payload

    # -- outbox -----------------------------------------------------------------------------

    async def latest_lot_record(self, lot_id: str) -> dict[str, Any] | None:
        """The payload of the lot summary's newest revision."""
        query = (
            "SELECT payload FROM outbox WHERE kind = 'lot' AND lot_id = ? "
            "ORDER BY revision DESC LIMIT 1"
        )
        row = await self._one(query, (lot_id,))
        return dict(json.loads(row[0])) if row else None

    async def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids are already stored (held ones included)."""
        found: set[str] = set()
        for chunk_start in range(0, len(event_ids), 500):  # SQLite's bound-parameter limit
            chunk = event_ids[chunk_start : chunk_start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = await self._all(
                f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk
            )
            found.update(row[0] for row in rows)
        return found

    async def enqueue_record(self, record: OutboxRecord) -> int:
        """Durably enqueue a record; returns its seq (the existing one for a repeat)."""
        async with self._transaction("FULL", f"enqueueing record {record.record_id}"):
            return await self._enqueue(record)

    async def _enqueue(self, record: OutboxRecord) -> int:
        # RETURNING yields nothing when the row exists, hence the SELECT in that case only
        # (each statement one hop to aiosqlite's thread: execute_fetchall).
        rows = list(
            await self._db.execute_fetchall(
                "INSERT INTO outbox (record_id, revision, kind, lot_id, order_id, topic, "
                "payload, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (record_id, revision) DO NOTHING RETURNING seq",
                (
                    record.record_id, record.revision, record.kind, record.lot_id,
                    record.order_id, record.topic, record.payload, record.created_ns,
                ),
            )
        )  # fmt: skip
        if not rows:
            query = "SELECT seq FROM outbox WHERE record_id = ? AND revision = ?"
            rows = list(await self._db.execute_fetchall(query, (record.record_id, record.revision)))
        row = rows[0] if rows else None
        if row is None:
            raise StoreError(f"record {record.record_id} rev {record.revision} was not enqueued")
        if record.kind in ("order", "lot"):
            await self._note_intensity(record)
        return int(row[0])

    async def _note_intensity(self, record: OutboxRecord) -> None:
        """Keep the record's intensities for derived standards (its newest revision only; a
        cancelled order, an incomplete lot or one without good quantity has none)."""
        key = f"{record.kind}:{record.order_id or record.lot_id}"
        try:
            payload = json.loads(record.payload)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            await self._db.execute("DELETE FROM intensities WHERE record_key = ?", (key,))
            return
        await self._db.execute("DELETE FROM intensities WHERE record_key = ?", (key,))
        product = payload.get("product_id")
        kwh, co2e = payload.get("kwh_per_unit"), payload.get("co2e_kg_per_unit")
        flags = {flag.get("code") for flag in payload.get("flags", ())}
        end = payload.get("end")
        if product is None or kwh is None or co2e is None or payload.get("incomplete"):
            return
        if not isinstance(end, str):
            return
        if "order_cancelled" in flags:
            return
        await self._db.execute(
            "INSERT INTO intensities (record_key, product_id, equipment_id, lot_id, end_ns, "
            "kwh_per_unit, co2e_kg_per_unit) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key, product, payload.get("equipment_id") or "", record.lot_id,
                ns_from_iso(end), float(kwh), float(co2e),
            ),
        )  # fmt: skip

    async def recent_intensities(
        self, product_id: str, equipment_id: str, before_ns: int, exclude_lot: str, limit: int
    ) -> list[tuple[str, float, float]]:
        """The last ``limit`` (lot, kWh per unit, kg CO2e per unit) of a product's step
        (``equipment_id`` '' for whole lots) that ended before ``before_ns``, newest first."""
        query = (
            "SELECT lot_id, kwh_per_unit, co2e_kg_per_unit FROM intensities WHERE product_id = ? "
            "AND equipment_id = ? AND end_ns < ? AND lot_id != ? ORDER BY end_ns DESC LIMIT ?"
        )
        async with self._db.execute(
            query, (product_id, equipment_id, before_ns, exclude_lot, limit)
        ) as cursor:
            rows = await cursor.fetchall()
        return [(str(r[0]), float(r[1]), float(r[2])) for r in rows]

    async def published_since(
        self, since_ns: int | None, from_seq: int | None, after_seq: int, limit: int
    ) -> list[OutboxRow]:
        """Records already published, created at or after ``since_ns`` or numbered at or
        after ``from_seq`` (either may be None), after ``after_seq``, oldest first — what a
        re-sync request re-publishes (unsent ones are on their way anyway)."""
        query = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE sent_ns IS NOT NULL AND seq > ? "
            "AND (created_ns >= ? OR seq >= ?) ORDER BY seq LIMIT ?"
        )
        never = 2**62
        args = (
            after_seq,
            never if since_ns is None else since_ns,
            never if from_seq is None else from_seq,
            limit,
        )
        async with self._db.execute(query, args) as cursor:
            return [OutboxRow(*row) for row in await cursor.fetchall()]

    async def unsent(self, limit: int, after_seq: int = 0) -> list[OutboxRow]:
        """Unsent records after ``after_seq``, oldest first (the publisher's queue)."""
        query = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE sent_ns IS NULL AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        return [_outbox(row) for row in await self._all(query, (after_seq, limit))]

    async def unsent_messages(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        """Like :meth:`unsent`, only what publishing needs: the drain's hot query (no ids,
        the payload as bytes, no decoding to text and encoding back)."""
        rows = await self._all(_UNSENT_MESSAGES, (after_seq, limit))
        return [OutboxMessage(*row) for row in rows]

    async def mark_sent(self, seq: int, sent_ns: int) -> None:
        """The broker acknowledged the record (PUBACK)."""
        await self.mark_sent_many([seq], sent_ns)

    async def mark_sent_many(self, seqs: Sequence[int], sent_ns: int) -> None:
        """One transaction for a batch of PUBACKs (see the module note on NORMAL here); one
        UPDATE per run of consecutive seqs (the usual case: a drain acknowledged in order)."""
        if not seqs:
            return
        async with self._transaction("NORMAL", f"marking {len(seqs)} records sent"):
            await self._db.executemany(
                "UPDATE outbox SET sent_ns = ? WHERE seq BETWEEN ? AND ? AND sent_ns IS NULL",
                [(sent_ns, first, last) for first, last in _consecutive_runs(seqs)],
            )

    async def note_attempts(self, seqs: Sequence[int]) -> None:
        """Count one publish attempt for each of these records."""
        if not seqs:
            return
        async with self._transaction("NORMAL", f"counting attempts of {len(seqs)} records"):
            await self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs]
            )

    async def outbox_stats(self) -> OutboxStats:
        query = (
            "SELECT count(*) FILTER (WHERE sent_ns IS NULL), "
            "coalesce(sum(length(payload)) FILTER (WHERE sent_ns IS NULL), 0), "
            "min(created_ns) FILTER (WHERE sent_ns IS NULL), "
            "count(*) FILTER (WHERE sent_ns IS NOT NULL) FROM outbox"
        )
        row = await self._one(query)
        if row is None:  # an aggregate always yields a row
            raise StoreError("outbox statistics returned no row")
        return OutboxStats(int(row[0]), int(row[1]), row[2], int(row[3]))

    async def recent_records(self, limit: int) -> list[OutboxRow]:
        """The newest records first, sent or not (for ``edge-agent lots``)."""
        query = f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY seq DESC LIMIT ?"
        return [_outbox(row) for row in await self._all(query, (limit,))]

    async def records_created_between(
        self,
        from_ns: int | None = None,
        to_ns: int | None = None,
        *,
        kind: str | None = None,
        latest_only: bool = True,
    ) -> list[OutboxRow]:
        """Records created in [``from_ns``, ``to_ns``) (None: unbounded), oldest first, sent or
        not (for ``edge-agent export``). With ``latest_only``, of each ``record_id`` only the
        highest revision created in that period."""
        conditions: list[str] = []
        params: list[Any] = []
        for condition, value in (
            ("created_ns >= ?", from_ns),
            ("created_ns < ?", to_ns),
            ("kind = ?", kind),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        if latest_only:
            query = (
                f"SELECT {_OUTBOX_COLUMNS} FROM (SELECT *, row_number() OVER "
                f"(PARTITION BY record_id ORDER BY revision DESC) AS newest FROM outbox {where}) "
                "WHERE newest = 1 ORDER BY created_ns, seq"
            )
        else:
            query = f"SELECT {_OUTBOX_COLUMNS} FROM outbox {where} ORDER BY created_ns, seq"
        return [_outbox(row) for row in await self._all(query, params)]

    async def lot_record_revisions(
        self, *, lot_id: str | None = None, created_from_ns: int | None = None
    ) -> list[OutboxRow]:
        """Every stored revision of lot summaries (of one lot, or created at or after
        ``created_from_ns``), by record then revision (for footprints: the latest revision
        and the ids of the earlier ones)."""
        conditions: list[str] = ["kind = 'lot'"]
        params: list[Any] = []
        if lot_id is not None:
            conditions.append("lot_id = ?")
            params.append(lot_id)
        if created_from_ns is not None:
            conditions.append("created_ns >= ?")
            params.append(created_from_ns)
        query = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(conditions)} "
            "ORDER BY record_id, revision"
        )
        return [_outbox(row) for row in await self._all(query, params)]

    async def record_revisions(self, record_ids: Sequence[str]) -> list[OutboxRow]:
        """Every stored revision of these records, by record then revision."""
        rows: list[OutboxRow] = []
        unique = sorted(set(record_ids))
        for chunk_start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[chunk_start : chunk_start + 500]
            marks = ", ".join("?" * len(chunk))
            query = (
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE record_id IN ({marks}) "
                "ORDER BY record_id, revision"
            )
            rows.extend(_outbox(row) for row in await self._all(query, chunk))
        return rows

    # -- energy balances -------------------------------------------------------------------

    async def balance_periods(self, from_ns: int, to_ns: int) -> list[BalancePeriod]:
        """Computed balance periods that overlap [from, to), oldest first."""
        query = (
            "SELECT period_start_ns, period_end_ns, record_id, revision, inputs, computed_ns "
            "FROM balances WHERE period_end_ns > ? AND period_start_ns < ? "
            "ORDER BY period_start_ns, period_end_ns"
        )
        return [BalancePeriod(*row) for row in await self._all(query, (from_ns, to_ns))]

    async def last_balance_end(self) -> int | None:
        """The end of the latest computed balance period (None before the first)."""
        row = await self._one("SELECT max(period_end_ns) FROM balances")
        return int(row[0]) if row and row[0] is not None else None

    async def save_balance(self, period: BalancePeriod, record: OutboxRecord | None) -> None:
        """Store the period (its revision and inputs) and enqueue its record, if any, in one
        durable transaction: a crash leaves either both or neither."""
        async with self._transaction("FULL", f"saving balance {period.record_id}"):
            if record is not None:
                await self._enqueue(record)
            await self._db.execute(
                "INSERT INTO balances (period_start_ns, period_end_ns, record_id, revision, "
                "inputs, computed_ns) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (period_start_ns, period_end_ns) DO UPDATE SET "
                "record_id = excluded.record_id, revision = excluded.revision, "
                "inputs = excluded.inputs, computed_ns = excluded.computed_ns",
                (
                    period.start_ns, period.end_ns, period.record_id, period.revision,
                    period.inputs, period.computed_ns,
                ),
            )  # fmt: skip

    async def latest_payload(self, record_id: str) -> dict[str, Any] | None:
        """The payload of a record's newest revision in the outbox."""
        query = "SELECT payload FROM outbox WHERE record_id = ? ORDER BY revision DESC LIMIT 1"
        row = await self._one(query, (record_id,))
        return dict(json.loads(row[0])) if row else None

    # -- agent state ------------------------------------------------------------------------

    async def get_state(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM agent_state WHERE key = ?", (key,))
        return str(row[0]) if row else None

    async def set_state(self, key: str, value: str) -> None:
        async with self._transaction("FULL", f"saving agent state {key}"):
            await self._db.execute(
                "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- the agent's own runs (edge_agent.store.runs) ---------------------------------------

    async def record_run_start(self, start_ns: int) -> AgentRun | None:
        """Mark the start of a run (durably); returns the run before it, if any.

        Also forgets runs whose following down-time ended more than ``RUN_HISTORY_NS`` ago,
        and all but the newest ``RUN_HISTORY_MAX`` runs (a crash loop).
        """
        run = AgentRun(start_ns, start_ns, clean=False)
        cutoff_key = run_key(start_ns - RUN_HISTORY_NS)
        async with self._transaction("FULL", "recording the agent's start"):
            await self._db.execute(
                "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (run.key, run.value()),
            )
            async with self._db.execute(
                "SELECT key, value FROM agent_state WHERE key >= ? AND key < ? "
                "ORDER BY key DESC LIMIT 1",
                (RUN_KEY_PREFIX, run.key),
            ) as cursor:
                row = await cursor.fetchone()
            # Older than the newest run started before the cutoff: its down-time ended before.
            await self._db.execute(
                "DELETE FROM agent_state WHERE key >= ? AND key < (SELECT max(key) "
                "FROM agent_state WHERE key >= ? AND key < ?)",
                (RUN_KEY_PREFIX, RUN_KEY_PREFIX, cutoff_key),
            )
            await self._db.execute(
                "DELETE FROM agent_state WHERE key >= ? AND key < (SELECT key FROM agent_state "
                "WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1 OFFSET ?)",
                (RUN_KEY_PREFIX, RUN_KEY_PREFIX, RUN_KEY_END, RUN_HISTORY_MAX - 1),
            )
        return parse_run(row[0], row[1]) if row else None

    async def record_run_alive(self, start_ns: int, alive_ns: int, *, clean: bool = False) -> None:
        """The run that started at ``start_ns`` is alive at ``alive_ns`` (a heartbeat), or
        stopped cleanly then (``clean``).

        A heartbeat commits with ``synchronous=NORMAL``: a process kill keeps it (it is in
        the WAL); power loss may drop the last ones, which only makes the down-time look
        longer — more boundaries estimates, never fewer. The clean stop commits with FULL.
        """
        run = AgentRun(start_ns, alive_ns, clean)
        what = "recording the agent's stop" if clean else "recording the agent's heartbeat"
        async with self._transaction("FULL" if clean else "NORMAL", what):
            await self._db.execute(
                "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (run.key, run.value()),
            )

    async def agent_runs(self) -> list[AgentRun]:
        """The runs kept (see :meth:`record_run_start`), oldest first."""
        query = "SELECT key, value FROM agent_state WHERE key >= ? AND key < ? ORDER BY key"
        rows = await self._all(query, (RUN_KEY_PREFIX, RUN_KEY_END))
        return [run for key, value in rows if (run := parse_run(key, value)) is not None]

    async def agent_downtimes(self, since_ns: int, until_ns: int) -> list[tuple[int, int]]:
        """The agent's own down-times overlapping [since, until]: from one run's last sign of
        life (its last heartbeat after a kill -9) to the next run's start, oldest first."""
        # The runs that started in [since, until], the one before and the one after.
        query = """
            SELECT * FROM (SELECT key, value FROM agent_state WHERE key >= ? AND key < ?
                           ORDER BY key DESC LIMIT 1)
            UNION ALL
            SELECT key, value FROM agent_state WHERE key >= ? AND key <= ?
            UNION ALL
            SELECT * FROM (SELECT key, value FROM agent_state WHERE key > ? AND key < ?
                           ORDER BY key LIMIT 1)
        """
        low, high = run_key(since_ns), run_key(until_ns)
        params = (RUN_KEY_PREFIX, low, low, high, high, RUN_KEY_END)
        rows = await self._all(query, params)
        runs = [run for key, value in rows if (run := parse_run(key, value)) is not None]
        return downtimes(runs, since_ns, until_ns)

    # -- plumbing ---------------------------------------------------------------------------

    async def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        """The first row (every caller's query yields at most one), in one thread hop."""
        rows = await self._all(query, params)
        return rows[0] if rows else None

    async def _all(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        # execute_fetchall is one hop to aiosqlite's thread; a cursor's execute, fetch and
        # close are three, and under load each hop waits for the event loop.
        async with self._lock:
            try:
                return list(await self._db.execute_fetchall(query, params))
            except aiosqlite.Error as exc:
                raise StoreError(f"query failed: {exc}") from exc

    @asynccontextmanager
    async def _paced(self) -> AsyncIterator[None]:
        """Around one step of housekeeping (merge, pruning, vacuum): afterwards it waits as
        long as the step took, at most _PACE_MAX_S, so the sample writes, the outbox and the
        order finalisation get at least half of the store's time while it runs."""
        started = time.perf_counter()
        yield
        await asyncio.sleep(min(time.perf_counter() - started, _PACE_MAX_S))

    @asynccontextmanager
    async def _transaction(self, sync: _Sync, what: str) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: all or nothing, one at a time.

        Database errors come out as :class:`StoreError` naming ``what`` was being done.
        """
        async with self._lock:
            await self._begin(sync, what)
            try:
                yield
                await self._db.commit()
            except BaseException as exc:
                # Shielded: a second cancellation (a stop's timeout) must not abandon it.
                await asyncio.shield(self._rollback())
                if isinstance(exc, aiosqlite.Error):
                    raise StoreError(f"{what} failed: {exc}") from exc
                raise

    async def _begin(self, sync: _Sync, what: str) -> None:
        """A task cancelled while its BEGIN (or ROLLBACK) was queued left the statement to run
        in aiosqlite's thread after the await was given up: that transaction is ended, or every
        later one fails ("cannot change the safety level", "cannot start a transaction within a
        transaction"). The leftover may still be queued when we look (then it runs just before
        our statements): our BEGIN fails once, and is tried again after a rollback."""
        for attempt in (1, 2):
            if self._db.in_transaction:
                await self._rollback()
            try:
                if sync != self._sync:
                    # Outside any transaction: the level applies to the commit below.
                    await self._db.execute(f"PRAGMA synchronous={sync}")
                    self._sync = sync
                await self._db.execute("BEGIN IMMEDIATE")
                return
            except aiosqlite.Error as exc:
                if attempt == 2 or not self._db.in_transaction:
                    raise StoreError(f"{what} failed: {exc}") from exc

    async def _rollback(self) -> None:
        with contextlib.suppress(aiosqlite.Error):  # nothing to roll back: the commit ran
            await self._db.rollback()


async def open_store(
    path: Path, *, clock: Clock | None = None, sample_merge_s: float = SAMPLE_MERGE_S
) -> Store:
    """Open (creating and migrating as needed) the database at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # isolation_level=None: we issue BEGIN ourselves, so a batch is exactly one transaction.
        db = await aiosqlite.connect(path, isolation_level=None)
    except aiosqlite.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    try:
        # Only effective on a new file (before the first table): lets the budget give space back.
        await db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        async with db.execute("PRAGMA journal_mode=WAL") as cursor:
            row = await cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise StoreError(f"cannot switch {path} to WAL mode (got {row})")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        # Another process (the `edge-agent lots` command) may read or write at the same time.
        await db.execute("PRAGMA busy_timeout=5000")
        await migrate(db)
    except (aiosqlite.Error, StoreError) as exc:
        await db.close()
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    return Store(db, path, clock or SystemClock(), sample_merge_s)


async def migrate(db: aiosqlite.Connection, target: int | None = None) -> int:
    """Apply the migrations above the database's user_version, each in one transaction.

    ``db`` must be in autocommit mode (``isolation_level=None``). Returns the version reached.
    """
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    target = len(MIGRATIONS) if target is None else target
    if current > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {current} is newer than this edge-agent ({len(MIGRATIONS)})"
        )
    for version in range(current + 1, target + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1]:
                await db.execute(statement)
            # user_version is stored in the database header, so it commits with the step.
            await db.execute(f"PRAGMA user_version = {version}")
            await db.commit()
        except aiosqlite.Error:
            await db.rollback()
            raise
        log.info("database schema migrated to version %d", version)
    return max(current, target)
