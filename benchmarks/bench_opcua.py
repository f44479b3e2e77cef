"""OPC UA: the agent's source against a bare asyncua client doing the same reads, in one run.

The simulated machines (3 nodes each: State, ActivePower, EnergyTotal) run in one asyncua
server process for the whole run; this process runs, one after the other against that same
server, the agent's OPC UA source and the baseline: a bare asyncua client doing the same work —
in ``read`` mode one batched Read of every node per interval, in ``subscribe`` mode the same
subscription (publishing interval = the interval, sampling at half of it), the last value of
every node taken each interval. Figures per mode and interval: good values/s and CPU µs per
value (this process's CPU over the measuring window), agent and baseline, and the ratio; over
``--rounds`` rounds (alternating which goes first), the round with the median ratio.

    python benchmarks/bench_opcua.py --machines 167 --interval 1 --interval 0.2 --seconds 10
    python benchmarks/bench_opcua.py --quick --json opcua.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncua import Client, ua

from benchmarks.common import write_result
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
NODES = ("EnergyTotal", "ActivePower", "State")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def url(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/edge-agent/sim"


@dataclass(frozen=True, slots=True)
class Phase:
    who: str  # "agent" | "bare"
    mode: str
    nodes: int
    interval_s: float
    values_per_s: float
    cpu_share: float  # of one core
    cpu_us_per_value: float


class Ticks:
    """(monotonic time, good values) of each tick, so a window counts whole ticks only."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []

    def note(self, good: int) -> None:
        self.seen.append((time.monotonic(), good))

    def rate(self, start: float, end: float) -> tuple[float, int]:
        """(values/s, values) over the ticks in [start, end]: the values of every tick after
        the first over the time from the first to the last, so a tick on either edge of the
        window neither counts twice nor goes missing."""
        inside = [(at, good) for at, good in self.seen if start <= at <= end]
        values = sum(good for _, good in inside)
        if len(inside) < 2:
            return 0.0, values
        return sum(good for _, good in inside[1:]) / (inside[-1][0] - inside[0][0]), values


