"""The agent's own runs and the down-times between them, as kept in ``agent_state``.

Each run has one key, ``agent_run/<start in epoch ns, 20 digits>`` (so the keys sort by start),
whose value is JSON ``{"alive_ns": …, "clean": …}``: the run's last sign of life — refreshed by
a heartbeat while it runs, set to the stop by a clean stop (``clean`` true). A run that was
killed (kill -9, power loss, the OOM killer) keeps its last heartbeat as its end.

Between one run's end and the next run's start nobody read the meters and no MES event was
handled: an order boundary there was not read on its event, so attribution makes it an estimate
(``MeterSeries.outages``). Pure code; :class:`~edge_agent.store.sqlite.Store` does the I/O.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.domain import NS_PER_S

RUN_KEY_PREFIX = "agent_run/"
# The first key after every run key ('0' follows '/'): run keys are [PREFIX, END).
RUN_KEY_END = "agent_run0"
_KEY_DIGITS = 20  # epoch ns fit in 19 digits until the year 2286
# Runs are kept while the down-time after them may still matter: a late MES event recomputes an
# order from its stored samples days later. A crash loop must not grow the table without end.
RUN_HISTORY_NS = 8 * 86_400 * NS_PER_S
RUN_HISTORY_MAX = 10_000


@dataclass(frozen=True, slots=True)
class AgentRun:
    start_ns: int
    alive_ns: int  # the last sign of life: a heartbeat, or the stop of a clean stop
    clean: bool  # stopped cleanly (SIGTERM / SIGINT); False while running or after a kill

    @property
    def key(self) -> str:
        return run_key(self.start_ns)

    def value(self) -> str:
        return json.dumps({"alive_ns": self.alive_ns, "clean": self.clean})


def run_key(start_ns: int) -> str:
    return f"{RUN_KEY_PREFIX}{max(start_ns, 0):0{_KEY_DIGITS}d}"


def parse_run(key: str, value: str) -> AgentRun | None:
    """The run stored under ``key``; None for a key or value this module did not write."""
    digits = key.removeprefix(RUN_KEY_PREFIX)
    if digits == key or not digits.isdigit():
        return None
    try:
        body = json.loads(value)
        alive_ns, clean = body["alive_ns"], body["clean"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(alive_ns, int) or not isinstance(clean, bool):
        return None
    start_ns = int(digits)
    return AgentRun(start_ns, max(alive_ns, start_ns), clean)


def downtimes(runs: Iterable[AgentRun], since_ns: int, until_ns: int) -> list[tuple[int, int]]:
    """The intervals between one run's last sign of life and the next run's start that overlap
    [since, until], oldest first.

    A next run that started before the previous one's last sign of life (the wall clock was set
    back between the runs) leaves no down-time: nothing can be said about that gap.
    """
    ordered = sorted(runs, key=lambda run: run.start_ns)
    found = []
    for previous, following in itertools.pairwise(ordered):
        down_from, down_to = previous.alive_ns, following.start_ns
        if down_from < down_to and down_from <= until_ns and down_to >= since_ns:
            found.append((down_from, down_to))
    return found
