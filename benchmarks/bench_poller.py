"""CPU per Modbus meter read: the agent daemon against a bare pymodbus loop, same run, same server.

The meters are the fast raw-asyncio farm of ``benchmarks/meter_server.py`` (worker processes,
never the limit). Two subprocesses take turns against it, so each one's CPU
(``/proc/<pid>/stat`` utime + stime, every thread) and RSS are its own:

- the agent: ``edge-agent run`` with N SDM630 meters at ``interval_s: 1`` (store, pollers,
  batcher, monitor, MQTT to a local Mosquitto), as the daemon really runs;
- the baseline: one pymodbus ``AsyncModbusTcpClient`` per meter reading the same 4 blocks (18
  registers) every second, deadline-scheduled, nothing else.

Reads are counted by the server (requests / 4), not taken from either client. Poll lateness is
how late each poll's first request reached the server against that meter's own 1 s grid.
Prints, per meter count: CPU µs per read for both and their ratio (goal ≤ 1.3), reads/s achieved
vs due, lateness p99, RSS.

    python benchmarks/bench_poller.py                       # 100, 300, 1,000 meters
    python benchmarks/bench_poller.py --quick --json poller.json
    python benchmarks/bench_poller.py --pin-core            # Pi-sized: agent alone on core 0
    python benchmarks/bench_poller.py --soak 3600           # memory soak at 1,000 meters
    python benchmarks/bench_poller.py --meters 300 --profile prof.svg   # py-spy the agent
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.meter_server import MeterFarm, poll_lateness_s  # noqa: E402

# The SDM630 profile's 4 requests (edge_agent.sources.modbus.plan merges its 7 points so).
BLOCKS = ((0, 8), (52, 2), (70, 6), (342, 2))
REQUESTS_PER_READ = len(BLOCKS)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
GOAL_RATIO = 1.3


# -- measuring a process -------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (the process line of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE_KB / 1024


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- the two clients -----------------------------------------------------------------------------


async def baseline_loop(base_port: int, meters: int, seconds: float) -> None:
    """The bare library: one client per meter, the same 4 blocks every second."""
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=base_port + i, timeout=1, retries=0)
        for i in range(meters)
    ]
    for client in clients:
        await client.connect()
    latencies: list[float] = []

    async def poll(client: AsyncModbusTcpClient) -> None:
        deadline = time.monotonic()
        while True:
            started = time.monotonic()
            for start, count in BLOCKS:
                await client.read_input_registers(start, count=count, device_id=1)
            latencies.append(time.monotonic() - started)
            del latencies[:-10_000]
            deadline += 1.0
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    tasks = [asyncio.create_task(poll(client)) for client in clients]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        client.close()
    print(json.dumps({"latency_p50_ms": statistics.median(latencies) * 1000,
                      "latency_p99_ms": percentile(latencies, 0.99) * 1000}), flush=True)  # fmt: skip


def agent_config_yaml(base_port: int, meters: int, broker_port: int, folder: Path) -> str:
    lines = ["site: {id: bench}", "meters:"]
    lines += [
        f"  - {{id: m{i}, protocol: modbus_tcp, host: 127.0.0.1, port: {base_port + i}, "
        "profile: sdm630, interval_s: 1, timeout_s: 1}"
        for i in range(meters)
    ]
    lines.append("equipment:")
    lines += [f"  - {{id: e{i}, meters: [m{i}], max_power_kw: 50}}" for i in range(meters)]
    lines += [
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}, topic_prefix: bench, client_id: bench-poller}}",
        f"store: {{path: {json.dumps(str(folder / 'agent.db'))}}}",
        "emission_factors:",
        "  electricity: {value: 0.45, unit: kgCO2e/kWh, source: bench, version: '1'}",
    ]
    return "\n".join(lines) + "\n"


def agent_command(config_path: Path) -> list[str]:
    return [sys.executable, "-c", "from edge_agent.cli import main; raise SystemExit(main())",
            "--log-level", "warning", "run", "-c", str(config_path)]  # fmt: skip


def baseline_command(base_port: int, meters: int, seconds: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--baseline-client",
            "--base-port", str(base_port), "--meters", str(meters), "--seconds", str(seconds)]  # fmt: skip


def pinned(command: list[str], cpu_list: str | None) -> list[str]:
    return command if cpu_list is None else ["taskset", "-c", cpu_list, *command]


def start_profiler(path: Path, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy on the agent for the measuring window (a sampling profiler: the agent runs on;
    ``.svg`` a flame graph, ``.json`` speedscope, anything else collapsed stacks)."""
    formats = {".svg": "flamegraph", ".json": "speedscope"}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", "200", "--format", formats.get(path.suffix, "raw"), "--output", str(path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


