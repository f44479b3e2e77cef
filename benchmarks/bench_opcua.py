"""OPC UA throughput: values per second in read and subscribe mode, and the agent's CPU.

The simulated machines (3 nodes each) run in a separate process; this process runs only the
agent's OPC UA source.

    python benchmarks/bench_opcua.py --machines 167 --interval 1 --interval 0.2 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.domain import Quality, Sample
from edge_agent.sources.opcua.adapter import build_opcua_sources
from simulators.broker import free_port
from simulators.opcua_machines import NAMESPACE

SERVER = """
import asyncio, sys
from simulators.opcua_machines import OpcUaMachineServer, SimulatedMachine
from simulators.machines import PROFILES
from edge_agent.clock import SystemClock
async def main(port, count):
    clock = SystemClock()
    machines = {f"machine-{i:03d}": SimulatedMachine(PROFILES["welding-robot"], clock, seed=i, noise_step_s=5.0)
                for i in range(count)}
    async with OpcUaMachineServer(machines, port=port, tick_s=0.5):
        print("ready", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(mode: str, machines: int, interval: float, seconds: float) -> None:
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 (a benchmark: blocking start-up is fine)
        [sys.executable, "-c", SERVER, str(port), str(machines)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert server.stdout is not None
    server.stdout.readline()
    config = parse_config(
        {
            "site": {"id": "bench"},
            "meters": [
                {
                    "id": f"m{i}",
                    "protocol": "opcua",
                    "endpoint": "sim",
                    "points": {
                        "energy": {"node": f"nsu={NAMESPACE};s=machine-{i:03d}.EnergyTotal", "unit": "kWh", "role": "energy"},
                        "power": {"node": f"nsu={NAMESPACE};s=machine-{i:03d}.ActivePower", "unit": "kW", "role": "power"},
                        "state": {"node": f"nsu={NAMESPACE};s=machine-{i:03d}.State", "role": "state",
                                  "states": {0: "off", 1: "idle", 2: "running", 3: "setup", 4: "fault"}},
                    },
                }
                for i in range(machines)
            ],
            "opcua_endpoints": [
                {"id": "sim", "url": f"opc.tcp://127.0.0.1:{port}/edge-agent/sim", "mode": mode,
                 "interval_s": interval, "timeout_s": 10}
            ],
        },
        Path("."),
    )  # fmt: skip
    (source,) = build_opcua_sources(config, SystemClock())
    samples: list[Sample] = []
    task = asyncio.create_task(source.run(samples.extend))
    await asyncio.sleep(3.0)  # connect, resolve, subscribe
    start_count, cpu0, wall0 = len(samples), cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    count, cpu1, wall1 = len(samples), cpu_s(), time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    server.terminate()
    server.wait()
    window = samples[start_count:count]
    good = sum(1 for s in window if s.quality is Quality.GOOD)
    print(
        f"{mode:<9} {machines * 3:5d} nodes @ {interval:g} s: {good / (wall1 - wall0):8.0f} good values/s "
        f"(due {machines * 3 / interval:6.0f}), agent CPU {(cpu1 - cpu0) / (wall1 - wall0):6.1%} of one core",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=167, help="3 nodes each")
    parser.add_argument(
        "--interval", type=float, action="append", help="seconds; repeat for several"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    for interval in args.interval or [1.0, 0.2]:
        for mode in ("read", "subscribe"):
            asyncio.run(run(mode, args.machines, interval, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
