"""The meter simulator over real Modbus TCP on loopback: registers decode to the load model's
exact values, every fault switch is visible on the wire, one process serves many meters."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from edge_agent.clock import FakeClock
from edge_agent.config.models import ModbusPoint
from edge_agent.sources.modbus.decode import decode_registers
from simulators.broker import HOST, free_port
from simulators.machines import PROFILES
from simulators.modbus_meters import MeterSimulator, SimulatedPlant

REPO = Path(__file__).resolve().parents[2]


def as_float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


async def connect(port: int, timeout_s: float = 1.0) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient(HOST, port=port, timeout=timeout_s, retries=0)
    assert await client.connect()
    return client


async def read(client: AsyncModbusTcpClient, meter: MeterSimulator, name: str) -> float:
    point = meter.points[name]
    reader = {
        "input": client.read_input_registers,
        "holding": client.read_holding_registers,
    }[point.register_type]
    response = await reader(point.address, count=point.register_count, device_id=meter.unit_id)
    assert not response.isError(), response
    return decode_registers(response.registers, point)


async def open_and_close(port: int) -> None:
    _, writer = await asyncio.open_connection(HOST, port)
    writer.close()


@pytest.fixture
async def fake_plant() -> AsyncIterator[tuple[SimulatedPlant, FakeClock]]:
    """Meters on a hand-driven clock: the time a reply describes is the test's choice."""
    clock = FakeClock()
    plant = SimulatedPlant(clock)
    yield plant, clock
    await plant.stop()


async def test_registers_decode_to_the_exact_model_values(
    fake_plant: tuple[SimulatedPlant, FakeClock],
) -> None:
    plant, clock = fake_plant
    meter = plant.add_meter("laser", "laser-cutter", seed=3, initial_kwh=37.5, unit_id=5)
    await plant.start()
    client = await connect(meter.port)
    try:
        clock.advance(93.7)
        t = clock.now_ns()
        energy = await read(client, meter, "energy")
        assert meter.last_fill_ns == t
        truth = meter.machine.energy_kwh_at(t)
        assert energy == as_float32(truth)  # float32 of the exact integral, nothing else
        assert abs(energy - truth) <= 37.6 * 2**-24  # float32 resolution at this total
        assert await read(client, meter, "total_energy") == energy
        assert await read(client, meter, "export_energy") == 0.0
        assert await read(client, meter, "state") == 1.0  # idle
        idle_power_w = await read(client, meter, "power")
        assert idle_power_w == as_float32(meter.machine.power_kw_at(t) * 1000)
        assert 2_850 <= idle_power_w <= 3_150
        # A read right after a state change already shows it (filled at request time).
        meter.set_state("running")
        assert await read(client, meter, "state") == 2.0
        running_power_w = await read(client, meter, "power")
        assert 20_900 <= running_power_w <= 23_100
        current_a = await read(client, meter, "current_l1")
        assert current_a == pytest.approx(running_power_w / (3 * 230 * 0.95), rel=1e-5)
        assert 228.5 <= await read(client, meter, "voltage_l1") <= 231.5
        assert 49.98 <= await read(client, meter, "frequency") <= 50.02
        clock.advance(3600)  # one hour at ~22 kW (noise steps every 0.5 s)
        energy_later = await read(client, meter, "energy")
        assert energy_later == as_float32(meter.machine.energy_kwh_at(clock.now_ns()))
        assert 20.9 <= energy_later - energy <= 23.1
        # Read-only meter: writes are refused with a Modbus exception, not silently applied.
        refused = await client.write_register(meter.state_address, 4, device_id=meter.unit_id)
        assert refused.isError()
        assert await read(client, meter, "state") == 2.0
    finally:
        client.close()


async def test_silent_meter_keeps_the_socket_and_never_answers(
    fake_plant: tuple[SimulatedPlant, FakeClock],
) -> None:
    plant, clock = fake_plant
    meter = plant.add_meter("m", "press-brake", state="running")
    await plant.start()
    client = await connect(meter.port, timeout_s=0.3)
    try:
        before = await read(client, meter, "energy")
        meter.set_silent(True)
        requests = meter.requests
        with pytest.raises(ModbusIOException):
            await read(client, meter, "energy")
        assert meter.requests == requests + 1  # the request arrived; no reply left the meter
        probe = await connect(meter.port)  # the port still accepts connections
        probe.close()
        clock.advance(600)  # ten minutes silent at ~8 kW: the truth kept counting
        meter.set_silent(False)
    finally:
        client.close()
    client = await connect(meter.port)
    try:
        after = await read(client, meter, "energy")
    finally:
        client.close()
    assert after == as_float32(meter.machine.energy_kwh_now())
    assert 1.2 <= after - before <= 1.4


