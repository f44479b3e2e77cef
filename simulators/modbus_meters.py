"""Many Modbus TCP power meters in one process, each with a real profile's register map.

Each meter listens on its own loopback port (like real meters with their own IP). Registers are
computed from the machine's load model at the moment a request arrives (a pymodbus ``SimDevice``
action), so a read right after a state change is exact, never a tick stale. The machine state is
also exposed as a holding register (default 1000, uint16: 0 off, 1 idle, 2 running, 3 setup,
4 fault), as a PLC would. Fault switches: ``silent`` (connection stays, no answers), ``down``
(port closed), ``freeze`` (registers keep showing one instant), counter rollover and counter
reset. The ground truth (the machine's true energy) keeps counting whatever the meter shows.

    python -m simulators.modbus_meters --meters 20 --base-port 15020 --profile sdm630
    python -m simulators.modbus_meters --plant plant.yaml --fault m-press=silent
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.clock import Clock, SystemClock
from edge_agent.config.models import ENERGY_UNITS_TO_KWH, POWER_UNITS_TO_KW, ModbusPoint
from edge_agent.config.profiles import load_profile
from edge_agent.config.yaml_loading import load_yaml_file
from edge_agent.domain import NS_PER_S, PointRole
from edge_agent.sources.modbus.decode import encode_value
from simulators.broker import HOST, free_port
from simulators.machines import PROFILES, STATE_CODES, MachineProfile, SimulatedMachine

log = logging.getLogger(__name__)

STATE_REGISTER = 1000
FaultKind = Literal["silent", "down", "freeze", "reset", "rollover"]
FAULT_KINDS: tuple[FaultKind, ...] = ("silent", "down", "freeze", "reset", "rollover")
# A float counter has no natural wrap; the "rollover" fault gives it the 9,999 kWh of a
# four-digit display register, as some meters do (DESIGN §9).
DEFAULT_FLOAT_MODULUS_KWH = 9_999.0
ROLLOVER_HEADROOM_KWH = 0.05  # how far below the modulus the "rollover" fault jumps
_TABLE_INDEX = {"coil": 0, "discrete_input": 1, "holding": 2, "input": 3}
_FUNCTION_TABLE = {1: "coil", 2: "discrete_input", 3: "holding", 4: "input"}
_NOMINAL_VOLTAGE_V = 230.0
_POWER_FACTOR = 0.95


def profile_points(
    profile: str,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    profile_dirs: Sequence[Path] = (),
) -> dict[str, ModbusPoint]:
    """A profile's points (defaults applied), with per-point overrides merged field by field,
    as a meter's ``points:`` in the agent configuration would."""
    data = load_profile(profile, list(profile_dirs))
    defaults = data.get("defaults") or {}
    specs: dict[str, dict[str, Any]] = {
        name: {**defaults, **(spec or {})} for name, spec in data["points"].items()
    }
    for name, spec in (overrides or {}).items():
        specs[name] = {**specs.get(name, {}), **spec}
    return {name: ModbusPoint.model_validate(spec) for name, spec in specs.items()}


@dataclass
class CounterDisplay:
    """What the meter's counter shows relative to the true energy (faults shift it)."""

    offset_kwh: float = 0.0
    modulus_kwh: float | None = None  # None: the register type's own range (integers only)


