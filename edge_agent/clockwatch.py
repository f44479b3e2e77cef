"""What the agent's clock saw, made visible: record flags, the status message, persistence.

:class:`ClockWatch` checks the :class:`~edge_agent.clock.SteadyClock` every second (so steps
and synchronisation changes are seen while nothing else asks the time), reports
``clock_unsynchronised`` and ``clock_offset`` problems in the retained status message and saves
the clock journal in the store's ``agent_state`` table (key ``clock_journal``), so that a
restart still flags the records of orders that ran through a step or an unsynchronised period.
:func:`clock_flags` turns the journal into the flags of one record's window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from edge_agent.attribution.model import Flag
from edge_agent.clock import Clock, SteadyClock
from edge_agent.domain import NS_PER_S, iso_from_ns
from edge_agent.errors import StoreError

log = logging.getLogger(__name__)

STATE_KEY = "clock_journal"
_WATCH_INTERVAL_S = 1.0
# While the clock is unsynchronised, the period's end is saved this often (a crash forgets at
# most this much of it).
_SAVE_OPEN_PERIOD_S = 60.0

UNSYNCHRONISED = "clock_unsynchronised"
STEP = "clock_step"
OFFSET = "clock_offset"


class StateStore(Protocol):
    async def get_state(self, key: str) -> str | None: ...
    async def set_state(self, key: str, value: str) -> None: ...


ReportProblem = Callable[[str, str | None], None]


def clock_flags(clock: Clock, start_ns: int, end_ns: int, now_ns: int) -> tuple[Flag, ...]:
    """Flags for a record of [start, end] made at ``now_ns``: ``clock_unsynchronised`` when the
    window overlaps a period the kernel said the clock was not synchronised, or the record is
    made in one; one ``clock_step`` per step inside the window."""
    if not isinstance(clock, SteadyClock):
        return ()
    journal = clock.journal
    flags: list[Flag] = []
    periods = journal.unsynchronised_between(start_ns, end_ns, now_ns)
    made_in = journal.unsynchronised_since
    if made_in is not None and (made_in, max(now_ns, made_in)) not in periods:
        periods.append((made_in, max(now_ns, made_in)))
    if periods:
        first, last = periods[0][0], max(end for _, end in periods)
        until = (
            "and still when the record was made"
            if made_in is not None
            else f"to {iso_from_ns(last)}"
        )  # no 'now' in the text: a recomputation must not differ by it alone
        count = f" ({len(periods)} periods)" if len(periods) > 1 else ""
        flags.append(
            Flag(
                UNSYNCHRONISED,
                "the gateway's clock was not synchronised (kernel: TIME_ERROR) from "
                f"{iso_from_ns(first)} {until}{count}: timestamps of readings may be off",
                first,
            )
        )
    for step in journal.steps_between(start_ns, end_ns):
        flags.append(Flag(STEP, step.describe(), step.at_ns))
    return tuple(flags)


class ClockWatch:
    def __init__(
        self, clock: SteadyClock, store: StateStore, report_problem: ReportProblem | None = None
    ) -> None:
        self._clock = clock
        self._store = store
        self._report = report_problem
        self._saved_changes = -1
        self._saved_at_s = float("-inf")
        self._reported_offset_ns: int | None = None

    async def load(self) -> None:
        """Merge what an earlier run saved into the clock's journal."""
        text = await self._store.get_state(STATE_KEY)
        if text is None:
            return
        try:
            self._clock.journal.merge_json(text)
        except ValueError as exc:
            log.warning("clock journal from the last run ignored: %s", exc)

    async def save(self) -> None:
        journal = self._clock.journal
        changes = journal.changes
        await self._store.set_state(STATE_KEY, journal.to_json(self._clock.now_ns()))
        self._saved_changes = changes
        self._saved_at_s = self._clock.monotonic_s()

    async def tick(self) -> None:
        """One check: compare the clocks, update the status, save when something changed."""
        clock = self._clock
        clock.check()
        self.report()
        journal = clock.journal
        open_due = (
            journal.unsynchronised_since is not None
            and clock.monotonic_s() - self._saved_at_s >= _SAVE_OPEN_PERIOD_S
        )
        if journal.changes != self._saved_changes or open_due:
            try:
                await self.save()
            except StoreError as exc:  # tried again next tick; never stops the agent
                log.warning("clock journal not saved: %s", exc)

    def report(self) -> None:
        if self._report is None:
            return
        clock = self._clock
        since = clock.journal.unsynchronised_since
        self._report(
            UNSYNCHRONISED,
            None
            if since is None
            else f"the system clock is not synchronised (adjtimex: TIME_ERROR) since "
            f"{iso_from_ns(since)}: records are flagged {UNSYNCHRONISED}; check NTP "
            "(timedatectl, chronyc tracking) or set clock.check_sync: false",
        )
        offset, reported = clock.offset_ns, self._reported_offset_ns
        if abs(offset) <= clock.step_threshold_ns:
            self._reported_offset_ns = None
        elif reported is None or abs(offset - reported) > clock.step_threshold_ns:
            self._reported_offset_ns = offset  # drift alone does not republish the status
        if self._reported_offset_ns is None:
            self._report(OFFSET, None)
            return
        steps = clock.journal.steps
        self._report(
            OFFSET,
            f"the system clock is {self._reported_offset_ns / NS_PER_S:+.3f} s off the agent's "
            "time"
            + (f" since a step at {iso_from_ns(steps[-1].at_ns)}" if steps else "")
            + ": the agent keeps its own time until NTP synchronises the system clock or the "
            "agent restarts (then it adopts the system clock)",
        )

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            await self.tick()
