"""The steady clock: steps of the system clock detected, ignored or adopted; the journal."""

from __future__ import annotations

import logging
import sys

import pytest

from edge_agent import clock as clock_module
from edge_agent.clock import (
    ClockJournal,
    ClockStep,
    FakeClock,
    SteadyClock,
    kernel_synchronised,
)
from edge_agent.clockwatch import clock_flags
from edge_agent.domain import NS_PER_S

T0 = 1_800_000_000 * NS_PER_S
HOUR_NS = 3600 * NS_PER_S


class Kernel:
    """What adjtimex would say, set by the test (True, False or None: unknown)."""

    def __init__(self, synchronised: bool | None) -> None:
        self.synchronised = synchronised

    def __call__(self) -> bool | None:
        return self.synchronised


class CountingClock(FakeClock):
    """A FakeClock that counts reads of its wall clock."""

    wall_reads = 0

    def now_ns(self) -> int:
        self.wall_reads += 1
        return super().now_ns()


def steady(
    synchronised: bool | None = True, start_ns: int = T0, step_threshold_s: float = 1.0
) -> tuple[SteadyClock, FakeClock, Kernel]:
    base, kernel = FakeClock(start_ns=start_ns), Kernel(synchronised)
    clock = SteadyClock(base, sync=kernel, step_threshold_s=step_threshold_s)
    return clock, base, kernel


def open_since(clock: SteadyClock) -> int | None:
    return clock.journal.unsynchronised_since


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_steps_of_an_hour_either_way_are_ignored_while_synchronised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.clock")
    clock, base, _ = steady(True)
    base.advance(10)
    assert clock.now_ns() == T0 + 10 * NS_PER_S
    base.step_wall(3600)
    base.advance(1)
    assert clock.now_ns() == T0 + 11 * NS_PER_S  # the agent keeps its course
    assert clock.offset_ns == HOUR_NS
    base.step_wall(-3600)
    base.advance(1)
    assert clock.now_ns() == T0 + 12 * NS_PER_S
    assert clock.offset_ns == 0
    for _ in range(20):  # later checks see no new step
        base.advance(0.5)
        clock.now_ns()
    assert clock.journal.steps == [
        ClockStep(T0 + 11 * NS_PER_S, HOUR_NS, adopted=False, synchronised=True),
        ClockStep(T0 + 12 * NS_PER_S, -HOUR_NS, adopted=False, synchronised=True),
    ]
    assert clock.journal.steps_seen == 2
    assert clock.journal.periods == []
    assert open_since(clock) is None
    warnings = warnings_of(caplog)
    assert len(warnings) == 2  # once per step, naming its size
    assert "stepped by +3600.000 s" in warnings[0]
    assert "kept its own time" in warnings[0]
    assert "stepped by -3600.000 s" in warnings[1]


def test_a_step_is_a_jump_beyond_the_threshold_not_a_drift() -> None:
    clock, base, _ = steady(True)
    for _ in range(5):  # 0.3 s per check: drift (NTP slews it), 1.5 s in all
        base.step_wall(0.3)
        base.advance(0.5)
        clock.now_ns()
    assert clock.journal.steps == []
    assert clock.offset_ns == 1_500_000_000
    base.step_wall(1.2)
    base.advance(0.5)
    clock.now_ns()
    assert [s.size_ns for s in clock.journal.steps] == [1_200_000_000]

    lenient, base, _ = steady(True, step_threshold_s=5.0)
    base.step_wall(4.0)
    base.advance(1)
    lenient.now_ns()
    assert lenient.journal.steps == []
    base.step_wall(-6.0)
    base.advance(1)
    lenient.now_ns()
    assert [s.size_ns for s in lenient.journal.steps] == [-6 * NS_PER_S]


