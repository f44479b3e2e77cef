"""Throughput of the SQLite store, measured through its public API on a real file.

Prints, in one run (so the ratios compare like with like on the same disk):

* samples/s written in batches (one transaction per batch, ``synchronous=NORMAL``) vs one
  commit per row, and the ratio;
* outbox records/s through enqueue (``synchronous=FULL``: one fsync each) + mark_sent one by
  one, and with the PUBACKs marked in batches as the publisher does (``mark_sent_many``);
* finalise_order/s (order status + record in one durable transaction);
* bracketing ``readings`` queries/s on the batched table.

The database goes in a temporary folder under ``--dir`` (default: the system's temporary
folder). Point it at the gateway's data disk to measure fsync costs that matter: on tmpfs an
fsync is free and FULL looks as cheap as NORMAL.

    python benchmarks/bench_store.py --dir /var/lib/edge-agent
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.domain import PointRole, Sample
from edge_agent.store import OutboxRecord, open_store

NS_PER_S = 1_000_000_000
PAYLOAD = '{"record_id": "x", "energy_kwh": 1.25, "co2e_kg": 0.55}' + " " * 1_400  # ~1.5 kB


def samples(count: int, first_ts_ns: int = 0, meters: int = 100) -> list[Sample]:
    return [
        Sample(
            first_ts_ns + (i // meters) * NS_PER_S,
            f"m{i % meters}",
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


async def bench(
    folder: Path, batch_size: int, batched_rows: int, single_rows: int, records: int
) -> None:
    async with await open_store(folder / "bench.db") as store:
        # samples in batches
        rows = samples(batched_rows)
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            await store.write_samples(rows[start : start + batch_size])
        batched_per_s = len(rows) / (time.perf_counter() - started)

        # samples one commit per row (what batching avoids)
        rows = samples(single_rows, first_ts_ns=10**6 * NS_PER_S)
        started = time.perf_counter()
        for one in rows:
            await store.write_samples([one])
        single_per_s = len(rows) / (time.perf_counter() - started)

        # readings around a one-minute window for one meter (what attribution asks per order)
        meters_in_data = 100
        window_s = 60
        queries = 500
        started = time.perf_counter()
        for index in range(queries):
            first = (index * 7) % max(1, batched_rows // meters_in_data - window_s)
            await store.readings(
                f"m{index % meters_in_data}",
                "energy",
                first * NS_PER_S,
                (first + window_s) * NS_PER_S,
            )
        readings_per_s = queries / (time.perf_counter() - started)

        # outbox: enqueue (durable) + mark_sent, one record at a time
        started = time.perf_counter()
        for index in range(records):
            seq = await store.enqueue_record(record(index))
            await store.mark_sent(seq, index)
        outbox_single_per_s = records / (time.perf_counter() - started)

        # outbox: enqueue each, PUBACKs marked in batches of 100 (the publisher's way)
        started = time.perf_counter()
        acked: list[int] = []
        for index in range(records, 2 * records):
            acked.append(await store.enqueue_record(record(index)))
            if len(acked) == 100:
                await store.mark_sent_many(acked, index)
                acked.clear()
        await store.mark_sent_many(acked, 2 * records)
        outbox_batched_per_s = records / (time.perf_counter() - started)

        # finalise: open order + (status final, record enqueued) in one durable transaction
        for index in range(records):
            await store.upsert_order_open(f"o{index}", "lot-1", "laser")
        started = time.perf_counter()
        for index in range(records):
            await store.finalise_order(f"o{index}", record(2 * records + index, f"o{index}"))
        finalise_per_s = records / (time.perf_counter() - started)
        stats = await store.outbox_stats()
        size_mb = await store.size_bytes() / 1e6

    print(f"database folder: {folder}")
    print(f"samples, batches of {batch_size:>5}:     {batched_per_s:>12,.0f} samples/s")
    print(f"samples, one commit per row:    {single_per_s:>12,.0f} samples/s")
    print(f"batching speed-up:              {batched_per_s / single_per_s:>12,.1f} x")
    print(f"readings (1 min window +brackets): {readings_per_s:>9,.0f} queries/s")
    print(f"outbox enqueue + mark_sent:     {outbox_single_per_s:>12,.0f} records/s")
    print(f"outbox enqueue + mark_sent_many:{outbox_batched_per_s:>12,.0f} records/s")
    print(f"finalise_order (status+record): {finalise_per_s:>12,.0f} orders/s")
    print(
        f"outbox: {stats.sent_count} sent, {stats.unsent_count} unsent; database {size_mb:.1f} MB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary database")
    parser.add_argument("--batch", type=int, default=1_000, help="samples per batch")
    parser.add_argument("--batched-rows", type=int, default=200_000)
    parser.add_argument("--single-rows", type=int, default=3_000)
    parser.add_argument("--records", type=int, default=2_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-store-") as folder:
        asyncio.run(
            bench(Path(folder), args.batch, args.batched_rows, args.single_rows, args.records)
        )


if __name__ == "__main__":
    main()