# -- one phase: one client against the farm ------------------------------------------------------


@dataclass
class Phase:
    who: str  # agent | baseline
    meters: int
    window_s: float
    cpu_s: float = 0.0
    reads: int = 0
    lateness_s: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    client_latency: dict[str, float] = field(default_factory=dict)
    exited: int | None = None  # the client's exit status when it stopped inside the window

    @property
    def us_per_read(self) -> float:
        return self.cpu_s / max(self.reads, 1) * 1e6

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.window_s

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.window_s

    def summary(self) -> dict[str, Any]:
        return {
            "who": self.who, "meters": self.meters, "window_s": self.window_s,
            "cpu_s": self.cpu_s, "reads": self.reads, "us_per_read": self.us_per_read,
            "reads_per_s": self.reads_per_s, "due_per_s": float(self.meters),
            "cpu_share_of_one_core": self.cpu_share, "rss_mb": self.rss_mb,
            "lateness_p50_ms": percentile(self.lateness_s, 0.5) * 1000,
            "lateness_p99_ms": percentile(self.lateness_s, 0.99) * 1000,
            "exited_in_window": self.exited,
            **{f"client_{k}": v for k, v in self.client_latency.items()},
        }  # fmt: skip


def wait_for_polling(
    farm: MeterFarm, meters: int, timeout_s: float, process: subprocess.Popen[str]
) -> bool:
    """Until the server sees every meter polled (≥ 95 % of the due requests over one second);
    False when that never happened within ``timeout_s`` (an overloaded machine: measure anyway,
    the reads/s figure shows it)."""
    deadline = time.monotonic() + timeout_s
    farm.reset()
    last = farm.stats()["requests"]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"client exited early with {process.returncode}")
        time.sleep(1.0)
        now = farm.stats()["requests"]
        if now - last >= 0.95 * meters * REQUESTS_PER_READ:
            return True
        last = now
    print(
        f"    ({meters} meters: polling never reached 95 % of its rate; measuring anyway)",
        flush=True,
    )
    return False


def run_phase(
    who: str,
    command: list[str],
    farm: MeterFarm,
    meters: int,
    window_s: float,
    settle_s: float,
    *,
    rss_every_s: float | None = None,
    rss_samples: list[tuple[float, float]] | None = None,
    database: Path | None = None,
    db_samples: list[tuple[float, float]] | None = None,
    profile: Path | None = None,
) -> Phase:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for_polling(farm, meters, 15.0 + meters / 50, process)
        time.sleep(settle_s)
        farm.reset()
        cpu0, wall0 = cpu_s(process.pid), time.monotonic()
        profiler = None if profile is None else start_profiler(profile, process.pid, window_s)
        if rss_every_s is not None and rss_samples is not None:
            while time.monotonic() - wall0 < window_s:
                rss_samples.append((time.monotonic() - wall0, rss_mb(process.pid)))
                line = f"    soak t={rss_samples[-1][0]:6.0f} s  RSS {rss_samples[-1][1]:.1f} MB"
                if database is not None and db_samples is not None:
                    # The store's size shows when the disk budget starts pruning samples.
                    size_mb = database.stat().st_size / 1e6 if database.exists() else 0.0
                    db_samples.append((rss_samples[-1][0], size_mb))
                    line += f"  database {db_samples[-1][1]:.0f} MB"
                print(line, flush=True)
                time.sleep(min(rss_every_s, max(0.0, window_s - (time.monotonic() - wall0))))
            rss_samples.append((time.monotonic() - wall0, rss_mb(process.pid)))
        else:
            time.sleep(window_s)
        exited = process.poll()
        cpu1, wall1 = (cpu_s(process.pid) if exited is None else cpu0), time.monotonic()
        if profiler is not None:
            profiler.wait(timeout=60)
        stats = farm.stats()
        phase = Phase(
            who, meters, wall1 - wall0, cpu1 - cpu0, stats["requests"] // REQUESTS_PER_READ
        )
        phase.lateness_s = poll_lateness_s(stats["poll_starts"], 1.0)
        phase.exited = exited
        if exited is None:
            phase.rss_mb = rss_mb(process.pid)
        else:
            print(
                f"    {who} exited ({exited}) inside the window: this run does not count",
                flush=True,
            )
    finally:
        process.terminate()
        try:
            out, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
    for line in (out or "").splitlines():
        if line.startswith("{"):
            phase.client_latency = json.loads(line)
    return phase


