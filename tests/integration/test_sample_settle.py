"""An order is not computed while the polls before its stop are still waiting to be written.

The read-on-event reading at the stop goes to the store at once; the meter's polls go through
the sample batcher (up to ``store.batch_max_delay_s`` later). A record computed in between sees
a reading gap before its stop that is not there, and calls a measured boundary an estimate.
Real SQLite file, real batcher, fake clock (split_bench).
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.batching import SampleBatcher
from edge_agent.domain import NS_PER_S
from edge_agent.engine import OrderEngine
from tests.integration.split_bench import READ_S, Plant, at, event, steady


async def test_an_order_waits_for_the_polls_before_its_stop(tmp_path: Path) -> None:
    plant = await Plant.open(tmp_path, steady(6.0))
    batcher = SampleBatcher(plant.store.write_samples, max_batch=10_000, max_delay_s=5.0)
    plant.engine = OrderEngine(
        plant.config, plant.store, plant.clock, plant.read_now, lambda: None,
        unwritten_since=batcher.oldest_pending_ns,
    )  # fmt: skip
    try:
        await plant.advance_to(at(0))
        await plant.send(event("a0", "start", at(0), "A"))
        await plant.advance_to(at(10))
        # The last minute's polls are taken but still in the batcher when the stop arrives.
        plant.polling = False
        held = range(at(10) + READ_S * NS_PER_S, at(11), READ_S * NS_PER_S)
        plant.clock.advance(60)
        batcher.put([plant.counter.sample(t) for t in held])
        await plant.send(event("a1", "stop", at(11), "A", quantity_good=3))
        await plant.engine.finalise_ready()
        assert await plant.store.latest_record("A") is None
        assert plant.engine.pending == (1, 0)

        await batcher.flush()
        await plant.engine.finalise_ready()
        record = await plant.record("A")
    finally:
        await plant.close()
    assert record["measured_share"] == 1.0
    assert not {"gap", "boundary_estimated"} & {flag["code"] for flag in record["flags"]}
    assert abs(record["energy_kwh"] - 6.0 * 11 / 60) < 1e-9