def test_the_first_synchronisation_re_anchors_to_the_system_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Pi booted two hours behind; NTP's first sync steps the clock: the agent adopts it."""
    caplog.set_level(logging.INFO, logger="edge_agent.clock")
    behind = T0 - 2 * HOUR_NS
    clock, base, kernel = steady(False, start_ns=behind)
    assert open_since(clock) == behind
    base.advance(5)
    assert clock.now_ns() == behind + 5 * NS_PER_S
    kernel.synchronised = True
    base.step_wall(7200)
    base.advance(1)
    assert clock.now_ns() == base.now_ns() == T0 + 6 * NS_PER_S  # adopted
    assert clock.offset_ns == 0
    (step,) = clock.journal.steps
    assert step == ClockStep(T0 + 6 * NS_PER_S, 2 * HOUR_NS, adopted=True, synchronised=False)
    assert step.span == (behind + 6 * NS_PER_S, T0 + 6 * NS_PER_S)
    # the unsynchronised period, dated by the old and by the corrected clock
    assert clock.journal.periods == [
        (behind, behind + 6 * NS_PER_S),
        (T0, T0 + 6 * NS_PER_S),
    ]
    assert open_since(clock) is None
    assert any("adopts the corrected time" in w for w in warnings_of(caplog))
    base.advance(10)  # and from now on it follows its new course
    assert clock.now_ns() == T0 + 16 * NS_PER_S


def test_a_step_seen_just_before_the_kernel_says_synchronised_is_adopted_with_it() -> None:
    """ntpd/chrony may step the clock a moment before they clear the kernel's unsynchronised
    status: the step is first kept apart, then adopted when the status says synchronised."""
    clock, base, kernel = steady(False)
    base.step_wall(3600)
    base.advance(1)
    assert clock.now_ns() == T0 + NS_PER_S
    assert clock.journal.steps[-1].adopted is False
    kernel.synchronised = True
    base.advance(1)
    assert clock.now_ns() == base.now_ns() == T0 + 2 * NS_PER_S + HOUR_NS
    assert clock.journal.steps[-1] == ClockStep(
        T0 + 2 * NS_PER_S + HOUR_NS, HOUR_NS, adopted=True, synchronised=False
    )


def test_a_synchronised_clock_set_by_hand_is_not_followed_and_ntp_setting_it_back_changes_nothing() -> (
    None
):
    """``date -s`` on a synchronised clock: the kernel calls it unsynchronised from then on (the
    step clears its NTP state); the agent keeps its course; NTP later steps the clock back."""
    clock, base, kernel = steady(True)
    base.advance(5)
    clock.now_ns()
    base.step_wall(3600)
    kernel.synchronised = False
    base.advance(1)
    assert clock.now_ns() == T0 + 6 * NS_PER_S
    assert open_since(clock) == T0 + 5 * NS_PER_S  # since the check before
    base.advance(30)
    kernel.synchronised = True
    base.step_wall(-3600)
    base.advance(1)
    assert clock.now_ns() == T0 + 37 * NS_PER_S  # no re-anchoring: the times agree again
    assert [(s.size_ns, s.adopted) for s in clock.journal.steps] == [
        (HOUR_NS, False),
        (-HOUR_NS, False),
    ]
    assert clock.journal.periods == [(T0 + 5 * NS_PER_S, T0 + 37 * NS_PER_S)]


def test_unknown_synchronisation_never_flags_nor_adopts() -> None:
    for probe in (None, Kernel(None)):
        base = FakeClock(start_ns=T0)
        clock = SteadyClock(base, sync=probe)
        base.step_wall(-3600)
        base.advance(1)
        assert clock.now_ns() == T0 + NS_PER_S
        assert clock.synchronised is None
        assert open_since(clock) is None
        assert clock.journal.periods == []
        flags = clock_flags(clock, T0, T0 + 2 * NS_PER_S, T0 + 2 * NS_PER_S)
        assert [f.code for f in flags] == ["clock_step"]
        assert "unknown" in flags[0].detail


def test_a_failing_probe_is_unknown() -> None:
    def broken() -> bool | None:
        raise RuntimeError("no adjtimex today")

    clock = SteadyClock(FakeClock(start_ns=T0), sync=broken)
    assert clock.synchronised is None
    clock.check()
    assert clock.synchronised is None


