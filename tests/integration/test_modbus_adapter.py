"""The Modbus source against small real pymodbus servers on loopback (and an RTU bus on a pty).

Expected values are written into the servers' registers with ``encode_value`` and compared with
what the adapter decodes; faults are made by real servers (silent units, gateway exceptions,
a socket that never answers, replies with the wrong transaction id, a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.clock import FakeClock, SystemClock
from edge_agent.config import parse_config
from edge_agent.config.models import AgentConfig, ModbusPoint
from edge_agent.domain import PointRole, Quality, Sample
from edge_agent.sources.modbus.adapter import ModbusConnection, build_modbus_sources
from tests.integration.modbus_server import HOST, MeterServer, RawServer, free_port

ADAPTER_LOG = "edge_agent.sources.modbus.adapter"
STATES = {0: "off", 1: "idle", 2: "running"}

# One point of every kind a real meter map uses; the values below are exactly representable.
POINTS: dict[str, dict[str, Any]] = {
    "energy": {"register": "input", "address": 72, "type": "float32", "unit": "kWh",
               "role": "energy"},
    "power": {"register": "input", "address": 52, "type": "float32", "unit": "W",
              "role": "power"},
    "em24_energy": {"register": "holding", "address": 0x34, "type": "int32",
                    "word_order": "little", "scale": 0.1, "unit": "kWh"},
    "pm_energy": {"register": "holding", "address": 3203, "type": "int64", "unit": "Wh"},
    "counter16": {"register": "holding", "address": 10, "type": "uint16", "scale": 0.1,
                  "unit": "kWh"},
    "swapped": {"register": "holding", "address": 20, "type": "int16", "byte_order": "little"},
    "state": {"register": "holding", "address": 1000, "role": "state", "states": STATES},
    "running": {"register": "coil", "address": 5},
}  # fmt: skip
VALUES = {
    "energy": 1234.5,
    "power": 7500.25,
    "em24_energy": 70_000.0,  # raw 700000: needs the high word, LSW first
    "pm_energy": 123_456_789_012.0,
    "counter16": 6553.5,  # the largest 16-bit 0.1 kWh reading
    "swapped": -12.0,
    "state": 2.0,
    "running": 1.0,
}


def meter(meter_id: str, port: int, points: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": meter_id,
        "protocol": "modbus_tcp",
        "host": HOST,
        "port": port,
        "interval_s": 0.1,
        "timeout_s": 0.2,
        "retries": 0,
        "points": points,
        **extra,
    }


def config_of(meters: list[dict[str, Any]], tmp_path: Path) -> AgentConfig:
    return parse_config({"site": {"id": "test-site"}, "meters": meters}, tmp_path)


def points_of(config: AgentConfig, meter_id: str) -> dict[str, ModbusPoint]:
    return {
        name: point
        for name, point in config.meter(meter_id).points.items()
        if isinstance(point, ModbusPoint)
    }


def only(sources: list[ModbusConnection]) -> ModbusConnection:
    (source,) = sources
    return source


async def run_for(sources: list[ModbusConnection], seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    tasks = [asyncio.create_task(source.run(samples.extend)) for source in sources]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def of(samples: list[Sample], meter_id: str, point: str | None = None) -> list[Sample]:
    return [s for s in samples if s.meter_id == meter_id and (point is None or s.point == point)]


# -- values ---------------------------------------------------------------------------------


async def test_read_now_returns_what_the_server_holds(tmp_path: Path) -> None:
    port = free_port()
    config = config_of([meter("m", port, POINTS)], tmp_path)
    async with MeterServer(points_of(config, "m"), VALUES, port=port):
        source = only(build_modbus_sources(config, SystemClock()))
        before = time.time_ns()
        samples = await source.read_now(["m"])
        after = time.time_ns()
        await source.close()
    by_point = {s.point: s for s in samples}
    assert set(by_point) == set(POINTS)
    for name, expected in VALUES.items():
        sample = by_point[name]
        assert sample.quality is Quality.GOOD, sample
        assert sample.value == pytest.approx(expected, rel=1e-12), name
        assert sample.meter_id == "m"
        assert sample.unit == POINTS[name].get("unit", "")
        assert before <= sample.ts_ns <= after  # taken when the response arrived
    assert by_point["energy"].role is PointRole.ENERGY
    assert by_point["state"].state == "running"
    assert by_point["state"].value == 2.0  # the raw code stays in value
    assert source.stats.polls == 1
    assert source.stats.failures == 0


async def test_unknown_state_code_and_nan_are_decode_errors(tmp_path: Path) -> None:
    port = free_port()
    points = {"state": POINTS["state"], "energy": POINTS["energy"], "power": POINTS["power"]}
    config = config_of([meter("m", port, points)], tmp_path)
    server = MeterServer(points_of(config, "m"), {"state": 9, "power": 10.0}, port=port)
    server.set_words("input", 72, [0x7FC0, 0x0000])  # float32 quiet NaN, as a meter sends it
    async with server:
        source = only(build_modbus_sources(config, SystemClock()))
        by_point = {s.point: s for s in await source.read_now(["m"])}
        await source.close()
    assert by_point["state"].quality is Quality.DECODE_ERROR
    assert "state code 9" in by_point["state"].detail
    assert by_point["state"].value is None
    assert by_point["energy"].quality is Quality.DECODE_ERROR
    assert "0x7FC0 0x0000" in by_point["energy"].detail
    assert by_point["power"].quality is Quality.GOOD
    assert source.meter_available("m")  # the meter answered; its data was bad


# -- device answers with an error -----------------------------------------------------------


async def test_illegal_address_spares_the_good_points(tmp_path: Path) -> None:
    port = free_port()
    points = {
        "energy": POINTS["energy"],
        "missing": {"register": "input", "address": 5000, "type": "float32", "unit": "kWh"},
    }
    config = config_of([meter("m", port, points)], tmp_path)
    server_points = {"energy": points_of(config, "m")["energy"]}
    async with MeterServer(server_points, {"energy": 1234.5}, port=port):
        source = only(build_modbus_sources(config, SystemClock()))
        by_point = {s.point: s for s in await source.read_now(["m"])}
        await source.close()
    assert by_point["missing"].quality is Quality.ILLEGAL_ADDRESS
    assert "input 5000..5001" in by_point["missing"].detail
    assert "illegal data address" in by_point["missing"].detail
    assert by_point["energy"].quality is Quality.GOOD
    assert by_point["energy"].value == 1234.5


async def test_wrong_unit_id_behind_a_gateway_is_a_device_error(tmp_path: Path) -> None:
    port = free_port()
    config = config_of([meter("m", port, {"energy": POINTS["energy"]}, unit_id=7)], tmp_path)
    async with MeterServer(
        points_of(config, "m"), {"energy": 1.0}, unit_id=1, port=port,
        missing_unit="gateway_exception",
    ):  # fmt: skip
        source = only(build_modbus_sources(config, SystemClock()))
        (sample,) = await source.read_now(["m"])
        await source.close()
    assert sample.quality is Quality.DEVICE_ERROR
    assert "unit 7" in sample.detail
    assert "wrong unit id" in sample.detail


async def test_silent_unit_is_a_timeout_and_costs_one_timeout_per_attempt(tmp_path: Path) -> None:
    port = free_port()
    points = {  # three separate requests
        "energy": POINTS["energy"],
        "pm_energy": POINTS["pm_energy"],
        "state": POINTS["state"],
    }
    config = config_of([meter("m", port, points, unit_id=7, retries=1)], tmp_path)
    async with MeterServer(points_of(config, "m"), {}, unit_id=1, port=port, missing_unit="silent"):
        source = only(build_modbus_sources(config, SystemClock()))
        started = time.monotonic()
        samples = await source.read_now(["m"])
        elapsed = time.monotonic() - started
        await source.close()
    assert {s.quality for s in samples} == {Quality.TIMEOUT}
    assert len(samples) == 3
    assert all("no answer from unit 7 within 0.2 s" in s.detail for s in samples)
    # Two attempts of the first request (retries: 1), then the other requests fail at once
    # instead of costing 3 x 2 timeouts on a shared bus.
    assert 0.35 < elapsed < 0.8, elapsed


# -- connections that misbehave -------------------------------------------------------------


def _reply_with_next_transaction_id(request: bytes) -> bytes:
    """A well-formed read response, but for another transaction (a late reply to an old one)."""
    tid = int.from_bytes(request[0:2], "big")
    unit, function = request[6], request[7]
    count = int.from_bytes(request[10:12], "big")
    pdu = bytes([function, 2 * count]) + b"\x00\x01" * count
    header = ((tid + 1) % 65536).to_bytes(2, "big") + b"\x00\x00"
    return header + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


async def test_out_of_sequence_reply_forces_a_reconnect(tmp_path: Path) -> None:
    async with RawServer(_reply_with_next_transaction_id) as raw:
        config = config_of([meter("m", raw.port, {"energy": POINTS["energy"]})], tmp_path)
        source = only(build_modbus_sources(config, SystemClock()))
        first = await source.read_now(["m"])
        second = await source.read_now(["m"])
        await source.close()
    for (sample,) in (first, second):
        assert sample.quality is Quality.DEVICE_ERROR
        assert "out-of-sequence" in sample.detail
    assert raw.connections == 2  # the stream was dropped and opened again
    assert source.stats.reconnects == 2


async def test_peer_closing_on_request_is_a_connection_failure(tmp_path: Path) -> None:
    async with RawServer(lambda _request: None) as raw:
        config = config_of([meter("m", raw.port, {"energy": POINTS["energy"]})], tmp_path)
        source = only(build_modbus_sources(config, SystemClock()))
        (sample,) = await source.read_now(["m"])
        await source.close()
    assert sample.quality is Quality.CONNECTION
    assert "closed the connection" in sample.detail


async def test_dead_endpoints_do_not_delay_a_healthy_meter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ADAPTER_LOG)
    healthy_port, refused_port = free_port(), free_port()  # nothing listens on refused_port
    async with RawServer(lambda _request: b"") as hung:  # accepts, never answers
        config = config_of(
            [
                meter("healthy", healthy_port, {"energy": POINTS["energy"]}),
                meter("hung", hung.port, {"energy": POINTS["energy"]}, timeout_s=0.3),
                meter("refused", refused_port, {"energy": POINTS["energy"]}),
            ],
            tmp_path,
        )
        sources = build_modbus_sources(config, SystemClock())
        assert len(sources) == 3
        async with MeterServer(points_of(config, "healthy"), {"energy": 5.0}, port=healthy_port):
            samples = await run_for(sources, 1.5)
    healthy = of(samples, "healthy")
    assert all(s.quality is Quality.GOOD for s in healthy)
    assert len(healthy) >= 13, len(healthy)  # 15 ticks of 0.1 s
    # Deadline scheduling: the k-th poll sits near k intervals from the first whatever the
    # neighbours do (loosely in real time; the fake-clock test below checks the grid exactly).
    first = healthy[0].ts_ns
    for k, sample in enumerate(healthy):
        assert abs((sample.ts_ns - first) / 1e9 - k * 0.1) < 0.05, (k, sample.ts_ns - first)
    assert {s.quality for s in of(samples, "hung")} == {Quality.TIMEOUT}
    assert {s.quality for s in of(samples, "refused")} == {Quality.CONNECTION}
    assert len(of(samples, "refused")) <= 5  # backed off, not tried every 0.1 s
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert sorted(r.getMessage().split()[1] for r in unavailable) == ["hung", "refused"]


async def test_dead_unit_on_a_shared_connection_is_backed_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ADAPTER_LOG)
    port = free_port()
    config = config_of(
        [
            meter("healthy", port, {"energy": POINTS["energy"]}),
            meter("dead", port, {"energy": POINTS["energy"]}, unit_id=7, retries=1),
        ],
        tmp_path,
    )
    source = only(build_modbus_sources(config, SystemClock()))  # one gateway, one lock
    async with MeterServer(
        points_of(config, "healthy"), {"energy": 5.0}, port=port, missing_unit="silent"
    ):
        samples = await run_for([source], 2.5)
    healthy, dead = of(samples, "healthy"), of(samples, "dead")
    assert all(s.quality is Quality.GOOD for s in healthy)
    assert {s.quality for s in dead} == {Quality.TIMEOUT}
    # Polled every 0.1 s, each dead read costs 0.2 s (0.4 s with the retry): without backoff
    # the healthy meter would get a read every ~0.3 s. Backed off, the dead unit is tried at
    # 0, ~0.5, ~0.8, ~1.4 (then 2.4) and the healthy meter keeps most of its ticks.
    assert len(dead) <= 5, [s.ts_ns for s in dead]
    late_healthy = [s for s in healthy if s.ts_ns >= healthy[0].ts_ns + 1_500_000_000]
    assert len(late_healthy) >= 7, len(late_healthy)  # of 10 ticks in the last second
    assert source.stats.skipped_ticks > 0  # the ticks the dead unit's reads ate are counted
    messages = [r.getMessage() for r in caplog.records]
    assert sum("meter dead unavailable" in m for m in messages) == 1  # logged once
    assert not any("meter healthy" in m for m in messages)


async def test_reconnects_after_the_server_restarts_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ADAPTER_LOG)
    port = free_port()
    config = config_of([meter("m", port, {"energy": POINTS["energy"]})], tmp_path)
    server = MeterServer(points_of(config, "m"), {"energy": 42.0}, port=port)
    await server.start()
    source = only(build_modbus_sources(config, SystemClock()))
    samples: list[Sample] = []
    task = asyncio.create_task(source.run(samples.extend))
    try:
        await asyncio.sleep(0.4)
        await server.stop()
        await asyncio.sleep(0.5)
        server.set_value("energy", 43.0)
        await server.start()
        restarted_ns = time.time_ns()
        # Connection backoff (0.5, 1 s) and the meter's own backoff bound the recovery time.
        for _ in range(60):
            if any(s.value == 43.0 for s in samples):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
    assert any(s.quality is Quality.GOOD and s.value == 42.0 for s in samples)
    assert any(s.quality is Quality.CONNECTION for s in samples)
    recovered = [s for s in samples if s.value == 43.0]
    assert recovered, "no good read after the restart"
    assert recovered[0].ts_ns - restarted_ns < 3_000_000_000
    assert source.stats.reconnects >= 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("meter m unavailable" in m for m in messages) == 1
    assert sum("meter m on" in m and "recovered" in m for m in messages) == 1


# -- scheduling with an injected clock -----------------------------------------------------


async def test_a_late_poll_skips_missed_ticks_and_keeps_the_grid(tmp_path: Path) -> None:
    """With a fake clock the grid is exact: a read that "takes" 0.35 s of a 0.1 s interval
    makes two ticks skipped (counted), one late poll, then polls back on the original grid."""
    port = free_port()
    clock = FakeClock(start_monotonic_s=100.0)
    start_ns = clock.now_ns()
    config = config_of([meter("m", port, {"energy": POINTS["energy"]})], tmp_path)
    source = only(build_modbus_sources(config, clock))
    polls: list[float] = []
    done = asyncio.Event()

    def sink(samples: list[Sample] | Any) -> None:
        polls.append((samples[0].ts_ns - start_ns) / 1e9)
        if len(polls) == 3:
            clock.advance(0.35)  # this read was slow
        if len(polls) == 8:
            done.set()

    async with MeterServer(points_of(config, "m"), {"energy": 1.0}, port=port):
        task = asyncio.create_task(source.run(sink))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert polls[:8] == pytest.approx([0.0, 0.1, 0.2, 0.55, 0.6, 0.7, 0.8, 0.9], abs=1e-6)
    assert source.stats.skipped_ticks == 2


# -- grouping and RTU -----------------------------------------------------------------------


def test_meters_are_grouped_by_connection(tmp_path: Path) -> None:
    energy = {"energy": POINTS["energy"]}
    rtu = {"protocol": "modbus_rtu", "serial_port": "/dev/ttyUSB0", "points": energy}
    config = config_of(
        [
            meter("a1", 502, energy),
            meter("a2", 502, energy, unit_id=2),
            meter("b", 503, energy),
            {"id": "r1", "unit_id": 1, **rtu},
            {"id": "r2", "unit_id": 2, **rtu},
            meter("off", 504, energy, enabled=False),
        ],
        tmp_path,
    )
    sources = build_modbus_sources(config, FakeClock())
    assert {s.key: s.meter_ids for s in sources} == {
        f"modbus_tcp:{HOST}:502": ("a1", "a2"),
        f"modbus_tcp:{HOST}:503": ("b",),
        "modbus_rtu:/dev/ttyUSB0": ("r1", "r2"),
    }


@contextlib.contextmanager
def serial_cable() -> Iterator[tuple[str, str, list[int]]]:
    """Two pseudo-terminals whose master sides are joined by the event loop: a null-modem
    cable between two serial device paths (socat is not available)."""
    fds: list[int] = []
    paths: list[str] = []
    masters: list[int] = []
    for _ in range(2):
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
        fds += [master, slave]
        masters.append(master)
        paths.append(os.ttyname(slave))
    try:
        yield paths[0], paths[1], masters
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.asynccontextmanager
async def relayed(masters: list[int]) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()

    def pump(source: int, target: int) -> None:
        with contextlib.suppress(OSError):
            os.write(target, os.read(source, 4096))

    a, b = masters
    loop.add_reader(a, pump, a, b)
    loop.add_reader(b, pump, b, a)
    try:
        yield
    finally:
        loop.remove_reader(a)
        loop.remove_reader(b)


async def test_rtu_bus_over_a_pseudo_terminal_pair(tmp_path: Path) -> None:
    with serial_cable() as (server_path, client_path, masters):
        rtu = {
            "protocol": "modbus_rtu",
            "serial_port": client_path,
            "baudrate": 19200,
            "timeout_s": 0.3,
            "retries": 0,
            "points": {"energy": POINTS["energy"], "state": POINTS["state"]},
        }
        config = config_of([{"id": "u3", "unit_id": 3, **rtu}, {"id": "u4", "unit_id": 4, **rtu}],
                           tmp_path)  # fmt: skip
        source = only(build_modbus_sources(config, SystemClock()))  # one bus, one lock
        assert source.key == f"modbus_rtu:{client_path}"
        async with (
            relayed(masters),
            MeterServer(
                points_of(config, "u3"), {"energy": 1234.5, "state": 1}, unit_id=3,
                serial_port=server_path, baudrate=19200, missing_unit="silent",
            ),
        ):  # fmt: skip
            samples = await source.read_now(["u3", "u4"])
            again = await source.read_now(["u3"])
            await source.close()
    by_key = {(s.meter_id, s.point): s for s in samples}
    assert by_key["u3", "energy"].quality is Quality.GOOD
    assert by_key["u3", "energy"].value == 1234.5
    assert by_key["u3", "state"].state == "idle"
    # Nobody answers for unit 4 on the bus; unit 3 is still read right after it.
    assert by_key["u4", "energy"].quality is Quality.TIMEOUT
    assert "no answer from unit 4" in by_key["u4", "energy"].detail
    assert [s.quality for s in again] == [Quality.GOOD, Quality.GOOD]


def test_connections_first_polls_are_spread_over_the_first_interval(tmp_path: Path) -> None:
    """Hundreds of meters must not all be asked at the same instant every second, and at
    start-up the first meter is read at once instead of after every connection has been
    opened: groups of up to 100 connections, spread over the first interval."""
    config = config_of(
        [meter(f"m{i}", 20000 + i, {"energy": POINTS["energy"]}) for i in range(249)]
        + [meter("slow", 21000, {"energy": POINTS["energy"]}, interval_s=10.0)],
        tmp_path,
    )
    offsets = [s.first_poll_after_s for s in build_modbus_sources(config, SystemClock())]
    # 250 connections: 3 groups, a third of a 0.1 s interval apart.
    assert sorted(set(offsets[:249])) == pytest.approx([0.0, 0.1 / 3, 0.2 / 3])
    assert [offsets[:249].count(o) for o in sorted(set(offsets[:249]))] == [84, 83, 82]
    assert offsets[249] == pytest.approx(20 / 3)  # the last group, of its own 10 s interval


def test_up_to_100_connections_start_together(tmp_path: Path) -> None:
    """One group: the polls share the event loop's passes (the cheapest in CPU per read)."""
    config = config_of(
        [meter(f"m{i}", 20000 + i, {"energy": POINTS["energy"]}) for i in range(100)], tmp_path
    )
    assert {s.first_poll_after_s for s in build_modbus_sources(config, SystemClock())} == {0.0}