async def test_down_meter_refuses_and_comes_back_on_the_same_port(
    fake_plant: tuple[SimulatedPlant, FakeClock],
) -> None:
    plant, clock = fake_plant
    meter = plant.add_meter("m", "paint-booth", state="running")
    await plant.start()
    client = await connect(meter.port)
    before = await read(client, meter, "energy")
    client.close()
    await meter.set_down(True)
    with pytest.raises(ConnectionRefusedError):
        await open_and_close(meter.port)
    clock.advance(360)
    await meter.set_down(False)
    client = await connect(meter.port)
    try:
        after = await read(client, meter, "energy")
    finally:
        client.close()
    assert after == as_float32(meter.machine.energy_kwh_now())
    assert 1.7 <= after - before <= 1.9  # ~18 kW for 6 min counted while down


async def test_frozen_meter_repeats_its_registers(
    fake_plant: tuple[SimulatedPlant, FakeClock],
) -> None:
    plant, clock = fake_plant
    meter = plant.add_meter("m", "welding-robot", state="running")
    await plant.start()
    client = await connect(meter.port)
    try:
        energy = await read(client, meter, "energy")
        power = await read(client, meter, "power")
        meter.set_frozen(True)
        clock.advance(120)
        meter.set_state("off")
        assert await read(client, meter, "energy") == energy
        assert await read(client, meter, "power") == power
        assert await read(client, meter, "state") == 2.0  # still "running" on the wire
        assert meter.machine.energy_kwh_now() > energy + 0.3  # the truth moved on
        meter.set_frozen(False)
        assert await read(client, meter, "energy") == as_float32(meter.machine.energy_kwh_now())
        assert await read(client, meter, "state") == 0.0
        assert await read(client, meter, "power") == 0.0
    finally:
        client.close()


async def test_counter_reset_and_rollovers_on_the_wire(
    fake_plant: tuple[SimulatedPlant, FakeClock],
) -> None:
    plant, clock = fake_plant
    # A float counter with a configured 1,000 kWh modulus, and a 16-bit 0.1 kWh integer
    # counter (holding 2000) that wraps at its type's range: 6,553.6 kWh.
    float_meter = plant.add_meter("f", "laser-cutter", state="running", counter_modulus_kwh=1000)
    int_meter = plant.add_meter(
        "i",
        "laser-cutter",
        state="running",
        points={"energy": {"register": "holding", "address": 2000, "type": "uint16", "scale": 0.1}},
    )
    resetting = plant.add_meter("r", "air-compressor", state="running", initial_kwh=80.0)
    await plant.start()
    clients = [await connect(m.port) for m in (float_meter, int_meter, resetting)]
    try:
        float_meter.jump_counter_to(999.9)
        assert int_meter.jump_to_rollover(headroom_kwh=0.15) == pytest.approx(6553.6)
        raw = await clients[1].read_holding_registers(2000, count=1, device_id=1)
        assert raw.registers == [65534]  # 6,553.45 kWh shows as 6,553.4
        assert await read(clients[0], float_meter, "energy") == pytest.approx(999.9, abs=1e-4)
        true_before = [m.machine.energy_kwh_now() for m in (float_meter, int_meter)]
        clock.advance(60)  # ~0.37 kWh at ~22 kW: both wrap
        pair = (float_meter, int_meter)
        used = [m.machine.energy_kwh_now() - b for m, b in zip(pair, true_before, strict=True)]
        wrapped = await read(clients[0], float_meter, "energy")
        assert wrapped == pytest.approx(999.9 + used[0] - 1000, abs=1e-4)
        raw = await clients[1].read_holding_registers(2000, count=1, device_id=1)
        assert raw.registers == [int((6553.45 + used[1] - 6553.6) / 0.1 + 1e-9)]
        assert raw.registers[0] < 5

        counted = await read(clients[2], resetting, "energy")
        assert counted == as_float32(resetting.machine.energy_kwh_now()) > 80.2  # 1 min at ~15 kW
        resetting.reset_counter()  # power cycle: restarts at 0, the truth does not
        at_reset = resetting.machine.energy_kwh_now()
        assert await read(clients[2], resetting, "energy") == 0.0
        clock.advance(360)  # ~15 kW x 0.1 h
        shown = await read(clients[2], resetting, "energy")
        assert 1.4 <= shown <= 1.6
        assert shown == as_float32(resetting.machine.energy_kwh_now() - at_reset)
    finally:
        for client in clients:
            client.close()


