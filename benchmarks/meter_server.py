"""A fast Modbus TCP meter farm for benchmarks: raw asyncio, no pymodbus on the serving path.

N simulated Eastron SDM630 meters on N consecutive loopback ports, spread over K worker
processes, so the server is never what a benchmark measures (the project's pymodbus simulator is
the limit from ~300 meters). Each meter serves the register map of
``edge_agent/profiles/sdm630.yaml`` (float32, high word first, big-endian bytes) with values that
move: a load whose power swings around a per-meter base, an import counter that is the exact
integral of that power (so energy and power agree), a noisy voltage and frequency, and a current
that follows the power.

Protocol: MBAP framing; functions 3 (holding) and 4 (input) serve the same register image
(addresses 0 .. last mapped register; gaps read 0, as on the project's simulator); a request
reaching beyond it gets exception 2, a count outside 1..125 exception 3, any other function
exception 1. Every unit id is answered.

Prints ``READY <base_port> <count>`` once every port listens. Control channel on stdin, one
command per line, one JSON line answered on stdout: ``stats`` (requests served, per worker and in
total, worker pids, and the instants at which each meter's polls began since the last ``reset``),
``reset`` (zero the counters, start recording poll starts), ``quit``. At exit (``--duration``
elapsed, ``quit`` or SIGTERM) it prints ``SERVED <requests>`` and the last stats line.

    python benchmarks/meter_server.py --meters 1000 --duration 60
    python benchmarks/meter_server.py --meters 1000 --probe 15   # its latency under 4,000 req/s
    mbpoll -m tcp -a 1 -r 73 -c 2 -t 3:float -B -p 15000 -1 127.0.0.1

Other benchmarks use :class:`MeterFarm` (a context manager around this script as a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

PROFILE_PATH = Path(__file__).resolve().parents[1] / "edge_agent" / "profiles" / "sdm630.yaml"
MAX_REGISTERS_PER_READ = 125
METERS_PER_PROCESS = 500
# Requests on one connection further apart than this start a new poll (a poll's 4 requests
# follow each other within milliseconds; polls are a second apart).
POLL_GAP_S = 0.3
# Values are recomputed at most this often per meter (a poll's requests see one instant).
REFRESH_S = 0.05
_NOMINAL_V = 230.0
_POWER_FACTOR = 0.95

_HEADER = struct.Struct(">HHHBBB")  # transaction, protocol, length, unit, function, byte count
_EXCEPTION = struct.Struct(">HHHBBB")  # transaction, protocol, length=3, unit, function|0x80, code
_REQUEST = struct.Struct(">HHHBBHH")  # transaction, protocol, length, unit, function, start, count
_FLOAT = struct.Struct(">f")


@dataclass(frozen=True, slots=True)
class MappedPoint:
    name: str
    address: int
    unit: str
    role: str


def load_register_map(path: Path = PROFILE_PATH) -> list[MappedPoint]:
    """The profile's float32 points (the SDM630 has no other type)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    defaults = data.get("defaults") or {}
    points = []
    for name, spec in data["points"].items():
        merged = {**defaults, **spec}
        if merged.get("type", "float32") != "float32" or merged.get("word_order") != "big":
            raise ValueError(f"{path.name}: point {name} is not a big-endian float32")
        points.append(
            MappedPoint(name, int(merged["address"]), str(merged["unit"]), merged["role"])
        )
    return points


