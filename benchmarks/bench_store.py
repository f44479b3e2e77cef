"""The agent's SQLite store against bare ``sqlite3`` doing the same statements, in one run.

Each operation runs twice per round on the same disk: through the agent's ``Store`` (aiosqlite,
its schema, its pragmas, its per-transaction ``synchronous``) and through the standard
library's ``sqlite3`` issuing the same statements on the same schema (the agent's migrations)
with the same pragmas — the bare library doing the same work (checked: both sides leave the
same rows behind and their queries return the same number of rows). Rounds alternate which goes
first; the figures printed are those of the round with the median ratio agent / bare (below 1:
the agent is slower), the range of the ratio over the rounds beside them.

* samples/s written in batches (one transaction per batch, ``synchronous=NORMAL``), and one
  commit per row (what batching avoids). The bare side inserts straight into the indexed
  ``samples`` table, the plain way; where the agent stages new samples in its journal table,
  its figure includes moving them into ``samples`` at the end;
* bracketing ``readings`` queries/s on the batched table;
* outbox records/s through enqueue (``synchronous=FULL``: one fsync each) + mark sent one by
  one, and with the PUBACKs marked in batches of 100 as the publisher does;
* finalise_order/s (order status + record in one durable transaction).

The databases go in a temporary folder under ``--dir`` (default: the system's temporary
folder). Point it at the gateway's data disk to measure fsync costs that matter: on tmpfs an
fsync is free and FULL looks as cheap as NORMAL.

    python benchmarks/bench_store.py --dir /var/lib/edge-agent
    python benchmarks/bench_store.py --quick --json store.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from edge_agent.domain import PointRole, Sample
from edge_agent.store import OutboxRecord, open_store
from edge_agent.store.schema import MIGRATIONS

NS_PER_S = 1_000_000_000
PAYLOAD = '{"record_id": "x", "energy_kwh": 1.25, "co2e_kg": 0.55}' + " " * 1_400  # ~1.5 kB
METERS = 100
WINDOW_S = 60
MARK_EVERY = 100  # PUBACKs marked per transaction, as the publisher batches them

# The agent's statements (edge_agent/store/sqlite.py), issued as they are by the bare side.
INSERT_SAMPLE = (
    "INSERT INTO samples (ts_ns, meter_id, point, role, unit, value, quality, state, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SAMPLE_COLUMNS = "ts_ns, meter_id, point, role, unit, value, quality, state, detail"
_WHERE = "meter_id = ? AND point = ? AND quality = 'good'"
READINGS = f"""
    SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                   WHERE {_WHERE} AND ts_ns < ? ORDER BY ts_ns DESC LIMIT 1)
    UNION ALL
    SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                   WHERE {_WHERE} AND ts_ns BETWEEN ? AND ? ORDER BY ts_ns)
    UNION ALL
    SELECT * FROM (SELECT {_SAMPLE_COLUMNS} FROM samples
                   WHERE {_WHERE} AND ts_ns > ? ORDER BY ts_ns ASC LIMIT 1)
