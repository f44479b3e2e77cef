"""The Modbus source against the meter simulator over real Modbus TCP on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.domain import Quality, Sample
from edge_agent.sources.base import build_sources
from edge_agent.sources.modbus.adapter import ModbusConnection
from simulators.broker import free_port
from simulators.modbus_meters import SimulatedPlant

# Float32 counters near 25 kWh resolve to ~2e-6 kWh; the sample timestamp is taken after the
# reply arrives, so the truth is compared at a window around it (power x round trip).
FLOAT32_KWH = 4e-6


def meter_config(meter_id: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": meter_id,
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "profile": "sdm630",
        "interval_s": 0.2,
        "timeout_s": 0.3,
        "retries": 0,
        "points": {
            "state": {
                "register": "holding",
                "address": 1000,
                "role": "state",
                "states": {0: "off", 1: "idle", 2: "running", 3: "setup", 4: "fault"},
            }
        },
        **extra,
    }


def config_for(meters: list[dict[str, Any]], tmp_path: Path) -> Any:
    return parse_config(
        {
            "site": {"id": "test-site"},
            "meters": meters,
            "emission_factors": {
                "electricity": {"value": 0.45, "unit": "kgCO2e/kWh", "source": "t", "version": "1"}
            },
        },
        tmp_path,
    )


async def collect(sources: list[Any], seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    tasks = [asyncio.create_task(source.run(samples.extend)) for source in sources]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples


async def test_polled_counters_match_ground_truth(tmp_path: Path) -> None:
    async with SimulatedPlant() as plant:
        meters = [plant.add_meter(f"m{i}", "laser-cutter", seed=i) for i in range(3)]
        for meter in meters:
            await meter.start()
        meters[1].machine.set_state("running")
        config = config_for([meter_config(m.id, m.port) for m in meters], tmp_path)
        sources = build_sources(config, SystemClock())
        assert len(sources) == 3  # one connection per host:port
        samples = await collect(sources, 2.0)
    energy = [s for s in samples if s.point == "energy" and s.quality is Quality.GOOD]
    assert len(energy) >= 3 * 8, len(energy)
    for sample in energy:
        machine = plant.meters[sample.meter_id].machine
        # The register was filled between request and reply: truth within that window.
        before = machine.energy_kwh_at(sample.ts_ns - 50_000_000)
        after = machine.energy_kwh_at(sample.ts_ns)
        assert sample.value is not None
        assert before - FLOAT32_KWH <= sample.value <= after + FLOAT32_KWH
    states = {s.state for s in samples if s.point == "state" and s.meter_id == "m1"}
    assert states == {"running"}
    power = [s.value for s in samples if s.point == "power" and s.meter_id == "m1"]
    assert all(v is not None and 20_000 < v < 24_000 for v in power)  # W, running laser


async def test_dead_meter_does_not_stall_the_others(tmp_path: Path) -> None:
    async with SimulatedPlant() as plant:
        healthy = plant.add_meter("healthy", "press-brake")
        silent = plant.add_meter("silent", "press-brake")
        for meter in (healthy, silent):
            await meter.start()
        silent.silent = True  # accepts the connection, never answers
        nobody = free_port()  # nothing listens here
        config = config_for(
            [
                meter_config("healthy", healthy.port),
                meter_config("silent", silent.port),
                meter_config("refused", nobody),
            ],
            tmp_path,
        )
        sources = build_sources(config, SystemClock())
        samples = await collect(sources, 2.0)
        silent.silent = False
    good = [s for s in samples if s.meter_id == "healthy" and s.point == "energy"]
    # 0.2 s interval for 2 s: ~10 polls, whatever the other two meters do.
    assert len(good) >= 8
    assert all(s.quality is Quality.GOOD for s in good)
    silent_q = {s.quality for s in samples if s.meter_id == "silent"}
    refused_q = {s.quality for s in samples if s.meter_id == "refused"}
    assert silent_q == {Quality.TIMEOUT}
    assert refused_q == {Quality.CONNECTION}
    refused = [s for s in samples if s.meter_id == "refused" and s.point == "energy"]
    assert len(refused) < 8  # backed off, not hammered every 0.2 s


async def test_probe_reports_illegal_address_and_wrong_unit(tmp_path: Path) -> None:
    async with SimulatedPlant() as plant:
        meter = plant.add_meter("m", "assembly")
        await meter.start()
        bad_address = meter_config("bad-address", meter.port)
        bad_address["points"] = {
            "missing": {"register": "input", "address": 5000, "type": "float32", "unit": "kWh"}
        }
        bad_address.pop("profile")
        wrong_unit = meter_config("wrong-unit", meter.port, unit_id=7)
        config = config_for([bad_address, wrong_unit], tmp_path)
        (source,) = build_sources(config, SystemClock())  # same host:port: one connection
        samples = await source.read_now(["bad-address", "wrong-unit"])
        await source.close()
    by_meter = {s.meter_id: s for s in samples}
    assert by_meter["bad-address"].quality is Quality.ILLEGAL_ADDRESS
    assert "illegal data address" in by_meter["bad-address"].detail
    wrong = [s for s in samples if s.meter_id == "wrong-unit"]
    # Devices differ: silence (timeout), a gateway's 0x0B, or pymodbus' own device failure.
    assert {s.quality for s in wrong} <= {Quality.TIMEOUT, Quality.DEVICE_ERROR}
    assert all("unit 7" in s.detail for s in wrong)


async def test_reconnects_after_meter_restart_and_does_not_drift(tmp_path: Path) -> None:
    async with SimulatedPlant() as plant:
        meter = plant.add_meter("m", "welding-robot")
        await meter.start()
        config = config_for([meter_config("m", meter.port)], tmp_path)
        (source,) = build_sources(config, SystemClock())
        assert isinstance(source, ModbusConnection)
        samples: list[Sample] = []
        task = asyncio.create_task(source.run(samples.extend))
        await asyncio.sleep(0.6)
        await meter.set_down(True)
        await asyncio.sleep(0.8)
        await meter.set_down(False)
        restarted = time.time_ns()
        await asyncio.sleep(2.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    energy = [s for s in samples if s.point == "energy"]
    assert any(s.quality is Quality.CONNECTION for s in energy)
    assert any(s.quality is Quality.GOOD and s.ts_ns > restarted for s in energy)
    assert source.stats.reconnects >= 2
    # Deadline scheduling: good polls before the outage sit on a 0.2 s grid.
    good = [s.ts_ns for s in energy if s.quality is Quality.GOOD and s.ts_ns < restarted]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(good)]
    assert gaps
    assert all(0.1 < gap < 0.3 for gap in gaps), gaps


async def test_em24_word_swapped_integer_counter_matches_truth(tmp_path: Path) -> None:
    """Carlo Gavazzi EM24: INT32, least significant word first, kWh x10."""
    async with SimulatedPlant() as plant:
        meter = plant.add_meter("em24", "paint-booth", profile="em24", initial_kwh=70_000.0)
        await meter.start()
        config = config_for([meter_config("em24", meter.port, profile="em24")], tmp_path)
        (source,) = build_sources(config, SystemClock())
        samples = await source.read_now(["em24"])
        await source.close()
    by_point = {s.point: s for s in samples}
    energy = by_point["energy"]
    assert energy.quality is Quality.GOOD
    assert energy.value is not None
    # 70,000 kWh needs the high word (70000 x 10 > 65535): a word-order mix-up would be way off
    assert abs(energy.value - meter.machine.energy_kwh_at(energy.ts_ns)) <= 0.1 + 1e-9
    power = by_point["power"].value
    assert power is not None
    assert 3_000 < power < 5_000  # W, idle paint booth
