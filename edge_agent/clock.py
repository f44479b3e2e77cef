"""The only module that reads time. The shell asks a Clock and passes ``now`` into the core."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock UTC time in epoch nanoseconds (timestamps of samples and records)."""
        ...

    def monotonic_s(self) -> float:
        """Monotonic seconds, for deadlines and durations (immune to NTP steps)."""
        ...

    async def sleep_until(self, monotonic_deadline_s: float) -> None: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic_s(self) -> float:
        return time.monotonic()

    async def sleep_until(self, monotonic_deadline_s: float) -> None:
        delay = monotonic_deadline_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)


class FakeClock:
    """A clock tests drive by hand: ``advance`` moves both wall and monotonic time."""

    def __init__(self, start_ns: int = 1_767_225_600_000_000_000, start_monotonic_s: float = 0.0):
        self._wall_ns = start_ns
        self._mono_s = start_monotonic_s

    def now_ns(self) -> int:
        return self._wall_ns

    def monotonic_s(self) -> float:
        return self._mono_s

    def advance(self, seconds: float) -> None:
        self._wall_ns += round(seconds * 1e9)
        self._mono_s += seconds

    async def sleep_until(self, monotonic_deadline_s: float) -> None:
        if monotonic_deadline_s > self._mono_s:
            self.advance(monotonic_deadline_s - self._mono_s)
        await asyncio.sleep(0)
