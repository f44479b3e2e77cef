"""Bytes the agent writes to its disk per day, at N SDM630 meters polled every second.

An SD card's wear is a Raspberry Pi user's first question. The agent runs as ``edge-agent run``
(its own process, SQLite store, local Mosquitto) against the fast meter farm, with no orders:
what it writes is its samples, heartbeat and housekeeping, on a database already holding
``--history`` seconds of samples (the steady state of a gateway: every meter point's newest
index entries on a page of their own). Measured over whole journal cycles (from the end of one
merge of the samples journal to the end of the next): the bytes the agent's process sent to the
storage layer (``write_bytes`` of ``/proc/<pid>/io``: WAL appends and checkpoints into the
database file) and the rows it stored, scaled to a day. Two sample policies: every point at
every poll (``store.other_points.every_s: 0``) and the default (the SDM630's five ``other``
points once a minute; energy and power every second).

Baseline, in the same run: bare ``sqlite3`` storing the agent's very rows, at the times they were
stored, the straightforward way — one transaction a second straight into the indexed ``samples``
table (what the agent itself did before its journal), with the same pragmas (WAL,
synchronous=NORMAL), on a copy of the same database. The ratio is the agent's bytes over the
baseline's.

    python benchmarks/bench_disk.py --meters 100 1000
    python benchmarks/bench_disk.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pickle
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.meter_server import MeterFarm  # noqa: E402
from edge_agent.store import open_store  # noqa: E402
from simulators.broker import LocalMosquitto  # noqa: E402

DAY_S = 86_400
# name -> store settings.
POLICIES: dict[str, dict[str, Any]] = {
    "every point every poll": {"other_points": {"every_s": 0}},
    "default (other points once a minute)": {},
}


POINTS = [
    ("energy", "energy", "kWh"), ("power", "power", "W"), ("voltage_l1", "other", "V"),
    ("current_l1", "other", "A"), ("frequency", "other", "Hz"), ("export_energy", "other", "kWh"),
    ("total_energy", "other", "kWh"),
]  # fmt: skip
COLUMNS = "ts_ns, meter_id, point, role, unit, value, quality, state, detail"
INSERT = f"INSERT INTO samples ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io", encoding="ascii") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


def prepare(db: Path, meters: int, other_every_s: float, history_s: int) -> None:
    """A database as the agent makes it (its migrations), holding ``history_s`` of samples.

    On a young database each point's index entries share a few pages; after minutes every
    point's newest entries sit on their own index page, and each commit rewrites one page per
    point: that steady state is what a gateway lives in, so it is what is measured.
    """

    async def migrate() -> None:
        store = await open_store(db)
        await store.close()

    asyncio.run(migrate())
    start_ns = time.time_ns() - history_s * 1_000_000_000
    # Closed before the file is copied for the baseline (a copy taken while the connection was
    # open came out malformed at 1,000 meters): contextlib.closing, as sqlite3's own context
    # manager only commits.
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute("PRAGMA synchronous=OFF")
        for second in range(history_s):
            ts = start_ns + second * 1_000_000_000
            other = other_every_s == 0 or second % int(other_every_s) == 0
            connection.execute("BEGIN")
            connection.executemany(INSERT, [
                (ts, f"m{meter}", name, role, unit, 1.0, "good", None, "")
                for meter in range(meters)
                for name, role, unit in POINTS
                if other or role != "other"
            ])  # fmt: skip
            connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def newest_indexed_id(db: Path) -> int:
    """The indexed table's newest row id: it grows only when the agent merges its journal."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
        return int(connection.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()[0])


def after_next_merge(
    db: Path, agent: subprocess.Popen[bytes], timeout_s: float, quiet_s: float
) -> None:
    """Return once the agent's next merge of its journal has ended: the indexed table grew and
    then stayed as it was for ``quiet_s`` (a merge moves a few meters per transaction, with
    pauses of at most a second between them). Between two such moments lies one merge."""
    deadline = time.monotonic() + timeout_s
    previous = newest_indexed_id(db)
    changed_at: float | None = None
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with status {agent.returncode}")
        time.sleep(0.1)
        newest = newest_indexed_id(db)
        if newest != previous:
            previous, changed_at = newest, time.monotonic()
        elif changed_at is not None and time.monotonic() - changed_at >= quiet_s:
            return
    raise RuntimeError(f"no merge of the samples journal ended within {timeout_s:g} s")


def run_agent(
    db: Path, farm: MeterFarm, broker: LocalMosquitto, store: dict[str, Any], cycles: int
) -> dict[str, Any]:
    """The agent's bytes over whole journal cycles: from just after one merge to just after
    another, so each window holds its merges exactly."""
    merge_s = float(store.get("samples_merge_s", 60.0))
    config = {
        "site": {"id": "bench-disk"},
        "store": {"path": str(db), **store},
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"disk-{db.stem}"},
        "health": {"enabled": False},
        "meters": [
            {"id": f"m{i}", "protocol": "modbus_tcp", "host": "127.0.0.1",
             "port": farm.base_port + i, "profile": "sdm630", "interval_s": 1.0}
            for i in range(farm.meters)
        ],
    }  # fmt: skip
    path = db.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Longer than the merge's pauses, shorter than the time between merges.
        quiet_s = min(3.0, merge_s / 2)
        after_next_merge(db, agent, merge_s * 2 + 30, quiet_s)
        bytes0, ns0, t0 = write_bytes(agent.pid), time.time_ns(), time.monotonic()
        for _ in range(cycles):
            after_next_merge(db, agent, merge_s * 2 + 30, quiet_s)
        bytes1, ns1, t1 = write_bytes(agent.pid), time.time_ns(), time.monotonic()
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            f"SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM samples UNION ALL "
            f"SELECT {COLUMNS} FROM samples_journal) WHERE ts_ns >= ? AND ts_ns < ? ORDER BY ts_ns",
            (ns0, ns1),
        ).fetchall()
    return {
        "bytes_per_day": (bytes1 - bytes0) / (t1 - t0) * DAY_S,
        "rows_per_s": len(rows) / (t1 - t0),
        "rows": [(ts - ns0, *rest) for ts, *rest in rows],
        "seconds": t1 - t0,
    }


