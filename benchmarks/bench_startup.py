"""Start-up: from launching ``edge-agent run`` to its first Modbus request, at N meters.

The agent is started as the service starts it (a new ``edge-agent run --config FILE`` process,
SQLite store, local Mosquitto). Every meter's port is a listener in this process that notes when
the first bytes of a request arrive and never answers (a started poll is what is measured, not
the meter). Printed per meter count: time to the first request at any meter, time until every
meter has been asked once, and how long reading the configuration alone takes in a fresh
interpreter. The baseline, in the same run: a bare Python process that imports pymodbus and
sends one read to the same listener (interpreter start + import + connect: the floor any Python
agent pays).

    python benchmarks/bench_startup.py --meters 100 1000
    python benchmarks/bench_startup.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
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

from benchmarks.common import consecutive_free_ports, write_result  # noqa: E402
from simulators.broker import LocalMosquitto  # noqa: E402

GOAL_S = 1.0


class FirstRequests:
    """Listeners on consecutive ports that note when each one first receives bytes."""

    def __init__(self, base_port: int, count: int) -> None:
        self.base_port = base_port
        self.count = count
        self.first_ns: dict[int, int] = {}
        self._servers: list[asyncio.Server] = []
        self.first_seen = asyncio.Event()
        self.all_seen = asyncio.Event()

    async def __aenter__(self) -> FirstRequests:
        for port in range(self.base_port, self.base_port + self.count):
            self._servers.append(
                await asyncio.start_server(
                    lambda r, w, p=port: self._serve(p, r, w), "127.0.0.1", port, backlog=64
                )
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        for server in self._servers:
            server.close()

    def reset(self) -> None:
        self.first_ns.clear()
        self.first_seen.clear()
        self.all_seen.clear()

    async def _serve(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if await reader.read(260):
                self.first_ns.setdefault(port, time.time_ns())
                self.first_seen.set()
                if len(self.first_ns) == self.count:
                    self.all_seen.set()
            await reader.read()  # hold the connection open, silent, until the client goes
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the listeners are being closed
        finally:
            writer.close()


def write_config(folder: Path, meters: int, base_port: int, broker: LocalMosquitto) -> Path:
    config = {
        "site": {"id": "bench-startup"},
        "store": {"path": str(folder / "agent.db")},
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"startup-{meters}"},
        "meters": [
            {"id": f"m{i}", "protocol": "modbus_tcp", "host": "127.0.0.1",
             "port": base_port + i, "profile": "sdm630", "interval_s": 1.0, "timeout_s": 5.0}
            for i in range(meters)
        ],
    }  # fmt: skip
    path = folder / f"agent-{meters}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def time_process(
    command: list[str], listeners: FirstRequests, wait_all: bool, timeout_s: float = 60.0
) -> tuple[float, float | None]:
    """Seconds from launch to the first request, and to every listener asked (or None)."""
    listeners.reset()
    launched = time.time_ns()
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(listeners.first_seen.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError(f"no request within {timeout_s:g} s from {command}") from None
        first = (min(listeners.first_ns.values()) - launched) / 1e9
        every: float | None = None
        if wait_all:
            await asyncio.wait_for(listeners.all_seen.wait(), deadline - time.monotonic())
            every = (max(listeners.first_ns.values()) - launched) / 1e9
        return first, every
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


def config_read_s(path: Path) -> float:
    """Reading and validating the configuration alone, in a fresh interpreter (import excluded)."""
    code = (
        "import time, pathlib; from edge_agent.config import load_config; "
        "t = time.perf_counter(); load_config(pathlib.Path(__import__('sys').argv[1])); "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


BARE_READ = """
import asyncio, sys
from pymodbus.client import AsyncModbusTcpClient
async def main():
    client = AsyncModbusTcpClient("127.0.0.1", port=int(sys.argv[1]), timeout=0.2, retries=0)
    await client.connect()
    try:
        await client.read_input_registers(72, count=2, device_id=1)
    except Exception:
        pass
asyncio.run(main())
"""


def compile_bytecode() -> None:
    """An installed wheel has its bytecode compiled (pip does it); a checkout run with
    PYTHONDONTWRITEBYTECODE set would compile every module at each start and measure that."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "edge_agent"], cwd=ROOT, check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


async def measure(meters: int, rounds: int) -> dict[str, Any]:
    # Away from the meter farm's range (15000+): another benchmark may be choosing ports there
    # at the same moment (the smoke runs of the test suite run side by side).
    base = consecutive_free_ports(meters, start=24000)
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_config(folder, meters, base, broker)
        agent_cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)]
        bare_cmd = [sys.executable, "-c", BARE_READ, str(base)]
        agent_first: list[float] = []
        agent_every: list[float] = []
        bare_first: list[float] = []
        async with FirstRequests(base, meters) as listeners:
            for _ in range(rounds):  # alternate, so a busy moment hits both alike
                first, every = await time_process(agent_cmd, listeners, wait_all=True)
                agent_first.append(first)
                assert every is not None
                agent_every.append(every)
                (config.parent / "agent.db").unlink(missing_ok=True)
                first, _ = await time_process(bare_cmd, listeners, wait_all=False)
                bare_first.append(first)
        reading = [config_read_s(config) for _ in range(rounds)]
    return {
        "meters": meters,
        "rounds": rounds,
        "agent_first_poll_s": agent_first,
        "agent_all_polled_s": agent_every,
        "bare_first_read_s": bare_first,
        "config_read_s": reading,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meters", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 meters, one round")
    parser.add_argument("--json", type=Path, help="write the figures here (benchmarks/run_all.py)")
    args = parser.parse_args()
    if args.quick:
        args.meters, args.rounds = [50], 1
    compile_bytecode()
    rows: list[dict[str, Any]] = []
    runs = []
    print("meters  first poll s (median)  all polled s  config read s  bare pymodbus first read s")
    for count in args.meters:
        result = asyncio.run(measure(count, args.rounds))
        runs.append(result)
        first = statistics.median(result["agent_first_poll_s"])
        every = statistics.median(result["agent_all_polled_s"])
        bare = statistics.median(result["bare_first_read_s"])
        reading = statistics.median(result["config_read_s"])
        print(
            f"{count:6d}  {first:21.3f}  {every:12.3f}  {reading:13.3f}  {bare:26.3f}", flush=True
        )
        rows.append({
            "figure": f"start-up to first poll, {count:,} meters (median of {args.rounds})",
            "agent": round(first, 3), "baseline": round(bare, 3), "unit": "s",
            "ratio": round(first / bare, 2), "goal": f"< {GOAL_S:g} s", "met": first < GOAL_S,
        })  # fmt: skip
        rows.append({
            "figure": f"start-up until every one of {count:,} meters was asked once",
            "agent": round(every, 3), "baseline": None, "unit": "s",
            "ratio": None, "goal": "", "met": None,
        })  # fmt: skip
    write_result(
        args.json,
        benchmark="startup",
        title="Start-up to first poll",
        rows=rows,
        details={"runs": runs, "baseline": "bare python + import pymodbus + one read"},
    )
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