async def test_one_process_serves_many_meters() -> None:
    async with SimulatedPlant() as plant:
        machine_types = list(PROFILES)
        meters = [
            plant.add_meter(f"m{i:02d}", machine_types[i % 6], seed=i, initial_kwh=10.0 + i)
            for i in range(24)
        ]
        await plant.start()
        assert len({m.port for m in meters}) == 24

        async def check(meter: MeterSimulator) -> float:
            client = await connect(meter.port)
            try:
                meter.set_state("running")
                before = meter.machine.energy_kwh_now()
                energy = await read(client, meter, "energy")
                after = meter.machine.energy_kwh_now()
                assert meter.last_fill_ns is not None
                assert energy == as_float32(meter.machine.energy_kwh_at(meter.last_fill_ns))
                assert before - 1e-5 <= energy <= after + 1e-5
                assert await read(client, meter, "state") == 2.0
                return energy
            finally:
                client.close()

        started = time.monotonic()
        energies = await asyncio.gather(*(check(m) for m in meters))
        elapsed = time.monotonic() - started
    assert [int(e) for e in energies] == [10 + i for i in range(24)]
    print(f"24 meters, one process: all read in {elapsed * 1000:.0f} ms")


async def test_command_line_serves_a_plant_file_with_start_up_faults(tmp_path: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(
        yaml.safe_dump(
            {
                "meters": [
                    {"id": "laser", "machine": "laser-cutter", "port": ports[0], "unit_id": 3,
                     "state": "running", "initial_kwh": 42.0},
                    {"id": "press", "machine": "press-brake", "port": ports[1], "faults": ["down"]},
                    {"id": "oven", "machine": "paint-booth", "port": ports[2],
                     "power_kw": {"idle": 7.5}, "noise": 0.0, "state_address": 1100},
                ]
            }
        )
    )  # fmt: skip
    ports_file = tmp_path / "ports.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.modbus_meters", "--plant", str(plant_file),
        "--meters", "2", "--fault", "meter-002=freeze", "--no-wander",
        "--ports-file", str(ports_file), "--duration", "20",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not ports_file.exists() and time.monotonic() < deadline:
            assert process.returncode is None, await process.communicate()
            await asyncio.sleep(0.05)
        served = json.loads(ports_file.read_text())
        assert set(served) == {"laser", "press", "oven", "meter-001", "meter-002"}
        assert [served["laser"], served["press"], served["oven"]] == ports
        energy = ModbusPoint.model_validate(
            {"register": "input", "address": 72, "type": "float32", "unit": "kWh", "role": "energy"}
        )
        state = ModbusPoint.model_validate({"register": "holding", "address": 1100})
        client = await connect(ports[0])
        response = await client.read_input_registers(72, count=2, device_id=3)
        client.close()
        assert 42.0 < decode_registers(response.registers, energy) < 42.1
        client = await connect(ports[2])
        response = await client.read_holding_registers(1100, count=1, device_id=1)
        power = await client.read_input_registers(52, count=2, device_id=1)
        client.close()
        assert decode_registers(response.registers, state) == 1.0  # idle
        assert decode_registers(power.registers, energy) == 7500.0  # W, no noise
        with pytest.raises(ConnectionRefusedError):  # "press" started down
            await open_and_close(ports[1])
        # Frozen from start-up: it keeps showing its start-up values (25 kWh initial).
        client = await connect(served["meter-002"])
        first = await client.read_input_registers(0, count=80, device_id=1)
        await asyncio.sleep(1.1)  # noise grid and voltage would have moved by now
        second = await client.read_input_registers(0, count=80, device_id=1)
        client.close()
        assert first.registers == second.registers
        assert 25.0 <= decode_registers(first.registers[72:74], energy) < 25.001
    finally:
        process.terminate()
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    lines = out.decode().splitlines()
    assert any(line.startswith(f"laser: 127.0.0.1:{ports[0]} unit 3 ") for line in lines)
    assert any(line.startswith("press:") and line.endswith("(down)") for line in lines)
