"""Simulated machines: a state, a power that follows it, and an energy counter that is the
exact integral of that power — the ground truth tests compare the agent with.

Power is piecewise constant: it changes only at state changes and on a fixed noise grid
(every ``noise_step_s``, deterministic from the seed). The true energy at any past instant is
therefore exact: the energy at the last change plus power × elapsed time.
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_agent.clock import Clock
from edge_agent.domain import NS_PER_S

NS_PER_HOUR = 3600 * NS_PER_S
STATE_CODES = {"off": 0, "idle": 1, "running": 2, "setup": 3, "fault": 4}


@dataclass(frozen=True, slots=True)
class MachineProfile:
    """Typical power per state in kW, and the relative noise around it."""

    name: str
    power_kw: dict[str, float]
    noise: float = 0.05


PROFILES = {
    "laser-cutter": MachineProfile("laser-cutter", {"off": 0.0, "idle": 3.0, "setup": 4.0, "running": 22.0, "fault": 1.0}),
    "press-brake": MachineProfile("press-brake", {"off": 0.0, "idle": 1.5, "setup": 2.0, "running": 8.0, "fault": 0.5}),
    "welding-robot": MachineProfile("welding-robot", {"off": 0.0, "idle": 0.8, "setup": 1.2, "running": 12.0, "fault": 0.3}),
    "paint-booth": MachineProfile("paint-booth", {"off": 0.0, "idle": 4.0, "setup": 5.0, "running": 18.0, "fault": 2.0}),
    "assembly": MachineProfile("assembly", {"off": 0.0, "idle": 0.5, "setup": 0.8, "running": 2.0, "fault": 0.2}),
    "air-compressor": MachineProfile("air-compressor", {"off": 0.0, "idle": 5.0, "setup": 5.0, "running": 15.0, "fault": 0.0}),
}  # fmt: skip


class SimulatedMachine:
    def __init__(
        self,
        profile: MachineProfile,
        clock: Clock,
        *,
        seed: int = 0,
        initial_kwh: float = 25.0,
        state: str = "idle",
        noise_step_s: float = 0.5,
        truth_log: Path | None = None,
    ) -> None:
        if state not in STATE_CODES:
            raise ValueError(f"unknown state {state!r}")
        self.profile = profile
        self._clock = clock
        self._seed = seed
        self._step_ns = int(noise_step_s * NS_PER_S)
        start = clock.now_ns()
        self._origin_ns = start
        self._state = state
        # Breakpoints of the piecewise-constant power: (t, energy at t, power from t, state).
        self._times: list[int] = [start]
        self._energies: list[float] = [initial_kwh]
        self._powers: list[float] = [self._power(state, 0)]
        self._states: list[str] = [state]
        self._log: TextIO | None = truth_log.open("a", encoding="utf-8") if truth_log else None
        self._write_log(0)
        # Called with the instant of every state change: a controller that exposes the machine
        # (the OPC UA simulator) updates its variables then, as a PLC does on its next scan.
        self.on_state_change: Callable[[int], None] | None = None

    # -- ground truth -----------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def state(self) -> str:
        return self._state

    def energy_kwh_at(self, t_ns: int) -> float:
        """The true counter value at any instant up to now (exact); before the machine was
        created, its initial value. A future instant is extrapolated at the present power."""
        index = self._segment(t_ns)
        if index < 0:
            return self._energies[0]
        return (
            self._energies[index] + self._powers[index] * (t_ns - self._times[index]) / NS_PER_HOUR
        )

    def state_at(self, t_ns: int) -> str:
        return self._states[max(self._segment(t_ns), 0)]

    def power_kw_at(self, t_ns: int) -> float:
        return self._powers[max(self._segment(t_ns), 0)]

    def breakpoints(self) -> list[tuple[int, str, float, float]]:
        """Every change so far as (t_ns, state, power_kw from t, counter_kwh at t)."""
        self._advance(self._clock.now_ns())
        return list(zip(self._times, self._states, self._powers, self._energies, strict=True))

    def energy_kwh_now(self) -> float:
        return self.energy_kwh_at(self._clock.now_ns())

    def power_kw_now(self) -> float:
        return self.power_kw_at(self._clock.now_ns())

    # -- control ----------------------------------------------------------------------------

    def set_state(self, state: str, at_ns: int | None = None) -> int:
        """Change state at ``at_ns`` (default now); returns the instant used."""
        if state not in STATE_CODES:
            raise ValueError(f"unknown state {state!r} (known: {', '.join(STATE_CODES)})")
        t_ns = self._clock.now_ns() if at_ns is None else at_ns
        t_ns = max(t_ns, self._times[-1])
        self._advance(t_ns)
        self._state = state
        self._append(t_ns, self._power(state, self._grid_index(t_ns)))
        if self.on_state_change is not None:
            self.on_state_change(t_ns)
        return t_ns

    def close(self) -> None:
        """Complete the truth log up to now and close it."""
        if self._log is not None:
            self._advance(self._clock.now_ns())
            self._log.close()
            self._log = None

    # -- internals --------------------------------------------------------------------------

    def _segment(self, t_ns: int) -> int:
        """Index of the breakpoint in force at ``t_ns`` (-1 before the first one)."""
        # Never materialise breakpoints past the present: a later set_state must still land
        # at its own instant, not be pushed behind a speculative noise step.
        self._advance(min(t_ns, max(self._clock.now_ns(), self._times[-1])))
        return bisect.bisect_right(self._times, t_ns) - 1

    def _grid_index(self, t_ns: int) -> int:
        return (t_ns - self._origin_ns) // self._step_ns

    def _power(self, state: str, grid_index: int) -> float:
        base = self.profile.power_kw[state]
        if base == 0:
            return 0.0
        jitter = random.Random(self._seed * 1_000_003 + grid_index).uniform(-1.0, 1.0)
        return base * (1.0 + self.profile.noise * jitter)

    def _advance(self, t_ns: int) -> None:
        """Add the noise-grid breakpoints up to ``t_ns``."""
        while True:
            last = self._times[-1]
            next_grid = self._origin_ns + (self._grid_index(last) + 1) * self._step_ns
            if next_grid > t_ns:
                return
            self._append(next_grid, self._power(self._state, self._grid_index(next_grid)))

    def _append(self, t_ns: int, power: float) -> None:
        last = len(self._times) - 1
        energy = (
            self._energies[last] + self._powers[last] * (t_ns - self._times[last]) / NS_PER_HOUR
        )
        if t_ns == self._times[last]:
            self._powers[last], self._states[last] = power, self._state
            self._write_log(last)
            return
        self._times.append(t_ns)
        self._energies.append(energy)
        self._powers.append(power)
        self._states.append(self._state)
        self._write_log(last + 1)

    def _write_log(self, index: int) -> None:
        if self._log is not None:
            record = {
                "t_ns": self._times[index],
                "machine": self.profile.name,
                "state": self._states[index],
                "power_kw": self._powers[index],
                "counter_kwh": self._energies[index],
            }
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()


def read_truth_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a machine wrote: one per change (t_ns, state, power_kw, counter_kwh).

    A row that rewrites an instant already logged (a state change exactly on a noise step)
    supersedes it, so the result has one row per instant, in time order."""
    rows: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                rows[int(row["t_ns"])] = row
    return [rows[t] for t in sorted(rows)]