"""
ENQUEUE = (
    "INSERT INTO outbox (record_id, revision, kind, lot_id, order_id, topic, payload, "
    "created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (record_id, revision) DO NOTHING RETURNING seq"
)
MARK_SENT = "UPDATE outbox SET sent_ns = ? WHERE seq BETWEEN ? AND ? AND sent_ns IS NULL"
OPEN_ORDER = (
    "INSERT INTO orders (order_id, lot_id, equipment_id, status) "
    "VALUES (?, ?, ?, 'open') ON CONFLICT (order_id) DO NOTHING"
)
SET_FINAL = (
    "UPDATE orders SET status = 'final', revision = ?, record_id = ?, finalised_ns = ? "
    "WHERE order_id = ?"
)


@dataclass(frozen=True, slots=True)
class Sizes:
    batch: int
    batched_rows: int
    single_rows: int
    queries: int
    records: int


# (key, what, unit) of each figure, in the order they run and print.
FIGURES = (
    ("samples_batched", "samples, batches of {batch} (one transaction each)", "samples/s"),
    ("samples_single", "samples, one commit per row", "samples/s"),
    ("readings", "readings query (1 min window + brackets)", "queries/s"),
    ("outbox_single", "outbox enqueue (FULL) + mark sent, one at a time", "records/s"),
    ("outbox_batched", f"outbox enqueue + mark sent per {MARK_EVERY}", "records/s"),
    ("finalise", "finalise an order (status + record, one durable transaction)", "orders/s"),
)


def samples(count: int, first_ts_ns: int = 0) -> list[Sample]:
    return [
        Sample(
            first_ts_ns + (i // METERS) * NS_PER_S,
            f"m{i % METERS}",
            "energy",
            PointRole.ENERGY,
            "kWh",
            float(i),
        )
        for i in range(count)
    ]


def record(index: int, order_id: str | None = None) -> OutboxRecord:
    return OutboxRecord(
        f"rec-{index}",
        1,
        "order",
        "lot-1",
        order_id,
        "plant/site/line/eq/lots/lot-1",
        PAYLOAD,
        index,
    )


def query_window(index: int, batched_rows: int) -> tuple[str, int, int]:
    first = (index * 7) % max(1, batched_rows // METERS - WINDOW_S)
    return f"m{index % METERS}", first * NS_PER_S, (first + WINDOW_S) * NS_PER_S


def rate(count: int, started: float) -> float:
    return count / (time.perf_counter() - started)


# -- the agent: its Store -----------------------------------------------------------------------


async def agent_round(path: Path, sizes: Sizes) -> dict[str, float]:
    out: dict[str, float] = {}
    async with await open_store(path) as store:
        rows = samples(sizes.batched_rows)
        # Where the store stages new samples in a journal table, moving them into the indexed
        # table is part of storing them: timed here, so both sides end with the same table.
        merge = getattr(store, "merge_sample_journal", None)
        started = time.perf_counter()
        for start in range(0, len(rows), sizes.batch):
            await store.write_samples(rows[start : start + sizes.batch])
        if merge is not None:
            await merge()
        out["samples_batched"] = rate(len(rows), started)

        rows = samples(sizes.single_rows, first_ts_ns=10**6 * NS_PER_S)
        started = time.perf_counter()
        for one in rows:
            await store.write_samples([one])
        if merge is not None:
            await merge()
        out["samples_single"] = rate(len(rows), started)

        found = 0
        started = time.perf_counter()
        for index in range(sizes.queries):
            meter, start_ns, end_ns = query_window(index, sizes.batched_rows)
            found += len(await store.readings(meter, "energy", start_ns, end_ns))
        out["readings"] = rate(sizes.queries, started)
        out["readings_rows"] = found

        records = sizes.records
        started = time.perf_counter()
        for index in range(records):
            seq = await store.enqueue_record(record(index))
            await store.mark_sent(seq, index)
        out["outbox_single"] = rate(records, started)

        started = time.perf_counter()
        acked: list[int] = []
        for index in range(records, 2 * records):
            acked.append(await store.enqueue_record(record(index)))
            if len(acked) == MARK_EVERY:
                await store.mark_sent_many(acked, index)
                acked.clear()
        await store.mark_sent_many(acked, 2 * records)
        out["outbox_batched"] = rate(records, started)

        for index in range(records):
            await store.upsert_order_open(f"o{index}", "lot-1", "laser")
        started = time.perf_counter()
        for index in range(records):
            await store.finalise_order(f"o{index}", record(2 * records + index, f"o{index}"))
        out["finalise"] = rate(records, started)
    return out


# -- the baseline: bare sqlite3, same schema, pragmas and statements -----------------------------


class BareStore:
    """sqlite3 set up as open_store sets up its connection, one transaction per call."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode[0]).lower() != "wal":
            raise RuntimeError(f"bare sqlite3: not in WAL mode ({mode})")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.sync = "FULL"
        for version, statements in enumerate(MIGRATIONS, start=1):
            with self.transaction("FULL"):
                for statement in statements:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def transaction(self, sync: str) -> Iterator[None]:
        if sync != self.sync:
            self.db.execute(f"PRAGMA synchronous={sync}")
            self.sync = sync
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def write_samples(self, batch: Sequence[Sample]) -> None:
        rows = [
            (s.ts_ns, s.meter_id, s.point, s.role.value, s.unit, s.value, s.quality.value,
             s.state, s.detail)
            for s in batch
        ]  # fmt: skip
        with self.transaction("NORMAL"):
            self.db.executemany(INSERT_SAMPLE, rows)

    def readings(self, meter: str, start_ns: int, end_ns: int) -> list[Any]:
        params = (meter, "energy", start_ns, meter, "energy", start_ns, end_ns,
                  meter, "energy", end_ns)  # fmt: skip
        return self.db.execute(READINGS, params).fetchall()

    def _enqueue(self, rec: OutboxRecord) -> int:
        row = self.db.execute(
            ENQUEUE,
            (rec.record_id, rec.revision, rec.kind, rec.lot_id, rec.order_id, rec.topic,
             rec.payload, rec.created_ns),
        ).fetchone()  # fmt: skip
        if row is None:
            row = self.db.execute(
                "SELECT seq FROM outbox WHERE record_id = ? AND revision = ?",
                (rec.record_id, rec.revision),
            ).fetchone()
        # The agent keeps an order record's intensities; this payload has none to keep, so
        # the same statement runs: the key's old row deleted.
        json.loads(rec.payload)
        key = f"{rec.kind}:{rec.order_id or rec.lot_id}"
        self.db.execute("DELETE FROM intensities WHERE record_key = ?", (key,))
        return int(row[0])

    def enqueue_record(self, rec: OutboxRecord) -> int:
        with self.transaction("FULL"):
            return self._enqueue(rec)

    def mark_sent_many(self, seqs: Sequence[int], sent_ns: int) -> None:
        if not seqs:
            return
        with self.transaction("NORMAL"):
            self.db.executemany(MARK_SENT, [(sent_ns, first, last) for first, last in runs(seqs)])

    def upsert_order_open(self, order_id: str) -> None:
        with self.transaction("FULL"):
            self.db.execute(OPEN_ORDER, (order_id, "lot-1", "laser"))

    def finalise_order(self, order_id: str, rec: OutboxRecord) -> int:
        with self.transaction("FULL"):
            seq = self._enqueue(rec)
            self.db.execute(SET_FINAL, (rec.revision, rec.record_id, rec.created_ns, order_id))
            self.db.execute(
                "DELETE FROM agent_state WHERE key IN (?, ?)",
                ("split_recheck/" + order_id, "order_changed/" + order_id),
            )
        return seq


