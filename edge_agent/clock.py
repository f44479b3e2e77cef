"""The only module that reads time. The shell asks a Clock and passes ``now`` into the core.

The agent runs on a :class:`SteadyClock`: wall time read once at start-up and carried forward by
the elapsed-time clock, so a step of the system clock (someone runs ``date -s``, a hypervisor
resets the guest's time) never moves the timestamps of readings and records. The system clock is
compared with it every ``check_interval_s``; a difference that jumps by more than
``step_threshold_s`` between two checks is a *step*, logged and kept in :class:`ClockJournal`:

- the kernel said the clock was **not synchronised** and now says it **is** (NTP's first sync
  after a Raspberry Pi booted without a real-time clock): the step is a correction, the agent
  adopts the system clock (re-anchors);
- otherwise (a synchronised clock stepped, or nobody knows): the agent keeps its own course.

Whether the clock is synchronised comes from ``adjtimex(2)`` (read only, no privileges):
:func:`kernel_synchronised`. The journal also keeps the periods the kernel said it was not;
records overlapping a period or a step are flagged (:mod:`edge_agent.clockwatch`).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.domain import NS_PER_S, iso_from_ns
from edge_agent.libc import libc_function

log = logging.getLogger(__name__)

# adjtimex(2) returns TIME_ERROR while the kernel clock is unsynchronised (STA_UNSYNC or
# STA_CLOCKERR set); TIME_OK..TIME_WAIT (0..4) otherwise.
TIME_ERROR = 5
# struct timex is 208 bytes on 64-bit Linux (less on 32-bit): a larger zeroed buffer has
# modes = 0, which asks and changes nothing.
_TIMEX_BYTES = 512

SyncProbe = Callable[[], bool | None]


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
    """A clock tests drive by hand: ``advance`` moves both wall and monotonic time,
    ``step_wall`` only the wall clock (as ``date -s`` or NTP's step would)."""

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

    def step_wall(self, seconds: float) -> None:
        self._wall_ns += round(seconds * 1e9)

    async def sleep_until(self, monotonic_deadline_s: float) -> None:
        if monotonic_deadline_s > self._mono_s:
            self.advance(monotonic_deadline_s - self._mono_s)
        await asyncio.sleep(0)


# -- is the kernel clock synchronised? ------------------------------------------------------


def _load_adjtimex() -> Callable[[Any], int] | None:
    function: Callable[[Any], int] | None = libc_function(
        "adjtimex", [ctypes.c_void_p], ctypes.c_int
    )
    return function


_adjtimex: Callable[[Any], int] | None = None
_adjtimex_loaded = False


def kernel_synchronised() -> bool | None:
    """True/False as the kernel says (``adjtimex(2)`` with modes 0); None when unknown.

    Unknown: not Linux, no ``adjtimex`` in libc, or the call failed (a seccomp filter). The
    agent never flags on unknown.
    """
    global _adjtimex, _adjtimex_loaded
    if not _adjtimex_loaded:
        _adjtimex, _adjtimex_loaded = _load_adjtimex(), True
    if _adjtimex is None:
        return None
    buffer = ctypes.create_string_buffer(_TIMEX_BYTES)  # zeroed: modes = 0, read only
    try:
        state = _adjtimex(buffer)
    except OSError:
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def elapsed_ns() -> int:
    """Time since boot that never steps and keeps counting through a suspend (CLOCK_BOOTTIME,
    slewed by NTP like the monotonic clock); the monotonic clock where there is none."""
    if _BOOTTIME is not None:
        return time.clock_gettime_ns(_BOOTTIME)
    return time.monotonic_ns()


# -- what the agent saw of the system clock --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockStep:
    """One step of the system clock against the agent's time."""

    at_ns: int  # agent time when it was seen (after the jump, when adopted)
    size_ns: int  # how far the system clock jumped (+: forward)
    adopted: bool  # the agent's time jumped with it; else the agent kept its course
    synchronised: bool | None  # the kernel's word before the step

    @property
    def span(self) -> tuple[int, int]:
        """The agent time the step touches: both sides of an adopted jump."""
        if not self.adopted:
            return self.at_ns, self.at_ns
        before = self.at_ns - self.size_ns
        return min(before, self.at_ns), max(before, self.at_ns)

    def describe(self) -> str:
        size = f"{self.size_ns / NS_PER_S:+.3f} s"
        if self.adopted:
            return (
                f"NTP synchronised the system clock, {size} from the agent's time, after a period "
                "when it was not synchronised; the agent adopted the corrected time: readings "
                "before the step are dated by the unsynchronised clock"
            )
        return f"the system clock stepped by {size}; {self.reason()}: readings are dated as before"

    def reason(self) -> str:
        """Why the agent did what it did."""
        if self.adopted:
            return "NTP synchronised a clock known to be unsynchronised: the agent adopted it"
        return {
            True: "it was synchronised, so the agent kept its own time",
            False: "it was not synchronised, so the agent kept its own time until NTP "
            "synchronises it",
            None: "whether it was synchronised is unknown, so the agent kept its own time",
        }[self.synchronised]


class ClockJournal:
    """Steps and unsynchronised periods of the system clock, in the agent's time.

    Bounded to the newest ``MAX_ENTRIES`` of each. ``changes`` counts modifications, so a
    watcher can persist it only when it moved.
    """

    MAX_ENTRIES = 256

    def __init__(self) -> None:
        self.steps: list[ClockStep] = []
        self.periods: list[tuple[int, int]] = []  # closed [start, end] periods
        self.unsynchronised_since: int | None = None  # the open period's start
        self.steps_seen = 0  # steps seen by this process
        self.changes = 0

    def add_step(self, step: ClockStep) -> None:
        self.steps.append(step)
        del self.steps[: -self.MAX_ENTRIES]
        self.steps_seen += 1
        self.changes += 1

    def open_period(self, start_ns: int) -> None:
        if self.unsynchronised_since is None:
            self.unsynchronised_since = start_ns
            self.changes += 1

    def close_period(self, end_ns: int, shift_ns: int = 0) -> None:
        """End the open period; with ``shift_ns`` (the agent adopted a step of that size) it is
        also kept moved by the shift, so it covers the times before the step in both the old
        and the corrected dating."""
        start = self.unsynchronised_since
        if start is None:
            return
        self.unsynchronised_since = None
        self.periods.append((start, max(start, end_ns)))
        if shift_ns:
            self.periods.append((start + shift_ns, max(start, end_ns) + shift_ns))
        del self.periods[: -self.MAX_ENTRIES]
        self.changes += 1

    def unsynchronised_between(
        self, start_ns: int, end_ns: int, now_ns: int
    ) -> list[tuple[int, int]]:
        """Periods overlapping [start, end] (the open one runs until ``now_ns``)."""
        periods = list(self.periods)
        if self.unsynchronised_since is not None:
            periods.append((self.unsynchronised_since, max(now_ns, self.unsynchronised_since)))
        return sorted(p for p in periods if p[0] <= end_ns and p[1] >= start_ns)

    def steps_between(self, start_ns: int, end_ns: int) -> list[ClockStep]:
        return [s for s in self.steps if s.span[0] <= end_ns and s.span[1] >= start_ns]

    def to_json(self, now_ns: int) -> str:
        """What a restart must not forget; the open period is saved as ending ``now_ns``."""
        periods = list(self.periods)
        if self.unsynchronised_since is not None:
            periods.append((self.unsynchronised_since, max(now_ns, self.unsynchronised_since)))
        return json.dumps(
            {
                "version": 1,
                "steps": [[s.at_ns, s.size_ns, s.adopted, s.synchronised] for s in self.steps],
                "unsynchronised": [list(p) for p in periods[-self.MAX_ENTRIES :]],
            }
        )

    def merge_json(self, text: str) -> None:
        """Add what an earlier run saved (its open period ends where it was last saved).

        Raises ValueError for a value this version cannot read.
        """
        try:
            body = json.loads(text)
            steps = [
                ClockStep(int(at), int(size), bool(adopted), None if sync is None else bool(sync))
                for at, size, adopted, sync in body["steps"]
            ]
            periods = [(int(a), int(b)) for a, b in body["unsynchronised"]]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable clock journal: {exc!r}") from exc
        self.steps = [*(s for s in steps if s not in self.steps), *self.steps][-self.MAX_ENTRIES :]
        self.periods = [*(p for p in periods if p not in self.periods), *self.periods][
            -self.MAX_ENTRIES :
        ]
        self.changes += 1


class SteadyClock:
    """Wall time anchored once, carried forward by elapsed time; steps detected, not followed.

    ``base`` supplies the system's wall clock (``now_ns``), the monotonic clock for deadlines
    and ``sleep_until``. ``elapsed`` is the steady source that carries the agent's time (by
    default ``base.monotonic_s``; :meth:`system` uses CLOCK_BOOTTIME). ``sync`` says whether
    the system clock is synchronised (None: unknown, never flagged). Not thread-safe: one
    event loop.
    """

    def __init__(
        self,
        base: Clock,
        *,
        sync: SyncProbe | None = None,
        elapsed: Callable[[], int] | None = None,
        step_threshold_s: float = 1.0,
        check_interval_s: float = 0.5,
    ) -> None:
        if step_threshold_s <= 0 or check_interval_s < 0:
            raise ValueError("step_threshold_s must be > 0 and check_interval_s >= 0")
        self._base = base
        self._sync = sync
        self._elapsed = elapsed or (lambda: round(base.monotonic_s() * NS_PER_S))
        self.step_threshold_ns = round(step_threshold_s * NS_PER_S)
        self._check_every_ns = round(check_interval_s * NS_PER_S)
        self.journal = ClockJournal()
        now_elapsed = self._elapsed()
        self._anchor_wall_ns = base.now_ns()
        self._anchor_elapsed_ns = now_elapsed
        self._offset_ns = 0  # system clock minus agent time at the last check
        self._last_check_ns = self._anchor_wall_ns  # agent time of the last check
        self._next_check_ns = now_elapsed + self._check_every_ns
        self.synchronised = self._read_sync()
        if self.synchronised is False:
            self._unsynchronised(self._anchor_wall_ns)

    @classmethod
    def system(cls, *, check_sync: bool = True, step_threshold_s: float = 1.0) -> SteadyClock:
        """The production clock: the system's wall clock, CLOCK_BOOTTIME, adjtimex."""
        return cls(
            SystemClock(),
            sync=kernel_synchronised if check_sync else None,
            elapsed=elapsed_ns,
            step_threshold_s=step_threshold_s,
        )

    # -- Clock ----------------------------------------------------------------------------

    def now_ns(self) -> int:
        elapsed = self._elapsed()
        if elapsed >= self._next_check_ns:
            self._check(elapsed)
        return self._anchor_wall_ns + (elapsed - self._anchor_elapsed_ns)

    def monotonic_s(self) -> float:
        return self._base.monotonic_s()

    async def sleep_until(self, monotonic_deadline_s: float) -> None:
        await self._base.sleep_until(monotonic_deadline_s)

    # -- the comparison with the system clock ---------------------------------------------

    @property
    def offset_ns(self) -> int:
        """System clock minus the agent's time, at the last check."""
        return self._offset_ns

    def check(self) -> None:
        """Compare with the system clock now (the agent's watcher calls it every second)."""
        self._check(self._elapsed())

    def _read_sync(self) -> bool | None:
        if self._sync is None:
            return None
        try:
            return self._sync()
        except Exception:  # a probe must never break the clock
            log.exception("clock synchronisation probe failed; treated as unknown")
            return None

    def _check(self, elapsed: int) -> None:
        self._next_check_ns = elapsed + self._check_every_ns
        wall = self._base.now_ns()
        sync = self._read_sync()
        agent = self._anchor_wall_ns + (elapsed - self._anchor_elapsed_ns)
        offset = wall - agent
        jump = offset - self._offset_ns
        was = self.synchronised
        self.synchronised = sync
        if was is False and sync is True and abs(offset) > self.step_threshold_ns:
            # NTP's first sync corrected a clock known to be wrong: adopt it. Whatever the agent
            # kept its course on while unsynchronised is adopted with it.
            self._anchor_wall_ns, self._anchor_elapsed_ns = wall, elapsed
            self._offset_ns = 0
            self.journal.close_period(agent, shift_ns=offset)
            self.journal.add_step(ClockStep(wall, offset, adopted=True, synchronised=was))
            log.warning(
                "clock step %d: NTP synchronised the system clock, %+.3f s from the agent's time; "
                "the agent adopts the corrected time (%s -> %s); records of the unsynchronised "
                "time are flagged clock_unsynchronised",
                self.journal.steps_seen,
                offset / NS_PER_S,
                _iso(agent),
                _iso(wall),
            )
            self._last_check_ns = wall
            return
        if abs(jump) > self.step_threshold_ns:
            step = ClockStep(agent, jump, adopted=False, synchronised=was)
            self.journal.add_step(step)
            log.warning(
                "clock step %d: the system clock stepped by %+.3f s at %s (agent time; it is now "
                "%+.3f s off the agent's time); %s. Records spanning it are flagged clock_step",
                self.journal.steps_seen,
                jump / NS_PER_S,
                _iso(agent),
                offset / NS_PER_S,
                step.reason(),
            )
        self._offset_ns = offset
        if sync is False and self.journal.unsynchronised_since is None:
            self._unsynchronised(self._last_check_ns)  # it changed after the last check
        elif sync is not False and self.journal.unsynchronised_since is not None:
            self.journal.close_period(agent)
            log.info("the system clock is synchronised again (%s)", _iso(agent))
        self._last_check_ns = agent

    def _unsynchronised(self, since_ns: int) -> None:
        self.journal.open_period(since_ns)
        log.warning(
            "the system clock is not synchronised (adjtimex: TIME_ERROR) since %s: records are "
            "flagged clock_unsynchronised until NTP synchronises it (check timedatectl or "
            "chronyc tracking; clock.check_sync: false turns the check off)",
            _iso(since_ns),
        )


def _iso(ts_ns: int) -> str:
    try:
        return iso_from_ns(ts_ns)
    except (ValueError, OverflowError, OSError):
        return f"{ts_ns} ns"