class SimulatedMeter:
    """One meter's register image, refreshed from its load model when a request arrives."""

    __slots__ = (
        "_base_w",
        "_energy0_kwh",
        "_omega",
        "_phase",
        "_points",
        "_rng",
        "_start",
        "image",
        "last_request",
        "next_refresh",
        "poll_starts",
        "requests",
    )  # fmt: skip

    def __init__(self, index: int, points: Sequence[MappedPoint], start: float) -> None:
        self._rng = random.Random(index)
        self._points = points
        self._start = start
        self._base_w = self._rng.uniform(2_000.0, 20_000.0)
        self._omega = 2 * math.pi / self._rng.uniform(30.0, 300.0)
        self._phase = self._rng.uniform(0.0, 2 * math.pi)
        self._energy0_kwh = self._rng.uniform(100.0, 50_000.0)
        end = max(p.address for p in points) + 2
        self.image = bytearray(2 * end)
        self.next_refresh = 0.0
        self.last_request = -math.inf
        self.poll_starts: list[float] | None = None  # recording only after a reset
        self.requests = 0

    @property
    def registers(self) -> int:
        return len(self.image) // 2

    def power_w(self, t: float) -> float:
        return self._base_w * (1.0 + 0.25 * math.sin(self._omega * t + self._phase))

    def energy_kwh(self, t: float) -> float:
        """The integral of :meth:`power_w` from the server's start (plus the initial reading)."""
        swing = (math.cos(self._phase) - math.cos(self._omega * t + self._phase)) / self._omega
        return self._energy0_kwh + self._base_w * (t + 0.25 * swing) / 3_600_000.0

    def refresh(self, now: float) -> None:
        t = now - self._start
        power = self.power_w(t)
        energy = self.energy_kwh(t)
        volts = _NOMINAL_V + self._rng.uniform(-1.5, 1.5)
        for point in self._points:
            if point.unit == "W":
                value = power
            elif point.unit == "kWh":
                value = 0.0 if "export" in point.name else energy
            elif point.unit == "V":
                value = volts
            elif point.unit == "A":
                value = power / (3 * volts * _POWER_FACTOR)
            elif point.unit == "Hz":
                value = 50.0 + self._rng.uniform(-0.02, 0.02)
            else:
                value = 0.0
            _FLOAT.pack_into(self.image, 2 * point.address, value)
        self.next_refresh = now + REFRESH_S


class MeterProtocol(asyncio.Protocol):
    __slots__ = ("_buffer", "_meter", "_transport")

    def __init__(self, meter: SimulatedMeter) -> None:
        self._meter = meter
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset = 0
        size = len(buffer)
        replies = []
        while size - offset >= 8:
            length = (buffer[offset + 4] << 8) | buffer[offset + 5]
            end = offset + 6 + length
            if length < 2 or length > 254:  # not a Modbus frame: drop the connection
                assert self._transport is not None
                self._transport.close()
                return
            if end > size:
                break
            replies.append(self._answer(buffer, offset, length))
            offset = end
        self._buffer = buffer[offset:] if offset < size else b""
        if replies and self._transport is not None:
            self._transport.write(replies[0] if len(replies) == 1 else b"".join(replies))

    def _answer(self, frame: bytes, offset: int, length: int) -> bytes:
        meter = self._meter
        now = time.monotonic()
        meter.requests += 1
        if meter.poll_starts is not None and now - meter.last_request > POLL_GAP_S:
            meter.poll_starts.append(now)
        meter.last_request = now
        transaction = (frame[offset] << 8) | frame[offset + 1]
        unit = frame[offset + 6]
        function = frame[offset + 7]
        if function not in (3, 4):
            return _EXCEPTION.pack(transaction, 0, 3, unit, function | 0x80, 1)
        if length != 6:
            return _EXCEPTION.pack(transaction, 0, 3, unit, function | 0x80, 3)
        _, _, _, _, _, start, count = _REQUEST.unpack_from(frame, offset)
        if not 1 <= count <= MAX_REGISTERS_PER_READ:
            return _EXCEPTION.pack(transaction, 0, 3, unit, function | 0x80, 3)
        if start + count > meter.registers:
            return _EXCEPTION.pack(transaction, 0, 3, unit, function | 0x80, 2)
        if now >= meter.next_refresh:
            meter.refresh(now)
        nbytes = 2 * count
        return _HEADER.pack(transaction, 0, 3 + nbytes, unit, function, nbytes) + bytes(
            meter.image[2 * start : 2 * start + nbytes]
        )


# -- worker processes ------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker(
    ports: Sequence[int],
    first_index: int,
    start: float,
    control: multiprocessing.connection.Connection,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _raise_fd_limit()
    points = load_register_map()
    meters = [SimulatedMeter(first_index + i, points, start) for i in range(len(ports))]

    def factory(meter: SimulatedMeter) -> Callable[[], MeterProtocol]:
        return lambda: MeterProtocol(meter)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for port, meter in zip(ports, meters, strict=True):
            servers.append(await loop.create_server(factory(meter), "127.0.0.1", port, backlog=64))
        control.send(("ready", os.getpid()))
        stop = asyncio.Event()

        def on_command() -> None:
            try:
                command = control.recv()
            except EOFError:
                stop.set()
                return
            if command == "reset":
                for meter in meters:
                    meter.requests = 0
                    meter.poll_starts = []
                control.send(("ok",))
            elif command == "stats":
                control.send(
                    (
                        "stats",
                        sum(m.requests for m in meters),
                        [m.poll_starts or [] for m in meters],
                    )
                )
            else:  # quit
                stop.set()

        loop.add_reader(control.fileno(), on_command)
        await stop.wait()
        for server in servers:
            server.close()

    asyncio.run(serve())


