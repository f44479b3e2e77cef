"""Latency from an MES stop event to its record on the broker, and per-order accuracy.

Runs the demo plant (simulated Modbus meters, MES, local Mosquitto, the agent in-process) for a
few lots and prints, over all orders: stop-to-record latency (median, worst) measured at a
subscriber, and the relative error of each order's kWh against the simulator's ground truth.

    python benchmarks/bench_end_to_end.py --lots 6 --step-seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import demo_lots


async def run(lots: int, step_s: float) -> None:
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as folder:
        async with PlantHarness(Path(folder), broker.host, broker.port) as harness:
            truth = await harness.run_plan(demo_lots(lots), step_s)
            consumer = harness.consumer
            assert consumer is not None
            await consumer.wait_for(len(truth), lots, timeout_s=30)
            records = {r["order_id"]: r for r in consumer.latest("order").values()}
            latencies, errors, worst = [], [], ("", 0.0)
            for order in truth:
                record = records[order.order_id]
                arrived = consumer.received_at[f"{record['record_id']}#{record['revision']}"]
                latencies.append(arrived - order.stop_ns / 1e9)
                errors.append(abs(record["energy_kwh"] - order.true_kwh) / order.true_kwh)
                if errors[-1] > worst[1]:
                    worst = (order.order_id, errors[-1])
    latencies.sort()
    print(f"orders: {len(truth)} in {lots} lots, {step_s:g} s per step, 1 s polling")
    print(
        f"stop -> record on broker: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p90 {latencies[int(0.9 * (len(latencies) - 1))] * 1000:.1f} ms, "
        f"worst {latencies[-1] * 1000:.1f} ms"
    )
    print(
        f"kWh error vs ground truth: median {statistics.median(errors):.3%}, "
        f"worst {max(errors):.3%} ({worst[0]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lots", type=int, default=6)
    parser.add_argument("--step-seconds", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(run(args.lots, args.step_seconds))


if __name__ == "__main__":
    main()