# -- the runs ------------------------------------------------------------------------------------


def compare(
    meters: int, window_s: float, settle_s: float, repeats: int, broker_port: int, folder: Path,
    *, agent_cpus: str | None = None, other_cpus: str | None = None, profile: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    config_path = folder / f"agent-{meters}.yaml"
    runs: list[tuple[Phase, Phase]] = []
    with MeterFarm(meters, cpu_list=other_cpus) as farm:
        config_path.write_text(agent_config_yaml(farm.base_port, meters, broker_port, folder))
        life = window_s + settle_s + 60.0 + meters / 20
        for repeat in range(repeats):
            (folder / "agent.db").unlink(missing_ok=True)
            agent_first = repeat % 2 == 0  # alternate A/B
            phases: dict[str, Phase] = {}
            for who in ("agent", "baseline") if agent_first else ("baseline", "agent"):
                command = (
                    pinned(agent_command(config_path), agent_cpus)
                    if who == "agent"
                    else pinned(baseline_command(farm.base_port, meters, life), other_cpus)
                )
                profiling = profile if who == "agent" and repeat == 0 else None
                phases[who] = run_phase(
                    who, command, farm, meters, window_s, settle_s, profile=profiling
                )
            runs.append((phases["agent"], phases["baseline"]))
            agent, base = runs[-1]
            print(
                f"{meters:6d}  {agent.us_per_read:8.1f}  {base.us_per_read:8.1f}"
                f"  {agent.us_per_read / base.us_per_read:5.2f}  {agent.reads_per_s:8.1f}"
                f"  {meters:5d}  {agent.cpu_share:6.1%}  {percentile(agent.lateness_s, 0.99) * 1000:8.1f}"
                f"  {percentile(base.lateness_s, 0.99) * 1000:8.1f}  {agent.rss_mb:6.1f}  {base.rss_mb:6.1f}",
                flush=True,
            )  # fmt: skip
    counted = [(a, b) for a, b in runs if a.exited is None and b.exited is None] or runs
    ratios = [a.us_per_read / b.us_per_read for a, b in counted]
    return {
        "meters": meters,
        "agent_us_per_read": statistics.median(a.us_per_read for a, _ in counted),
        "baseline_us_per_read": statistics.median(b.us_per_read for _, b in counted),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "runs": [{"agent": a.summary(), "baseline": b.summary()} for a, b in runs],
    }


def soak(
    seconds: float, every_s: float, meters: int, broker_port: int, folder: Path
) -> dict[str, Any]:
    config_path = folder / "agent-soak.yaml"
    samples: list[tuple[float, float]] = []
    db_sizes: list[tuple[float, float]] = []
    # The farm outlives the soak (its default life is an hour: the hour-long soak's last
    # statistics found it gone).
    with MeterFarm(meters, duration_s=seconds + 600.0) as farm:
        config_path.write_text(agent_config_yaml(farm.base_port, meters, broker_port, folder))
        phase = run_phase("agent", agent_command(config_path), farm, meters, seconds, 2.0,
                          rss_every_s=every_s, rss_samples=samples,
                          database=folder / "agent.db", db_samples=db_sizes)  # fmt: skip
    # At 1,000 meters RSS climbed for the first 6-8 minutes and then stayed flat (two runs on
    # the shared 2-core machine): the warm-up must cover that climb to measure growth.
    warm_up_s = min(600.0, seconds / 4)
    after = [rss for t, rss in samples if t >= warm_up_s] or [samples[-1][1]]
    growth = (after[-1] - after[0]) / after[0]
    second_half = [rss for t, rss in samples if t >= seconds / 2] or [samples[-1][1]]
    return {"meters": meters, "seconds": seconds, "sample_every_s": every_s,
            "warm_up_s": warm_up_s, "rss_samples_mb": samples, "database_mb": db_sizes,
            "growth": growth,
            "growth_second_half": (second_half[-1] - second_half[0]) / second_half[0],
            "agent": phase.summary()}  # fmt: skip


def row(
    figure: str, agent: float, baseline: float | None, unit: str, goal: str, met: bool | None
) -> dict[str, Any]:
    ratio = agent / baseline if baseline else None
    return {"figure": figure, "agent": round(agent, 2),
            "baseline": None if baseline is None else round(baseline, 2), "unit": unit,
            "ratio": None if ratio is None else round(ratio, 3), "goal": goal, "met": met}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, nargs="+", default=None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per phase")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after polling is up")
    parser.add_argument("--repeat", type=int, default=1, help="A/B pairs per meter count")
    parser.add_argument("--quick", action="store_true", help="50 meters, a few seconds (CI)")
    parser.add_argument("--pin-core", action="store_true", help="Pi-sized run: agent on core 0")
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--soak-every", type=float, default=30.0, help="RSS sample period (s)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="PATH",
        help="py-spy the agent's first measuring window (.svg, .json speedscope, else raw)",
    )  # fmt: skip
    parser.add_argument("--baseline-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_client:
        asyncio.run(baseline_loop(args.base_port, args.meters[0], args.seconds))
        return 0

    from simulators.broker import LocalMosquitto  # noqa: PLC0415

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # a runner's SIGTERM: stop the agent, farm and broker too

    signal.signal(signal.SIGTERM, interrupted)

    command = shlex.join(
        ["python", "benchmarks/bench_poller.py", *(argv if argv is not None else sys.argv[1:])]
    )
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"cores": os.cpu_count()}
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if args.soak is not None:
            meters = (args.meters or [50 if args.quick else 1000])[0]
            every = min(args.soak_every, max(1.0, args.soak / 10))
            print(f"memory soak: {meters} meters, {args.soak:.0f} s, RSS every {every:.0f} s")
            result = soak(args.soak, every, meters, broker.port, folder)
            print(f"RSS growth after warm-up: {result['growth']:+.2%} (goal ≤ 5 %)")
            rows.append(row(f"RSS growth over {args.soak:.0f} s at {meters} meters", result["growth"] * 100,
                            None, "%", "≤ 5", result["growth"] <= 0.05))  # fmt: skip
            details["soak"] = result
        else:
            agent_cpus: str | None = None
            other_cpus: str | None = None
            if args.pin_core:
                counts = args.meters or [50 if args.quick else 300]
                agent_cpus, other_cpus = "0", "1"
            else:
                counts = args.meters or ([50] if args.quick else [100, 300, 1000])
            window = 4.0 if args.quick else args.seconds
            settle = 1.0 if args.quick else args.settle
            print(
                "meters  agent µs  base µs  ratio  reads/s    due  agentCPU  late99ms  base99ms  aRSSMB  bRSSMB"
            )
            for count in counts:
                profile = None
                if args.profile is not None:
                    profile = args.profile.with_name(
                        f"{args.profile.stem}-{count}{args.profile.suffix}"
                    )
                result = compare(count, window, settle, args.repeat, broker.port, folder,
                                 agent_cpus=agent_cpus, other_cpus=other_cpus, profile=profile)  # fmt: skip
                details[f"meters_{count}"] = result
                ratio = result["ratio"]
                rows.append(row(f"CPU per Modbus read, {count} meters at 1 s", result["agent_us_per_read"],
                                result["baseline_us_per_read"], "µs", f"≤ {GOAL_RATIO}", ratio <= GOAL_RATIO))  # fmt: skip
                agent_run = result["runs"][-1]["agent"]
                rows.append(row(f"reads/s achieved, {count} meters (due {count})", agent_run["reads_per_s"],
                                None, "reads/s", f"≥ {0.99 * count:g}", agent_run["reads_per_s"] >= 0.99 * count))  # fmt: skip
                rows.append(row(f"poll lateness p99, {count} meters", agent_run["lateness_p99_ms"],
                                result["runs"][-1]["baseline"]["lateness_p99_ms"], "ms", "", None))  # fmt: skip
                if args.pin_core:
                    rows.append(row(f"Pi-sized: agent CPU on one core, {count} meters", agent_run["cpu_share_of_one_core"] * 100,
                                    None, "% of one core", "", None))  # fmt: skip
                    rows.append(row(f"Pi-sized: agent RSS, {count} meters", agent_run["rss_mb"], None, "MB", "", None))  # fmt: skip
    details["pinned"] = args.pin_core
    title = ("Modbus polling: memory soak" if args.soak is not None
             else "Modbus polling, Pi-sized (agent pinned to one core)" if args.pin_core
             else "Modbus polling: agent daemon vs bare pymodbus loop")  # fmt: skip
    report = {"benchmark": "poller" if args.soak is None and not args.pin_core
              else "poller_soak" if args.soak is not None else "poller_pinned",
              "title": title, "command": command, "rows": rows, "details": details}  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