BARE_WRITER = """
import pickle, sqlite3, sys, time
path, rows_file, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(rows_file, "rb") as f:
    rows, insert = pickle.load(f)
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
print("ready", flush=True)
sys.stdin.readline()
began, base, index = time.monotonic(), time.time_ns(), 0
while index < len(rows):
    due = (time.monotonic() - began) // every * every + every
    time.sleep(max(0.0, began + due - time.monotonic()))
    limit = int(due * 1e9)
    batch = []
    while index < len(rows) and rows[index][0] < limit:
        batch.append((base + rows[index][0], *rows[index][1:]))
        index += 1
    db.execute("BEGIN")
    db.executemany(insert, batch)
    db.execute("COMMIT")
print("done", flush=True)
sys.stdin.readline()
"""


def run_bare(db: Path, rows: list[tuple[Any, ...]], commit_every_s: float) -> float:
    """Bare sqlite3 appending the agent's own rows, at the times they were stored."""
    rows_file = db.with_suffix(".rows")
    rows_file.write_bytes(pickle.dumps((rows, INSERT)))
    writer = subprocess.Popen(
        [sys.executable, "-c", BARE_WRITER, str(db), str(rows_file), str(commit_every_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdin is not None
    assert writer.stdout is not None
    try:
        writer.stdout.readline()
        bytes0, t0 = write_bytes(writer.pid), time.monotonic()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        if writer.stdout.readline().strip() != "done":
            raise RuntimeError("the bare writer failed")
        bytes1, t1 = write_bytes(writer.pid), time.monotonic()
    finally:
        writer.kill()
        writer.wait()
    return (bytes1 - bytes0) / (t1 - t0) * DAY_S


def remove_database(db: Path) -> None:
    """The file and its -wal and -shm: the killed bare writer leaves a WAL behind, which SQLite
    would apply to a new file of the same name (the 1,000-meter copy came out malformed)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meters", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cycles", type=int, default=1, help="journal merges per window")
    parser.add_argument(
        "--merge-s", type=float, help="store.samples_merge_s (default: the agent's)"
    )
    parser.add_argument("--history", type=int, default=600, help="seconds of samples already held")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 meters, 3 s merges")
    parser.add_argument("--json", type=Path, help="write the figures here (benchmarks/run_all.py)")
    args = parser.parse_args()
    if args.quick:
        args.meters, args.merge_s, args.cycles, args.history = [20], 3.0, 2, 120
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {
        "cycles": args.cycles, "merge_s": args.merge_s, "history_s": args.history, "runs": [],
    }  # fmt: skip
    print(
        "meters  policy                                  agent MB/day  rows/s  bare MB/day  ratio"
    )
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for meters in args.meters:
            with MeterFarm(meters) as farm:
                for run, (policy, settings) in enumerate(POLICIES.items()):
                    db = folder / f"agent-{meters}-{run}.db"
                    bare_db = folder / f"bare-{meters}-{run}.db"
                    other_every_s = settings.get("other_points", {}).get("every_s", 60)
                    prepare(db, meters, other_every_s, args.history)
                    shutil.copyfile(db, bare_db)
                    store = dict(settings)
                    if args.merge_s is not None:
                        store["samples_merge_s"] = args.merge_s
                    agent = run_agent(db, farm, broker, store, args.cycles)
                    if agent["rows_per_s"] <= 0 or agent["bytes_per_day"] <= 0:
                        raise SystemExit(f"{meters} meters, {policy}: nothing written")
                    bare = run_bare(bare_db, agent["rows"], store.get("batch_max_delay_s", 1.0))
                    remove_database(db)
                    remove_database(bare_db)
                    ratio = agent["bytes_per_day"] / bare
                    mb, bare_mb = agent["bytes_per_day"] / 1e6, bare / 1e6
                    print(f"{meters:6d}  {policy:38s}  {mb:12,.0f}  {agent['rows_per_s']:6,.0f}"
                          f"  {bare_mb:11,.0f}  {ratio:5.2f}", flush=True)  # fmt: skip
                    rows.append({
                        "figure": f"bytes written per day, {meters:,} meters at 1 s, {policy}",
                        "agent": round(mb, 1), "baseline": round(bare_mb, 1), "unit": "MB/day",
                        "ratio": round(ratio, 2), "goal": "", "met": None,
                    })  # fmt: skip
                    details["runs"].append({
                        "meters": meters, "policy": policy, "store": store,
                        "agent_bytes_per_day": agent["bytes_per_day"],
                        "agent_rows_per_s": agent["rows_per_s"],
                        "bare_bytes_per_day": bare,
                    })  # fmt: skip
    by_meters: dict[int, list[float]] = {}
    for run in details["runs"]:
        by_meters.setdefault(run["meters"], []).append(run["agent_bytes_per_day"])
    details["saving_vs_every_poll"] = {
        str(m): [1 - x / b[0] for x in b[1:]] for m, b in by_meters.items() if b[0] > 0
    }
    details["median_ratio"] = statistics.median(r["ratio"] for r in rows)
    write_result(args.json, benchmark="disk", title="Bytes written per day", rows=rows,
                 details=details)  # fmt: skip


if __name__ == "__main__":
    main()