async def measure(
    who: str,
    mode: str,
    nodes: int,
    interval: float,
    work: Awaitable[None],
    ticks: Ticks,
    settle_s: float,
    seconds: float,
) -> Phase:
    """Start ``work``, let it connect, then count good values and CPU over ``seconds``."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(settle_s)  # connect, resolve, subscribe
    if task.done():
        task.result()  # a failed start-up raises here
        raise RuntimeError(f"{who} {mode}: stopped before the measurement")
    cpu0, wall0 = cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = cpu_s(), time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    per_s, values = ticks.rate(wall0, wall1)
    cpu, wall = cpu1 - cpu0, wall1 - wall0
    return Phase(
        who=who, mode=mode, nodes=nodes, interval_s=interval, values_per_s=per_s,
        cpu_share=cpu / wall, cpu_us_per_value=cpu / values * 1e6 if values else 0.0,
    )  # fmt: skip


# -- the agent ----------------------------------------------------------------------------------


async def run_agent(
    port: int, mode: str, machines: int, interval: float, settle_s: float, seconds: float
) -> Phase:
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
                {"id": "sim", "url": url(port), "mode": mode, "interval_s": interval,
                 "timeout_s": 10}
            ],
        },
        Path("."),
    )  # fmt: skip
    (source,) = build_opcua_sources(config, SystemClock())
    ticks = Ticks()

    def sink(samples: Sequence[Sample]) -> None:
        ticks.note(sum(1 for s in samples if s.quality is Quality.GOOD))

    return await measure(
        "agent", mode, machines * 3, interval, source.run(sink), ticks, settle_s, seconds
    )


# -- the baseline: a bare asyncua client ---------------------------------------------------------


async def bare_client(port: int, mode: str, machines: int, interval: float, ticks: Ticks) -> None:
    """Every interval, each node's good value taken (value, source timestamp), as a consumer
    would hand them on."""
    client = Client(url(port), timeout=10)
    async with client:
        ns = await client.get_namespace_index(NAMESPACE)
        nodes = [
            client.get_node(f"ns={ns};s=machine-{i:03d}.{name}")
            for i in range(machines)
            for name in NODES
        ]
        held: dict[Any, ua.DataValue] = {}
        if mode == "subscribe":

            class Handler:
                def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                    held[node.nodeid] = data.monitored_item.Value

            subscription = await client.create_subscription(interval * 1000, Handler())
            await subscription.subscribe_data_change(nodes, sampling_interval=interval * 500)
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            if mode == "subscribe":
                values = [held.get(node.nodeid) for node in nodes]
            else:
                values = await client.read_attributes(nodes, ua.AttributeIds.Value)
            taken = [
                (index, value.Value.Value, value.SourceTimestamp)
                for index, value in enumerate(values)
                if value is not None and (value.StatusCode is None or value.StatusCode.is_good())
            ]
            ticks.note(len(taken))
            deadline += interval
            now = loop.time()
            if deadline <= now:  # late: skip missed ticks, as the agent does
                deadline += ((now - deadline) // interval + 1) * interval


async def run_bare(
    port: int, mode: str, machines: int, interval: float, settle_s: float, seconds: float
) -> Phase:
    ticks = Ticks()
    work = bare_client(port, mode, machines, interval, ticks)
    return await measure("bare", mode, machines * 3, interval, work, ticks, settle_s, seconds)


# -- the run ------------------------------------------------------------------------------------


def ratio(agent: float, bare: float) -> float:
    return agent / bare if bare else 0.0


def contract_rows(
    pairs: dict[tuple[str, float], list[tuple[Phase, Phase]]],
) -> list[dict[str, Any]]:
    """Per mode and interval, values/s and CPU per value: the round with the median ratio gives
    the figures (so agent / baseline is the ratio), the range over the rounds in the figure."""
    rows: list[dict[str, Any]] = []
    for (mode, interval), runs in pairs.items():
        nodes = f"{mode}, {runs[0][0].nodes} nodes @ {interval:g} s"
        for figure, unit, key in (
            ("good values/s", "values/s", "values_per_s"),
            ("CPU per value", "µs/value", "cpu_us_per_value"),
        ):
            ratios = [ratio(getattr(a, key), getattr(b, key)) for a, b in runs]
            agent, bare = runs[ratios.index(statistics.median_low(ratios))]
            spread = f", ratio {min(ratios):.2f}-{max(ratios):.2f} over {len(runs)} rounds"
            rows.append(
                {"figure": f"{figure}, {nodes}" + (spread if len(runs) > 1 else ""),
                 "agent": round(getattr(agent, key), 2), "baseline": round(getattr(bare, key), 2),
                 "unit": unit, "ratio": round(statistics.median_low(ratios), 3), "goal": "",
                 "met": None}
            )  # fmt: skip
    return rows


def print_phase(phase: Phase) -> None:
    print(
        f"{phase.mode:<9} {phase.who:<5} {phase.nodes:5d} nodes @ {phase.interval_s:g} s: "
        f"{phase.values_per_s:8.0f} good values/s (due {phase.nodes / phase.interval_s:6.0f}), "
        f"CPU {phase.cpu_share:6.1%} of one core, {phase.cpu_us_per_value:7.1f} µs/value",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--machines", type=int, default=167, help="3 nodes each")
    parser.add_argument(
        "--interval", type=float, action="append", help="seconds; repeat for several"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds, alternating order")
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    settle_s = 3.0
    if args.quick:
        args.machines, args.interval, args.seconds, settle_s = 20, [0.25], 1.5, 1.0
        args.rounds = 1
    intervals = args.interval or [1.0, 0.2]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(args.machines)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    phases: list[Phase] = []
    pairs: dict[tuple[str, float], list[tuple[Phase, Phase]]] = {}
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the OPC UA server did not start")
        runners = {"agent": run_agent, "bare": run_bare}
        for round_index in range(args.rounds):
            for index, (interval, mode) in enumerate(
                (interval, mode) for interval in intervals for mode in ("read", "subscribe")
            ):
                # Alternate which goes first, from one pair to the next and for each pair from
                # one round to the next, so neither always meets a warmer server.
                agent_first = (round_index + index) % 2 == 0
                order = ("agent", "bare") if agent_first else ("bare", "agent")
                got: dict[str, Phase] = {}
                for who in order:
                    got[who] = asyncio.run(
                        runners[who](port, mode, args.machines, interval, settle_s, args.seconds)
                    )
                    print_phase(got[who])
                    phases.append(got[who])
                agent, bare = got["agent"], got["bare"]
                pairs.setdefault((mode, interval), []).append((agent, bare))
                print(
                    f"{mode:<9} ratio agent / bare: values/s "
                    f"{ratio(agent.values_per_s, bare.values_per_s):.3f}, CPU per value "
                    f"{ratio(agent.cpu_us_per_value, bare.cpu_us_per_value):.3f}",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
    rows = contract_rows(pairs)
    write_result(
        args.json,
        benchmark="opcua",
        title="OPC UA source vs a bare asyncua client, same server process",
        rows=rows,
        details={
            "machines": args.machines, "nodes": args.machines * 3, "intervals_s": intervals,
            "seconds": args.seconds, "settle_s": settle_s, "rounds": args.rounds,
            "phases": [asdict(phase) for phase in phases],
        },
    )  # fmt: skip
    empty = [f"{p.who} {p.mode} @ {p.interval_s:g} s" for p in phases if p.values_per_s <= 0]
    if empty:
        print(f"FAILED: no good values from {empty}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
