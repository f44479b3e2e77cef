"""The demo plant of DESIGN §1 — an enclosure line — as data, and its edge-agent configuration.

Laser cutter → press brake → welding robot → paint booth → assembly, each with its own power
meter (SDM630 profile) on a simulated Modbus TCP port, and the machine state on holding 1000.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simulators.machines import PROFILES, STATE_CODES
from simulators.modbus_meters import SimulatedPlant

LINE = "enclosure-line"
SITE = "osaka-plant"
# Japan's national average grid factor is about 0.43-0.45 kg CO2e/kWh; the demo labels its
# factor as simulated so nobody mistakes it for a published one.
GRID_FACTOR = {
    "value": 0.434,
    "unit": "kgCO2e/kWh",
    "source": "Simulated grid average (demo)",
    "version": "demo-2026",
    "primary": False,
}


@dataclass(frozen=True, slots=True)
class Step:
    """One process step: the equipment, its meter and the machine type behind the meter."""

    equipment_id: str
    machine_type: str  # a key of simulators.machines.PROFILES (power per state)
    meter_id: str
    max_power_kw: float
    name: str
    line: str = LINE
    profile: str = "sdm630"

    @property
    def power_kw(self) -> dict[str, float]:
        return dict(PROFILES[self.machine_type].power_kw)


ENCLOSURE_LINE = (
    Step("laser-cutter", "laser-cutter", "m-laser", 40.0, "Laser cutter (cutting)"),
    Step("press-brake", "press-brake", "m-press", 20.0, "Press brake (bending)"),
    Step("welding-robot", "welding-robot", "m-weld", 25.0, "Welding robot"),
    Step("paint-booth", "paint-booth", "m-paint", 30.0, "Paint booth"),
    Step("assembly", "assembly", "m-assembly", 6.0, "Assembly station"),
)


def plant_spec() -> tuple[Step, ...]:
    """The demo plant of DESIGN §1, in process order."""
    return ENCLOSURE_LINE


def build_plant(
    plant: SimulatedPlant, steps: tuple[Step, ...] = ENCLOSURE_LINE, *, base_port: int | None = None
) -> None:
    """Add one simulated meter per step (small initial counters keep float32 resolution fine),
    on ``base_port``, ``base_port + 1``… when given (a container's fixed ports), else free ports."""
    for index, step in enumerate(steps):
        plant.add_meter(
            step.meter_id,
            step.machine_type,
            profile=step.profile,
            port=None if base_port is None else base_port + index,
            seed=index + 1,
            initial_kwh=12.0 + index,
        )


def simulator_plant_file(
    plant: SimulatedPlant, steps: tuple[Step, ...] = ENCLOSURE_LINE
) -> dict[str, Any]:
    """The same plant as a ``python -m simulators.modbus_meters --plant`` file, on its ports."""
    return {
        "meters": [
            {
                "id": step.meter_id,
                "profile": step.profile,
                "port": plant.port_of(step.meter_id),
                "machine": step.machine_type,
                "initial_kwh": 12.0 + index,
                "seed": index + 1,
            }
            for index, step in enumerate(steps)
        ]
    }


def agent_config(
    plant: SimulatedPlant,
    *,
    mqtt_host: str,
    mqtt_port: int,
    store_path: Path,
    steps: tuple[Step, ...] = ENCLOSURE_LINE,
    interval_s: float = 1.0,
    final_timeout_s: float = 10.0,
    emission_factor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An edge-agent configuration (as a mapping) for the simulated plant's ports."""
    state_map = {code: name for name, code in STATE_CODES.items()}
    return {
        "site": {"id": SITE, "name": "Osaka enclosure plant (simulated)", "country": "JP"},
        "meters": [
            {
                "id": step.meter_id,
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": plant.port_of(step.meter_id),
                "unit_id": plant.meters[step.meter_id].unit_id,
                "profile": step.profile,
                "interval_s": interval_s,
                "timeout_s": 0.5,
                "retries": 1,
                "points": {
                    "state": {
                        "register": "holding",
                        "address": plant.meters[step.meter_id].state_address,
                        "type": "uint16",
                        "role": "state",
                        "states": state_map,
                    }
                },
            }
            for step in steps
        ],
        "equipment": [
            {
                "id": step.equipment_id,
                "name": step.name,
                "line": step.line,
                "meters": [step.meter_id],
                "max_power_kw": step.max_power_kw,
                "state": {"meter": step.meter_id, "point": "state"},
                "final_timeout_s": final_timeout_s,
            }
            for step in steps
        ],
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "topic_prefix": "acme", "keepalive_s": 10},
        "store": {"path": str(store_path), "batch_max_delay_s": 0.2},
        # The simulated plant runs on the host's clock: whether the host runs NTP must not flag
        # its records (tests/integration/test_clock_steps.py tests the check).
        "clock": {"check_sync": False},
        "emission_factors": {"electricity": dict(emission_factor or GRID_FACTOR)},
        # What `edge-agent export --format pact-v3` needs beyond the records (simulated names).
        "footprint": {
            "company": {
                "name": "Osaka Enclosure Works (simulated)",
                "ids": ["urn:pact:company:customcode:buyer-id:DEMO-0001"],
                "domain": "enclosures.example",
            },
            "site": {"subdivision": "JP-27"},
            "products": {
                "ENCL-400x300": {
                    "name": "Enclosure 400x300",
                    "description": "Sheet-steel enclosure 400 x 300 x 200 mm, powder-coated",
                    "cpc": "42999",
                    "mass_kg": 6.25,
                }
            },
        },
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
