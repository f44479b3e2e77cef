"""Outbox drain rate: records/s from a real SQLite outbox to a real local Mosquitto, each marked
sent only on its PUBACK, for several in-flight bounds in one run.

    python benchmarks/bench_outbox_drain.py --records 5000 --inflight 1 20 100
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.config import parse_config
from edge_agent.publish.drainer import OutboxPublisher
from edge_agent.store import OutboxRecord, open_store
from simulators.broker import LocalMosquitto

PAYLOAD = '{"kind":"order","pad":"' + "x" * 1900 + '"}'  # about the size of an order record


async def drain(records: int, inflight: int, broker: LocalMosquitto, folder: Path) -> float:
    db = folder / f"outbox-{inflight}.db"
    config = parse_config(
        {
            "site": {"id": "bench"},
            "meters": [{"id": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}],
            "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": inflight,
                     "client_id": f"bench-{inflight}"},
        },
        folder,
    )  # fmt: skip
    async with await open_store(db) as store:
        for start in range(0, records, 500):
            for index in range(start, min(start + 500, records)):
                await store.enqueue_record(
                    OutboxRecord(
                        f"r{index}", 1, "order", "lot", f"o{index}", "bench/records", PAYLOAD, 0
                    )
                )
        publisher = OutboxPublisher(config, store)
        began = time.perf_counter()
        await publisher.start()
        while (await store.outbox_stats()).unsent_count > 0:  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - began
        await publisher.stop()
    return records / elapsed


async def main_async(records: int, inflights: list[int]) -> None:
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as folder:
        for inflight in inflights:
            rate = await drain(records, inflight, broker, Path(folder))
            print(
                f"max_inflight {inflight:4d}: {rate:8.0f} records/s ({records} records of ~2 kB, PUBACK each)"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 20, 100])
    args = parser.parse_args()
    asyncio.run(main_async(args.records, args.inflight))


if __name__ == "__main__":
    main()
