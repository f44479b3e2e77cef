"""`edge-agent check --probe` tells the truth: against the simulated meters, a wrong word order,
a byte swap, an address off by one and a wrong data type are shown with the raw registers and
all four decodings, flagged implausible, and exit 1; the right configuration exits 0."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from simulators.modbus_meters import SimulatedPlant
from simulators.plant import ENCLOSURE_LINE, Step, agent_config, write_config
from tests.integration.test_cli import edge_agent

LASER = ENCLOSURE_LINE[0]  # 40 kW max, idles at 3 kW: above 5 %, so the counter is re-read
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


async def probe(
    tmp_path: Path,
    overrides: dict[str, dict[str, Any]],
    *,
    step: Step = LASER,
    initial_kwh: float = 12.0,
    state: str = "idle",
) -> subprocess.CompletedProcess[str]:
    """Probe one simulated meter with its points overridden as a meter's ``points:`` would."""
    async with SimulatedPlant() as plant:
        plant.add_meter(
            step.meter_id,
            step.machine_type,
            profile=step.profile,
            seed=1,
            initial_kwh=initial_kwh,
            state=state,
        )
        await plant.meters[step.meter_id].start()
        config = agent_config(
            plant, mqtt_host="127.0.0.1", mqtt_port=1883, store_path=tmp_path / "a.db",
            steps=(step,),
        )  # fmt: skip
        config["meters"][0]["points"].update(overrides)
        path = write_config(config, tmp_path / "plant.yaml")
        return await asyncio.to_thread(edge_agent, "check", "-c", str(path), "--probe")


def point_lines(result: subprocess.CompletedProcess[str], point: str) -> list[str]:
    """The point's row and the register and decoding lines under it."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["m-laser", point])
    return lines[start : start + 3]


def assert_flagged(result: subprocess.CompletedProcess[str], point: str, order: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    row, registers, decoded = point_lines(result, point)
    assert "IMPLAUSIBLE" in row, row
    assert "registers " in registers
    assert "0x" in registers
    for name in ORDERS:
        assert name in decoded, decoded
    assert f"{order} (configured)" in decoded
    assert f"meter m-laser point {point}:" in result.stdout  # the summary names meter and point
    assert "meter(s) failed" not in result.stdout  # it answered: the values are the problem
    return row


async def test_correct_configuration_exits_0(tmp_path: Path) -> None:
    result = await probe(tmp_path, {})
    assert result.returncode == 0, result.stdout + result.stderr
    row, registers, decoded = point_lines(result, "energy")
    assert "good" in row
    assert "registers input 72..73 (float32): 0x4140 0x" in registers
    assert "ABCD (configured) 12" in decoded
    assert all(name in decoded for name in ORDERS)
    assert "every value plausible" in result.stdout


# A machine that is off keeps its counter still, so the registers are known exactly:
# 12.0001 kWh is float32 0x4140 0x0069.
STILL_KWH = 12.0001


async def test_wrong_word_order_is_implausible(tmp_path: Path) -> None:
    # The shorthand over the profile's word_order/byte_order: the meter's own setting wins.
    result = await probe(
        tmp_path, {"energy": {"order": "CDAB"}}, state="off", initial_kwh=STILL_KWH
    )
    row = assert_flagged(result, "energy", "CDAB")
    assert "float_debris" in row  # 0x0069 0x4140 read high word first: 9.6e-39
    _, registers, decoded = point_lines(result, "energy")
    assert registers.strip() == "registers input 72..73 (float32): 0x4140 0x0069"
    assert "ABCD 12.0001 |" in decoded  # the right reading is there to be seen


async def test_byte_swap_is_implausible(tmp_path: Path) -> None:
    # 20 kWh is 0x41A0 0x0000 as float32; with the bytes of each word swapped it is negative.
    result = await probe(tmp_path, {"energy": {"byte_order": "little"}}, initial_kwh=20.0)
    row = assert_flagged(result, "energy", "BADC")
    assert "counter_negative" in row
    assert "expected a value >= 0" in row


async def test_power_word_swap_is_above_max_power(tmp_path: Path) -> None:
    # Idle 3 kW = 3000 W = 0x453B 0x8xxx; read as DCBA it is beyond 40 kW or debris.
    result = await probe(tmp_path, {"power": {"type": "int32"}})
    row = assert_flagged(result, "power", "ABCD")
    assert "power_above_max" in row
    assert "max_power_kw 40 of equipment laser-cutter" in row


async def test_address_one_too_high_is_implausible(tmp_path: Path) -> None:
    # Registers 73..74: the counter's low word, then the (zero) export counter's high word.
    result = await probe(tmp_path, {"energy": {"address": 73}}, state="off", initial_kwh=STILL_KWH)
    row = assert_flagged(result, "energy", "ABCD")
    assert "float_debris" in row
    assert "registers input 73..74 (float32): 0x0069 0x0000" in point_lines(result, "energy")[1]


async def test_address_one_too_low_is_implausible(tmp_path: Path) -> None:
    # Registers 51..52: an unused (zero) register, then the power's high word (3 kW: 0x453x).
    result = await probe(tmp_path, {"power": {"address": 51}})
    row = assert_flagged(result, "power", "ABCD")
    assert "float_debris" in row
    assert "registers input 51..52 (float32): 0x0000 0x45" in point_lines(result, "power")[1]


async def test_counter_that_does_not_move_while_running_is_implausible(tmp_path: Path) -> None:
    # The export counter (always 0) configured as the energy point, the laser cutting at 22 kW:
    # the probe reads it again 1.5 s later and it has not moved.
    result = await probe(tmp_path, {"energy": {"address": 74}}, state="running")
    row = assert_flagged(result, "energy", "ABCD")
    assert "counter_stuck" in row
    assert "it does not move (expected a rise of about" in row


async def test_int32_read_as_float32_is_implausible(tmp_path: Path) -> None:
    em24 = Step("laser-cutter", "laser-cutter", "m-laser", 40.0, "Laser", profile="em24")
    result = await probe(tmp_path, {"energy": {"type": "float32"}}, step=em24)
    row = assert_flagged(result, "energy", "CDAB")
    assert "float_debris" in row