def test_the_system_clock_is_read_once_per_check_interval() -> None:
    base = CountingClock(start_ns=T0)
    clock = SteadyClock(base, sync=Kernel(True), check_interval_s=0.5)
    reads = base.wall_reads
    for _ in range(1000):
        clock.now_ns()
    assert base.wall_reads == reads
    base.advance(0.5)
    for _ in range(1000):
        clock.now_ns()
    assert base.wall_reads == reads + 1


def test_kernel_synchronised_answers_or_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernel_synchronised() in (True, False, None)
    if sys.platform.startswith("linux"):
        assert kernel_synchronised() is not None  # adjtimex(2) read-only needs no privilege
    monkeypatch.setattr(clock_module, "_adjtimex_loaded", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert kernel_synchronised() is None


def test_the_journal_round_trips_and_saves_the_open_period_up_to_now() -> None:
    journal = ClockJournal()
    journal.add_step(ClockStep(T0, HOUR_NS, adopted=False, synchronised=True))
    journal.add_step(ClockStep(T0 + 10, -5 * NS_PER_S, adopted=True, synchronised=False))
    journal.open_period(T0 - 100)
    journal.close_period(T0 - 50)
    journal.open_period(T0 + 100)
    restored = ClockJournal()
    restored.add_step(ClockStep(T0 + 500, NS_PER_S * 2, adopted=False, synchronised=None))
    restored.merge_json(journal.to_json(now_ns=T0 + 200))
    assert restored.steps == [*journal.steps, ClockStep(T0 + 500, 2 * NS_PER_S, False, None)]
    assert restored.periods == [(T0 - 100, T0 - 50), (T0 + 100, T0 + 200)]
    assert restored.unsynchronised_since is None
    with pytest.raises(ValueError, match="unreadable clock journal"):
        restored.merge_json('{"steps": 3}')


def test_the_journal_is_bounded() -> None:
    journal = ClockJournal()
    for index in range(ClockJournal.MAX_ENTRIES + 10):
        journal.add_step(ClockStep(index, NS_PER_S * 2, adopted=False, synchronised=True))
        journal.open_period(index)
        journal.close_period(index + 1)
    assert len(journal.steps) == len(journal.periods) == ClockJournal.MAX_ENTRIES
    assert journal.steps[0].at_ns == 10


def test_clock_flags_name_what_touched_the_window() -> None:
    s = NS_PER_S
    clock, base, kernel = steady(True)
    base.advance(11)
    base.step_wall(3600)
    clock.now_ns()  # seen at T0 + 11 s
    base.advance(2)
    base.step_wall(-3600)
    clock.now_ns()  # seen at T0 + 13 s
    base.advance(8)
    clock.now_ns()  # checked at T0 + 21 s
    kernel.synchronised = False
    base.advance(1)
    clock.now_ns()  # unsynchronised since the check before
    now = clock.now_ns()
    (made_in,) = clock_flags(clock, T0, T0 + 5 * s, now)  # made while unsynchronised
    assert made_in.code == "clock_unsynchronised"
    assert "still when the record was made" in made_in.detail
    kernel.synchronised = True
    base.advance(1)
    clock.now_ns()  # synchronised again at T0 + 23 s
    now = clock.now_ns()
    assert now == T0 + 23 * s
    assert clock_flags(clock, T0, T0 + 5 * s, now) == ()
    steps = clock_flags(clock, T0 + 5 * s, T0 + 15 * s, now)
    assert [(f.code, f.t_ns) for f in steps] == [
        ("clock_step", T0 + 11 * s),
        ("clock_step", T0 + 13 * s),
    ]
    assert "+3600.000 s" in steps[0].detail
    assert "-3600.000 s" in steps[1].detail
    flags = clock_flags(clock, T0 + 12 * s, T0 + 30 * s, now)
    assert [f.code for f in flags] == ["clock_unsynchronised", "clock_step"]
    assert flags[0].t_ns == T0 + 21 * s
    assert "to 20" in flags[0].detail
    assert "still" not in flags[0].detail
    assert clock_flags(FakeClock(), T0, T0 + 30 * s, now) == ()  # no journal, no flags