@dataclass
class _Farm:
    base_port: int
    count: int
    processes: int
    workers: list[multiprocessing.process.BaseProcess] = field(default_factory=list)
    pipes: list[multiprocessing.connection.Connection] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        context = multiprocessing.get_context("fork")
        start = time.monotonic()
        per = math.ceil(self.count / self.processes)
        for first in range(0, self.count, per):
            ports = list(
                range(self.base_port + first, self.base_port + min(first + per, self.count))
            )
            parent_end, child_end = context.Pipe()
            worker = context.Process(
                target=_worker, args=(ports, first, start, child_end), daemon=True
            )
            worker.start()
            child_end.close()
            self.workers.append(worker)
            self.pipes.append(parent_end)
        for pipe in self.pipes:
            message = pipe.recv()
            self.pids.append(int(message[1]))

    def command(self, command: str) -> dict[str, Any]:
        for pipe in self.pipes:
            pipe.send(command)
        answers = [pipe.recv() for pipe in self.pipes]
        if command == "reset":
            return {"ok": True}
        per_worker = [int(answer[1]) for answer in answers]
        return {
            "requests": sum(per_worker),
            "requests_per_worker": per_worker,
            "pids": self.pids,
            "poll_starts": [starts for answer in answers for starts in answer[2]],
        }

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("quit")
        for worker in self.workers:
            worker.join(5)
            if worker.is_alive():
                worker.terminate()