class MeterSimulator:
    """One simulated meter: a machine's load model behind a profile's register map."""

    def __init__(
        self,
        meter_id: str,
        machine: SimulatedMachine,
        *,
        profile: str = "sdm630",
        port: int | None = None,
        unit_id: int = 1,
        counter_modulus_kwh: float | None = None,
        state_address: int = STATE_REGISTER,
        points: Mapping[str, Mapping[str, Any]] | None = None,
        profile_dirs: Sequence[Path] = (),
    ) -> None:
        self.id = meter_id
        self.machine = machine
        self.profile = profile
        self.port = port or free_port()
        self.unit_id = unit_id
        self.state_address = state_address
        state_point: dict[str, Any] = {
            "register": "holding",
            "address": state_address,
            "type": "uint16",
            "role": "state",
            "states": {code: name for name, code in STATE_CODES.items()},
        }
        self.points = profile_points(
            profile, {"state": state_point, **(points or {})}, profile_dirs
        )
        energy = [name for name, p in self.points.items() if p.role is PointRole.ENERGY]
        if len(energy) != 1:
            raise ValueError(f"meter {meter_id}: expected one energy point, found {energy}")
        self.energy_point = energy[0]
        self.counter = CounterDisplay(modulus_kwh=counter_modulus_kwh)
        self.silent = False  # accept connections and requests, never answer
        self.frozen_at_ns: int | None = None  # frozen: registers show this instant forever
        self.requests = 0
        self.last_fill_ns: int | None = None  # the instant the registers were last computed
        self._blocks = self._layout()
        self._server: ModbusTcpServer | None = None
        # Stable per meter id across runs (str hash() is salted per process).
        self._seed = zlib.crc32(meter_id.encode())

    # -- register map -----------------------------------------------------------------------

    def _layout(self) -> dict[str, tuple[int, int]]:
        """Per register table: (first address, register count) spanning every point."""
        spans: dict[str, tuple[int, int]] = {}
        for point in self.points.values():
            first, end = point.address, point.address + point.register_count
            if point.register_type in spans:
                lo, count = spans[point.register_type]
                first, end = min(first, lo), max(end, lo + count)
            spans[point.register_type] = (first, end - first)
        return spans

    def _device(self) -> SimDevice:
        tables: list[list[SimData]] = [[], [], [], []]
        for table, index in _TABLE_INDEX.items():
            first, count = self._blocks.get(table, (0, 1))
            datatype = DataType.BITS if index < 2 else DataType.REGISTERS
            value: Any = False if index < 2 else 0
            tables[index] = [SimData(first, count=count, values=value, datatype=datatype)]
        return SimDevice(
            id=self.unit_id,
            simdata=(tables[0], tables[1], tables[2], tables[3]),
            action=self._on_request,
        )

    # -- what the meter shows ---------------------------------------------------------------

    def counter_modulus(self, point: ModbusPoint) -> float | None:
        """Where a counter point wraps, in the point's unit."""
        if self.counter.modulus_kwh is not None:
            return self.counter.modulus_kwh / ENERGY_UNITS_TO_KWH[point.unit]
        return point.effective_counter_modulus

    def counter_value(self, point: ModbusPoint, t_ns: int) -> float:
        """The counter as this point shows it at ``t_ns``, in the point's unit."""
        true_kwh = self.machine.energy_kwh_at(t_ns)
        shown = (true_kwh + self.counter.offset_kwh) / ENERGY_UNITS_TO_KWH[point.unit]
        modulus = self.counter_modulus(point)
        if modulus is not None:
            shown %= modulus
        if not point.type.startswith("float"):
            # An integer register holds whole counts: it shows the last completed count.
            shown = math.floor(shown / point.scale) * point.scale
        return shown

    def shown_counter_kwh(self, t_ns: int | None = None) -> float:
        """The energy point's value at ``t_ns`` (default now) in kWh, before register encoding."""
        t = t_ns if t_ns is not None else self.machine.clock.now_ns()
        point = self.points[self.energy_point]
        return self.counter_value(point, t) * ENERGY_UNITS_TO_KWH[point.unit]

    def point_value(self, name: str, point: ModbusPoint, t_ns: int | None = None) -> float:
        """The value ``point`` shows at ``t_ns`` (default now), in the point's unit."""
        t = t_ns if t_ns is not None else self.machine.clock.now_ns()
        if point.role is PointRole.STATE:
            return float(STATE_CODES[self.machine.state_at(t)])
        if point.unit in ENERGY_UNITS_TO_KWH:
            # Import and total counters: this plant imports only, so both show the counter.
            if point.role is PointRole.ENERGY or "total" in name or "import" in name:
                return self.counter_value(point, t)
            return 0.0  # export / reactive counters
        power_kw = self.machine.power_kw_at(t)
        if point.unit in POWER_UNITS_TO_KW:
            return power_kw / POWER_UNITS_TO_KW[point.unit]
        # Grid noise changes once a second and is a function of the instant, so a frozen
        # meter (filled at its freeze instant) repeats it exactly.
        grid = random.Random(self._seed * 1_000_003 + t // NS_PER_S)
        if point.unit == "V":
            return _NOMINAL_VOLTAGE_V + grid.uniform(-1.5, 1.5)
        if point.unit == "A":  # per phase of a balanced three-phase load
            return power_kw * 1000.0 / (3 * _NOMINAL_VOLTAGE_V * _POWER_FACTOR)
        if point.unit == "Hz":
            return 50.0 + grid.uniform(-0.02, 0.02)
        if point.unit == "PF":
            return _POWER_FACTOR
        return 0.0

    def fill(self, registers: list[int], start_address: int, table: str, t_ns: int) -> None:
        """Write every point of ``table`` into the block that starts at ``start_address``."""
        for name, point in self.points.items():
            if point.register_type != table:
                continue
            offset = point.address - start_address
            if offset < 0 or offset + point.register_count > len(registers):
                continue
            words = encode_value(self.point_value(name, point, t_ns), point)
            registers[offset : offset + len(words)] = words
        self.last_fill_ns = t_ns

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        while self.silent and self._server is not None:  # noqa: ASYNC110 (a plain flag)
            await asyncio.sleep(0.05)  # the meter hangs: the client times out
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # a power meter is read-only here
        table = _FUNCTION_TABLE.get(function_code)
        if table not in ("holding", "input"):
            return None
        # One instant for the whole reply: energy, power and state agree with each other.
        now = self.machine.clock.now_ns() if self.frozen_at_ns is None else self.frozen_at_ns
        self.fill(registers, start_address, table, now)
        return None

    # -- lifecycle and faults ---------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = ModbusTcpServer(
            context=[self._device()], address=(HOST, self.port), ignore_missing_devices=True
        )
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus reports a failed bind this way
            self._server = None
            raise OSError(f"meter {self.id}: cannot listen on {HOST}:{self.port} ({exc})") from exc

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown()  # type: ignore[no-untyped-call]

    async def set_down(self, down: bool) -> None:
        """Close (True) or reopen (False, same port) the meter's port."""
        if down:
            await self.stop()
        else:
            await self.start()

    def set_silent(self, silent: bool) -> None:
        self.silent = silent

    @property
    def frozen(self) -> bool:
        return self.frozen_at_ns is not None

    def set_frozen(self, frozen: bool) -> None:
        """Freeze: every register keeps showing this instant (the truth keeps counting)."""
        if not frozen:
            self.frozen_at_ns = None
        elif self.frozen_at_ns is None:
            self.frozen_at_ns = self.machine.clock.now_ns()

    def set_state(self, state: str, at_ns: int | None = None) -> int:
        """Change the machine's state (the PLC register follows); returns the instant used."""
        return self.machine.set_state(state, at_ns)

    def reset_counter(self) -> None:
        """The counter restarts at 0, as after a power cycle."""
        self.counter.offset_kwh = -self.machine.energy_kwh_now()

    def jump_counter_to(self, shown_kwh: float) -> None:
        """Make the counter show ``shown_kwh`` now (e.g. just below its modulus)."""
        self.counter.offset_kwh = shown_kwh - self.machine.energy_kwh_now()

    def modulus_kwh(self) -> float | None:
        point = self.points[self.energy_point]
        modulus = self.counter_modulus(point)
        return None if modulus is None else modulus * ENERGY_UNITS_TO_KWH[point.unit]

    def jump_to_rollover(self, headroom_kwh: float = ROLLOVER_HEADROOM_KWH) -> float:
        """Put the counter ``headroom_kwh`` below where it wraps; returns the modulus in kWh.
        A float counter without a configured modulus gets the 9,999 kWh of a display register."""
        modulus = self.modulus_kwh()
        if modulus is None:
            self.counter.modulus_kwh = modulus = DEFAULT_FLOAT_MODULUS_KWH
        self.jump_counter_to(modulus - headroom_kwh)
        return modulus

    async def apply_fault(self, kind: FaultKind) -> None:
        """Switch on one fault by name (the command line's ``--fault``)."""
        if kind == "silent":
            self.set_silent(True)
        elif kind == "down":
            await self.set_down(True)
        elif kind == "freeze":
            self.set_frozen(True)
        elif kind == "reset":
            self.reset_counter()
        elif kind == "rollover":
            self.jump_to_rollover()
        else:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")


