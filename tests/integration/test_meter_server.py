"""The benchmarks' fast meter server, read with pymodbus (not timed)."""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.meter_server import MeterFarm, poll_lateness_s


def _float(words: Sequence[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *words))[0]
    return value


async def _read(port: int) -> dict[str, object]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await client.connect()
    try:
        low = await client.read_input_registers(0, count=8, device_id=1)
        power = await client.read_input_registers(52, count=2, device_id=1)
        counters = await client.read_input_registers(70, count=6, device_id=1)
        total = await client.read_input_registers(342, count=2, device_id=1)
        holding = await client.read_holding_registers(72, count=2, device_id=1)
        await asyncio.sleep(0.2)
        later = await client.read_input_registers(72, count=2, device_id=1)
        beyond = await client.read_input_registers(344, count=2, device_id=1)
        coils = await client.read_coils(0, count=1, device_id=1)
    finally:
        client.close()
    return {
        "voltage": _float(low.registers[0:2]),
        "current": _float(low.registers[6:8]),
        "power_w": _float(power.registers),
        "frequency": _float(counters.registers[0:2]),
        "energy": _float(counters.registers[2:4]),
        "export": _float(counters.registers[4:6]),
        "total": _float(total.registers),
        "holding_energy": _float(holding.registers),
        "energy_later": _float(later.registers),
        "beyond": (beyond.isError(), getattr(beyond, "exception_code", None)),
        "coils": (coils.isError(), getattr(coils, "exception_code", None)),
    }


def test_meter_server_serves_the_sdm630_map_and_counts_requests() -> None:
    with MeterFarm(3, processes=2, duration_s=60) as farm:
        farm.reset()
        values = asyncio.run(_read(farm.base_port + 2))
        stats = farm.stats()
    assert 220 < float(values["voltage"]) < 240  # type: ignore[arg-type]
    assert 49.9 < float(values["frequency"]) < 50.1  # type: ignore[arg-type]
    assert float(values["power_w"]) > 1000  # type: ignore[arg-type]
    assert float(values["current"]) > 0  # type: ignore[arg-type]
    assert values["export"] == 0.0
    assert float(values["energy"]) > 0  # type: ignore[arg-type]
    assert values["total"] == values["energy"]
    assert values["holding_energy"] == values["energy"]  # function 3 mirrors the input table
    assert float(values["energy_later"]) >= float(values["energy"])  # type: ignore[arg-type]
    assert values["beyond"] == (True, 2)
    assert values["coils"] == (True, 1)
    assert stats["requests"] == 8
    assert len(stats["pids"]) == 2
    assert sum(len(starts) for starts in stats["poll_starts"]) == 1  # 0.2 s apart: one poll


def test_poll_lateness_is_measured_against_each_meters_grid() -> None:
    starts = [[10.0, 11.0, 12.05, 13.0], [0.5, 1.5, 3.5]]  # a skipped tick is not lateness
    lateness = sorted(poll_lateness_s(starts, 1.0))
    assert [round(x, 3) for x in lateness] == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05]