def consecutive_free_ports(count: int, start: int = 15000) -> int:
    """A run of free ports below the kernel's ephemeral range (32768+), so none is taken."""
    base = start
    while base + count < 32000:
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    base = port + 1
                    break
        else:
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def default_processes(meters: int) -> int:
    return max(1, min(os.cpu_count() or 1, math.ceil(meters / METERS_PER_PROCESS)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100)
    parser.add_argument("--base-port", type=int, default=0, help="0: find free ports")
    parser.add_argument("--processes", type=int, default=0, help="0: one per 500 meters, ≤ cores")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds, then exit")
    parser.add_argument(
        "--probe", type=float, default=None, metavar="SECONDS",
        help="start the farm, read it with a lean client for SECONDS, print the latency, exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.probe is not None:
        print(json.dumps(probe(args.meters, args.processes, args.probe)), flush=True)
        return 0
    _raise_fd_limit()
    base = args.base_port or consecutive_free_ports(args.meters)
    processes = args.processes or default_processes(args.meters)
    farm = _Farm(base, args.meters, min(processes, args.meters))
    stopping = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    farm.start()
    print(f"READY {base} {args.meters}", flush=True)
    deadline = time.monotonic() + args.duration
    stdin_open = True
    last: dict[str, Any] = {}
    try:
        while not stopping and time.monotonic() < deadline:
            if not stdin_open:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            ready, _, _ = select.select([sys.stdin], [], [], 0.2)
            if not ready:
                continue
            line = sys.stdin.readline()
            if not line:
                stdin_open = False  # no control channel: serve until the duration ends
                continue
            command = line.strip()
            if command == "quit":
                break
            if command in ("stats", "reset"):
                last = farm.command(command)
                print(json.dumps(last), flush=True)
    except KeyboardInterrupt:
        pass
    final = farm.command("stats")
    farm.stop()
    print(f"SERVED {final['requests']}", flush=True)
    return 0


# -- checking the farm from a lean client ---------------------------------------------------------

PROBE_BLOCKS = ((0, 8), (52, 2), (70, 6), (342, 2))  # the agent's 4 SDM630 requests


async def probe_latency(base_port: int, meters: int, seconds: float) -> dict[str, float]:
    """Read every meter's 4 blocks once a second (polls spread over the second, requests of a
    poll back to back) with a raw asyncio client, and time each request to its reply: the
    farm's own latency, without a Modbus library's cost on the client side."""
    latencies: list[float] = []
    errors = 0
    # The first seconds open every connection (and the load's): not what is being measured.
    timed_from = time.perf_counter() + min(2.0, seconds / 5)

    async def poll(index: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", base_port + index)
        loop = asyncio.get_running_loop()
        next_at = loop.time() + index / meters
        end = loop.time() + seconds
        transaction = 0
        try:
            while next_at < end:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                for start, count in PROBE_BLOCKS:
                    transaction = (transaction + 1) & 0xFFFF
                    sent = time.perf_counter()
                    writer.write(_REQUEST.pack(transaction, 0, 6, 1, 4, start, count))
                    header = await reader.readexactly(9)
                    await reader.readexactly(header[8] if header[7] == 4 else 0)
                    if sent >= timed_from:
                        latencies.append(time.perf_counter() - sent)
                    errors += header[7] != 4
                next_at += 1.0
        finally:
            writer.close()

    await asyncio.gather(*(poll(i) for i in range(meters)))
    ordered = sorted(latencies)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    return {"requests": len(ordered), "errors": errors,
            "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000}  # fmt: skip


LATENCY_METERS = 10  # timed by a client of their own, so its loop's queueing stays out


def _load(base_port: int, meters: int, seconds: float) -> None:
    asyncio.run(probe_latency(base_port, meters, seconds))


def probe(meters: int, processes: int, seconds: float) -> dict[str, Any]:
    """The farm under the agent's load (4 requests per meter per second, from another
    process), its latency timed on a few meters by a lightly loaded client."""
    timed = min(LATENCY_METERS, meters)
    with MeterFarm(meters, processes) as farm:
        farm.reset()
        load = None
        if meters > timed:
            load = multiprocessing.get_context("fork").Process(
                target=_load, args=(farm.base_port + timed, meters - timed, seconds)
            )
            load.start()
        result = asyncio.run(probe_latency(farm.base_port, timed, seconds))
        if load is not None:
            load.join(seconds + 60)
        served = farm.stats()["requests"]
    return {**result, "meters": meters, "timed_meters": timed, "served_by_farm": served,
            "served_per_s": served / seconds}  # fmt: skip


# -- the helper other benchmarks use ------------------------------------------------------------


class MeterFarm:
    """``with MeterFarm(1000) as farm:`` — the server as a subprocess; ``farm.base_port``,
    ``farm.stats()`` (requests served, worker pids, poll starts since ``reset()``)."""

    def __init__(
        self,
        meters: int,
        processes: int = 0,
        duration_s: float = 3600.0,
        cpu_list: str | None = None,
    ) -> None:
        self.meters = meters
        self.processes = processes
        self.duration_s = duration_s
        self.cpu_list = cpu_list  # taskset -c LIST, e.g. "1" for the pinned run
        self.base_port = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> MeterFarm:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--meters", str(self.meters),
            "--processes", str(self.processes), "--duration", str(self.duration_s),
        ]  # fmt: skip
        if self.cpu_list is not None:
            command = ["taskset", "-c", self.cpu_list, *command]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("READY"):
            self._process.kill()
            raise RuntimeError(f"meter server did not start: {line!r}")
        self.base_port = int(line.split()[1])
        return self

    def _ask(self, command: str) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._process.stdout.readline())
        return answer

    def reset(self) -> None:
        self._ask("reset")

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self._process.stdin is not None
            self._process.stdin.write("quit\n")
            self._process.stdin.flush()
        try:
            self._process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()


def poll_lateness_s(poll_starts: Sequence[Sequence[float]], interval_s: float) -> list[float]:
    """How late each poll began against its meter's deadline grid.

    Deadline scheduling keeps a meter's polls on ``first deadline + k × interval``; the
    grid's origin is estimated as the earliest ``start - k × interval`` of the meter (its
    least late poll), so this measures jitter and lateness, not the phase between meters.
    """
    lateness: list[float] = []
    for starts in poll_starts:
        if len(starts) < 2:
            continue
        first = starts[0]
        ticks = [round((s - first) / interval_s) for s in starts]
        offsets = [s - k * interval_s for s, k in zip(starts, ticks, strict=True)]
        origin = min(offsets)
        lateness.extend(o - origin for o in offsets)
    return lateness


if __name__ == "__main__":
    raise SystemExit(main())