class SimulatedPlant:
    """Several meters, one process, one clock. ``async with SimulatedPlant() as plant: ...``"""

    def __init__(self, clock: Clock | None = None, truth_dir: Path | None = None) -> None:
        self.clock = clock or SystemClock()
        self.truth_dir = truth_dir
        self.meters: dict[str, MeterSimulator] = {}

    def add_meter(
        self,
        meter_id: str,
        machine_type: str | MachineProfile = "laser-cutter",
        *,
        profile: str = "sdm630",
        port: int | None = None,
        unit_id: int = 1,
        initial_kwh: float = 25.0,
        seed: int | None = None,
        counter_modulus_kwh: float | None = None,
        state: str = "idle",
        state_address: int = STATE_REGISTER,
        points: Mapping[str, Mapping[str, Any]] | None = None,
        noise_step_s: float = 0.5,
    ) -> MeterSimulator:
        if meter_id in self.meters:
            raise ValueError(f"meter {meter_id!r} already exists")
        if isinstance(machine_type, str):
            if machine_type not in PROFILES:
                raise ValueError(
                    f"unknown machine type {machine_type!r} (known: {', '.join(PROFILES)})"
                )
            machine_type = PROFILES[machine_type]
        taken = {meter.port for meter in self.meters.values()}
        if port is not None and port in taken:
            raise ValueError(f"port {port} is already used by another simulated meter")
        while port is None or port in taken:
            # Two free_port() calls can return the same port (it is free until bound):
            # with dozens of meters that happens, so draw again.
            port = free_port()
        log_file = self.truth_dir / f"{meter_id}.jsonl" if self.truth_dir else None
        machine = SimulatedMachine(
            machine_type,
            self.clock,
            seed=seed if seed is not None else len(self.meters) + 1,
            initial_kwh=initial_kwh,
            state=state,
            noise_step_s=noise_step_s,
            truth_log=log_file,
        )
        meter = MeterSimulator(
            meter_id,
            machine,
            profile=profile,
            port=port,
            unit_id=unit_id,
            counter_modulus_kwh=counter_modulus_kwh,
            state_address=state_address,
            points=points,
        )
        self.meters[meter_id] = meter
        return meter

    def meter(self, meter_id: str) -> MeterSimulator:
        return self.meters[meter_id]

    def port_of(self, meter_id: str) -> int:
        return self.meters[meter_id].port

    async def start(self) -> None:
        """Start every meter not yet serving (meters added later can be started on their own)."""
        await asyncio.gather(*(meter.start() for meter in self.meters.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(meter.stop() for meter in self.meters.values()))
        for meter in self.meters.values():
            meter.machine.close()

    async def __aenter__(self) -> SimulatedPlant:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


# -- plant files and the command line ------------------------------------------------------


class PlantMeterSpec(BaseModel):
    """One meter of a ``--plant`` YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    profile: str = "sdm630"
    port: int | None = Field(default=None, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    machine: str = "laser-cutter"  # a machine type of simulators.machines.PROFILES
    power_kw: dict[str, float] | None = None  # per state, replaces the machine type's levels
    noise: float = Field(default=0.05, ge=0, lt=1)
    initial_kwh: float = Field(default=25.0, ge=0)
    state: str = "idle"
    state_address: int = Field(default=STATE_REGISTER, ge=0, le=65535)
    counter_modulus_kwh: float | None = Field(default=None, gt=0)
    points: dict[str, dict[str, Any]] | None = None
    faults: list[FaultKind] = Field(default_factory=list)
    seed: int | None = None


class PlantFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meters: list[PlantMeterSpec] = Field(min_length=1)


def load_plant_file(path: Path) -> PlantFile:
    try:
        return PlantFile.model_validate(load_yaml_file(path))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from None


def add_from_spec(plant: SimulatedPlant, spec: PlantMeterSpec) -> MeterSimulator:
    if spec.machine not in PROFILES:
        raise ValueError(f"meter {spec.id}: unknown machine {spec.machine!r}")
    machine: MachineProfile = PROFILES[spec.machine]
    if spec.power_kw is not None:
        levels = {**machine.power_kw, **spec.power_kw}
        machine = MachineProfile(f"{spec.id}-{spec.machine}", levels, spec.noise)
    elif spec.noise != machine.noise:
        machine = MachineProfile(machine.name, dict(machine.power_kw), spec.noise)
    return plant.add_meter(
        spec.id,
        machine,
        profile=spec.profile,
        port=spec.port,
        unit_id=spec.unit_id,
        initial_kwh=spec.initial_kwh,
        seed=spec.seed,
        counter_modulus_kwh=spec.counter_modulus_kwh,
        state=spec.state,
        state_address=spec.state_address,
        points=spec.points,
    )


async def _wander_states(plant: SimulatedPlant, seed: int) -> None:
    """Without an MES, machines change state now and then (CLI only)."""
    rng = random.Random(seed)
    while True:
        await asyncio.sleep(rng.uniform(2.0, 6.0))
        meter = rng.choice(list(plant.meters.values()))
        meter.machine.set_state(rng.choice(["idle", "running", "running", "setup", "off"]))


def _parse_fault(text: str) -> tuple[str, FaultKind]:
    meter_id, _, kind = text.partition("=")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"--fault {text!r}: expected METER=KIND with KIND one of {', '.join(FAULT_KINDS)}"
        )
    return meter_id, kind


def _build(args: argparse.Namespace, truth: Path | None) -> tuple[SimulatedPlant, list[Any]]:
    plant = SimulatedPlant(truth_dir=truth)
    faults: list[tuple[str, FaultKind]] = list(args.fault)
    if args.plant:
        for spec in load_plant_file(Path(args.plant)).meters:
            add_from_spec(plant, spec)
            faults += [(spec.id, kind) for kind in spec.faults]
    machine_types = list(PROFILES)
    for index in range(args.meters):
        plant.add_meter(
            f"meter-{index + 1:03d}",
            machine_types[index % len(machine_types)],
            profile=args.profile,
            port=args.base_port + index if args.base_port else None,
            unit_id=args.unit_id,
            state_address=args.state_address,
        )
    unknown = sorted({meter_id for meter_id, _ in faults} - set(plant.meters))
    if unknown:
        raise ValueError(f"--fault names unknown meters: {', '.join(unknown)}")
    return plant, faults


async def _serve(args: argparse.Namespace) -> None:
    truth = Path(args.truth_dir) if args.truth_dir else None
    if truth:
        truth.mkdir(parents=True, exist_ok=True)
    plant, faults = _build(args, truth)
    async with plant:
        for meter_id, kind in faults:
            await plant.meters[meter_id].apply_fault(kind)
        for meter in plant.meters.values():
            shown = ", ".join(kind for mid, kind in faults if mid == meter.id) or "healthy"
            print(
                f"{meter.id}: {HOST}:{meter.port} unit {meter.unit_id} profile {meter.profile} "
                f"state holding {meter.state_address} machine {meter.machine.profile.name} "
                f"({shown})"
            )
        print(f"state codes: {STATE_CODES}", flush=True)
        if args.ports_file:
            ports = {meter.id: meter.port for meter in plant.meters.values()}
            Path(args.ports_file).write_text(json.dumps(ports, indent=2), encoding="utf-8")
        wander = asyncio.create_task(_wander_states(plant, args.seed)) if args.wander else None
        try:
            if args.duration:
                await asyncio.sleep(args.duration)
            else:
                await asyncio.Event().wait()
        finally:
            if wander is not None:
                wander.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve simulated Modbus TCP power meters on 127.0.0.1, one port per meter"
    )
    parser.add_argument("--meters", type=int, default=0, help="how many generated meters")
    parser.add_argument("--base-port", type=int, default=0, help="first port (default: free ports)")
    parser.add_argument("--profile", default="sdm630", help="register profile of generated meters")
    parser.add_argument("--unit-id", type=int, default=1)
    parser.add_argument("--state-address", type=int, default=STATE_REGISTER)
    parser.add_argument("--plant", default="", help="YAML file listing meters (see PlantMeterSpec)")
    parser.add_argument(
        "--fault",
        type=_parse_fault,
        action="append",
        default=[],
        help=f"METER=KIND at start-up, KIND one of {', '.join(FAULT_KINDS)} (repeatable)",
    )
    parser.add_argument("--truth-dir", default="", help="write ground-truth JSON lines here")
    parser.add_argument("--ports-file", default="", help="write {meter id: port} JSON here")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)"
    )
    parser.add_argument(
        "--no-wander", dest="wander", action="store_false", help="keep machines in their state"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.meters and not args.plant:
        args.meters = 5
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
