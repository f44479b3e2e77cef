"""The agent's run marks: its start, a heartbeat while it runs, its clean stop.

They are what makes the agent's own down-time visible to attribution. After a ``kill -9`` or a
power loss the last heartbeat stands as the end of that run; the time to the next run's start is
a down-time (:meth:`~edge_agent.store.sqlite.Store.agent_downtimes`) in which no meter was read
and no MES event handled, so an order boundary inside it is an estimate, never "measured".

The start is marked before open orders are resumed (their records need the down-time that just
ended) and logged with the previous run's end: WARNING when that run was killed, so an operator
sees crash loops in the log.
"""

from __future__ import annotations

import asyncio
import logging

from edge_agent.clock import Clock
from edge_agent.domain import NS_PER_S, iso_from_ns
from edge_agent.errors import StoreError
from edge_agent.store import Store
from edge_agent.store.runs import AgentRun

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class RunMarks:
    def __init__(self, store: Store, clock: Clock, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._store = store
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self.start_ns: int | None = None
        self.previous: AgentRun | None = None  # the run before this one, as it ended
        self._failing = False

    async def start(self) -> AgentRun | None:
        """Mark this run's start; returns the previous run (None on a first start)."""
        self.start_ns = start_ns = self._clock.now_ns()
        self.previous = previous = await self._store.record_run_start(start_ns)
        if previous is not None and previous.alive_ns < start_ns:
            down_s = (start_ns - previous.alive_ns) / NS_PER_S
            if previous.clean:
                log.info(
                    "the agent was stopped at %s, down for %.1f s",
                    iso_from_ns(previous.alive_ns),
                    down_s,
                )
            else:
                log.warning(
                    "the last run (started %s) ended without a clean stop (killed, crashed or "
                    "power lost); last sign of life %s, down for %.1f s: order boundaries in "
                    "that time are estimates",
                    iso_from_ns(previous.start_ns),
                    iso_from_ns(previous.alive_ns),
                    down_s,
                )
        return previous

    async def beat(self) -> None:
        """The agent is alive now."""
        if self.start_ns is None:
            return
        await self._store.record_run_alive(self.start_ns, self._clock.now_ns())

    async def stop(self) -> None:
        """A clean stop: the run ends now. Never raises (the shutdown goes on)."""
        if self.start_ns is None:
            return
        try:
            await self._store.record_run_alive(self.start_ns, self._clock.now_ns(), clean=True)
        except StoreError as exc:
            log.warning("the agent's stop was not recorded (its last heartbeat stands): %s", exc)

    async def run(self) -> None:
        """Heartbeat until cancelled. A failed write is logged, retried, never fatal: a missed
        heartbeat only makes a later down-time look longer."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self.beat()
            except StoreError as exc:
                if not self._failing:
                    log.warning("heartbeat not recorded: %s", exc)
                self._failing = True
            else:
                self._failing = False
