"""A failing database blocks the MES stream loudly and loses nothing (real agent, broker, SQLite).

The database is made read-only with ``PRAGMA query_only`` — what an SD card's file system does
when the kernel remounts it read-only after I/O errors: every write fails, the probe write too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import LotPlan, run_order
from simulators.plant import ENCLOSURE_LINE

COUNTER_TOLERANCE = 0.005


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_a_read_only_database_blocks_the_stream_says_so_and_loses_nothing(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    step = ENCLOSURE_LINE[0]
    async with PlantHarness(tmp_path, mosquitto.host, mosquitto.port, steps=(step,)) as harness:
        agent, consumer, mes = harness.agent, harness.consumer, harness.mes
        assert agent is not None
        assert consumer is not None
        assert mes is not None
        intake, store = agent.intake, agent.store
        assert intake is not None
        assert store is not None
        await store._db.execute("PRAGMA query_only = 1")  # the file system went read-only
        truth = await run_order(
            harness.machines[step.meter_id], mes, harness.plant.clock,
            LotPlan("LOT-RO", "P", 4), step, 3.0,
        )  # fmt: skip
        await wait_until(lambda: intake.blocked_since is not None)
        await wait_until(
            lambda: any(
                p["code"] == "mes_intake_blocked" for s in consumer.statuses for p in s["problems"]
            )
        )
        await asyncio.sleep(1.0)
        assert intake.accepted == 0
        assert not intake.rejected  # a database failure is no rejection: nothing dead-lettered
        await store._db.execute("PRAGMA query_only = 0")  # repaired
        await wait_until(lambda: intake.accepted == 2, timeout_s=40)  # backoff: 0.5, 1, 2 ... s
        assert intake.blocked_since is None
        await wait_until(lambda: consumer.statuses[-1]["problems"] == [])
        assert await consumer.wait_for(orders=1, lots=0, timeout_s=30)
    (record,) = consumer.latest("order").values()
    assert record["order_id"] == truth.order_id
    assert record["quantity_good"] == truth.quantity_good
    # the boundaries were read on event (samples buffered while the database refused writes)
    error = abs(record["energy_kwh"] - truth.true_kwh) / truth.true_kwh
    print(f"after the database came back: error {error:.3%}")
    assert error < COUNTER_TOLERANCE