def runs(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive integers, as the agent groups its UPDATEs."""
    out: list[tuple[int, int]] = []
    for number in sorted(set(numbers)):
        if out and number == out[-1][1] + 1:
            out[-1] = (out[-1][0], number)
        else:
            out.append((number, number))
    return out


def bare_round(path: Path, sizes: Sizes) -> dict[str, float]:
    out: dict[str, float] = {}
    bare = BareStore(path)
    try:
        rows = samples(sizes.batched_rows)
        started = time.perf_counter()
        for start in range(0, len(rows), sizes.batch):
            bare.write_samples(rows[start : start + sizes.batch])
        out["samples_batched"] = rate(len(rows), started)

        rows = samples(sizes.single_rows, first_ts_ns=10**6 * NS_PER_S)
        started = time.perf_counter()
        for one in rows:
            bare.write_samples([one])
        out["samples_single"] = rate(len(rows), started)

        found = 0
        started = time.perf_counter()
        for index in range(sizes.queries):
            found += len(bare.readings(*query_window(index, sizes.batched_rows)))
        out["readings"] = rate(sizes.queries, started)
        out["readings_rows"] = found

        records = sizes.records
        started = time.perf_counter()
        for index in range(records):
            seq = bare.enqueue_record(record(index))
            bare.mark_sent_many([seq], index)
        out["outbox_single"] = rate(records, started)

        started = time.perf_counter()
        acked: list[int] = []
        for index in range(records, 2 * records):
            acked.append(bare.enqueue_record(record(index)))
            if len(acked) == MARK_EVERY:
                bare.mark_sent_many(acked, index)
                acked.clear()
        bare.mark_sent_many(acked, 2 * records)
        out["outbox_batched"] = rate(records, started)

        for index in range(records):
            bare.upsert_order_open(f"o{index}")
        started = time.perf_counter()
        for index in range(records):
            bare.finalise_order(f"o{index}", record(2 * records + index, f"o{index}"))
        out["finalise"] = rate(records, started)
    finally:
        bare.db.close()
    return out


# -- the run ------------------------------------------------------------------------------------


def contents(path: Path) -> dict[str, int]:
    """What both sides must have left behind (the same work done)."""
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        journal = "samples_journal" in tables
        return {
            "samples": db.execute("SELECT count(*) FROM samples").fetchone()[0]
            + (db.execute("SELECT count(*) FROM samples_journal").fetchone()[0] if journal else 0),
            "outbox_rows": db.execute("SELECT count(*) FROM outbox").fetchone()[0],
            "outbox_sent": db.execute(
                "SELECT count(*) FROM outbox WHERE sent_ns IS NOT NULL"
            ).fetchone()[0],
            "orders_final": db.execute(
                "SELECT count(*) FROM orders WHERE status = 'final'"
            ).fetchone()[0],
        }


def one_round(folder: Path, index: int, sizes: Sizes) -> tuple[dict[str, float], ...]:
    agent_db, bare_db = folder / f"agent-{index}.db", folder / f"bare-{index}.db"
    sides: dict[str, Callable[[], dict[str, float]]] = {
        "agent": lambda: asyncio.run(agent_round(agent_db, sizes)),
        "bare": lambda: bare_round(bare_db, sizes),
    }
    order = ("agent", "bare") if index % 2 == 0 else ("bare", "agent")
    got = {who: sides[who]() for who in order}
    agent_left = {**contents(agent_db), "readings_rows": got["agent"].pop("readings_rows")}
    bare_left = {**contents(bare_db), "readings_rows": got["bare"].pop("readings_rows")}
    if agent_left != bare_left:
        raise RuntimeError(f"the agent left {agent_left}, bare sqlite3 {bare_left}")
    for path in folder.glob(f"*-{index}.db*"):
        path.unlink()
    return got["agent"], got["bare"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary database")
    parser.add_argument("--batch", type=int, default=1_000, help="samples per batch")
    parser.add_argument("--batched-rows", type=int, default=200_000)
    parser.add_argument("--single-rows", type=int, default=3_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--records", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds, alternating order")
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batched_rows, args.single_rows, args.queries, args.records, args.rounds = (
            20_000, 300, 100, 200, 1,
        )  # fmt: skip
    sizes = Sizes(args.batch, args.batched_rows, args.single_rows, args.queries, args.records)
    agent_runs: list[dict[str, float]] = []
    bare_runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-store-") as name:
        folder = Path(name)
        print(f"database folder: {folder}; {args.rounds} round(s), agent and bare alternating")
        for index in range(args.rounds):
            agent, bare = one_round(folder, index, sizes)
            agent_runs.append(agent)
            bare_runs.append(bare)
            print(
                f"round {index + 1}: "
                + ", ".join(f"{key} {agent[key]:,.0f} / {bare[key]:,.0f}" for key, _, _ in FIGURES),
                flush=True,
            )

    rows: list[dict[str, Any]] = []
    ratio_range: dict[str, list[float]] = {}
    print(f"\n{'operation':<62} {'agent':>12} {'bare sqlite3':>13} {'ratio':>6}  unit")
    for key, what, unit in FIGURES:
        # The round with the median ratio gives the figures, so agent / baseline is the ratio.
        ratios = [a[key] / b[key] for a, b in zip(agent_runs, bare_runs, strict=True)]
        median = ratios.index(statistics.median_low(ratios))
        agent_value, bare_value, ratio = (
            agent_runs[median][key],
            bare_runs[median][key],
            ratios[median],
        )
        ratio_range[key] = [round(min(ratios), 3), round(max(ratios), 3)]
        label = what.format(batch=args.batch)
        print(
            f"{label:<62} {agent_value:>12,.0f} {bare_value:>13,.0f} {ratio:>6.2f}  {unit}"
            + (f"  (ratio {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")
        )
        rows.append(
            {"figure": label, "agent": round(agent_value, 1), "baseline": round(bare_value, 1),
             "unit": unit, "ratio": round(ratio, 3), "goal": "", "met": None}
        )  # fmt: skip
    speed_up = [run["samples_batched"] / run["samples_single"] for run in agent_runs]
    print(f"batching speed-up (agent): {statistics.median(speed_up):,.1f} x")
    write_result(
        args.json,
        benchmark="store",
        title="SQLite store: the agent's Store vs bare sqlite3, same schema and pragmas",
        rows=rows,
        details={
            "sizes": {"batch": args.batch, "batched_rows": args.batched_rows,
                      "single_rows": args.single_rows, "queries": args.queries,
                      "records": args.records, "rounds": args.rounds},
            "agent_runs": agent_runs,
            "baseline_runs": bare_runs,
            "ratio_range": ratio_range,
            "batching_speed_up": statistics.median(speed_up),
        },
    )  # fmt: skip
    broken = [
        row["figure"]
        for row in rows
        if not (math.isfinite(row["agent"]) and math.isfinite(row["baseline"]))
        or row["agent"] <= 0
        or row["baseline"] <= 0
    ]
    if broken:
        print(f"FAILED: no measurement for {broken}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
