"""How many Modbus meters one agent process polls at 1 s, and at what CPU cost.

The meters are simulated in a separate process (so its CPU is not counted); this process runs
only the agent's Modbus sources. Prints, per meter count: polls/s achieved vs due, skipped
ticks, CPU share of one core, read latency p50/p99.

    python benchmarks/bench_poller.py --meters 50 100 200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.domain import Quality, Sample
from edge_agent.sources.base import build_sources
from edge_agent.sources.modbus.adapter import ModbusConnection


def consecutive_free_ports(count: int, start: int = 15000) -> int:
    """A run of free ports below the kernel's ephemeral range (32768+), so none is taken."""
    base = start
    while base + count < 32000:
        taken = False
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    base = port + 1
                    break
        if not taken:
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(meters: int, seconds: float) -> dict[str, Any]:
    base = consecutive_free_ports(meters)
    sim = subprocess.Popen(  # noqa: ASYNC220 (a benchmark: blocking start-up is fine)
        [sys.executable, "-m", "simulators.modbus_meters", "--meters", str(meters),
         "--base-port", str(base), "--duration", str(seconds + 30)],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert sim.stdout is not None
    for _ in range(meters):
        sim.stdout.readline()  # one line per meter once it listens
    config = parse_config(
        {
            "site": {"id": "bench"},
            "meters": [
                {"id": f"m{i}", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": base + i,
                 "profile": "sdm630", "interval_s": 1.0, "timeout_s": 1.0}
                for i in range(meters)
            ],
        },
        Path("."),
    )  # fmt: skip
    sources = build_sources(config, SystemClock())
    samples: list[Sample] = []
    await asyncio.sleep(1.0)
    cpu0, wall0 = cpu_s(), time.monotonic()
    tasks = [asyncio.create_task(source.run(samples.extend)) for source in sources]
    await asyncio.sleep(seconds)
    cpu1, wall1 = cpu_s(), time.monotonic()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    sim.terminate()
    sim.wait()
    connections = [s for s in sources if isinstance(s, ModbusConnection)]
    polls = sum(c.stats.polls for c in connections)
    latencies = sorted(c.stats.last_latency_s for c in connections)
    good = sum(1 for s in samples if s.quality is Quality.GOOD)
    return {
        "meters": meters,
        "polls_per_s": polls / (wall1 - wall0),
        "due_per_s": meters / 1.0,
        "skipped_ticks": sum(c.stats.skipped_ticks for c in connections),
        "good_share": good / max(len(samples), 1),
        "cpu_share_of_one_core": (cpu1 - cpu0) / (wall1 - wall0),
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_max_ms": latencies[-1] * 1000,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    print("meters  polls/s  due/s  skipped  good   CPU(1 core)  p50 ms  max ms  RSS MB")
    for count in args.meters:
        r = asyncio.run(run(count, args.seconds))
        print(
            f"{r['meters']:6d}  {r['polls_per_s']:7.1f}  {r['due_per_s']:5.0f}  {r['skipped_ticks']:7d}"
            f"  {r['good_share']:5.1%}  {r['cpu_share_of_one_core']:10.1%}  {r['latency_p50_ms']:6.2f}"
            f"  {r['latency_max_ms']:6.2f}  {r['rss_mb']:6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
