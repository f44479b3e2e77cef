from __future__ import annotations

from dataclasses import dataclass

from edge_agent.mes.timeline import replay_order

S = 1_000_000_000


@dataclass(frozen=True)
class Ev:
    event_id: str
    type: str
    ts_ns: int
    order_id: str | None = "o1"
    lot_id: str = "lot-1"
    equipment_id: str | None = "laser"
    product_id: str | None = "enclosure"
    quantity_good: float | None = None
    quantity_scrap: float | None = None
    unit: str = "piece"
    supersedes: str | None = None


def test_pauses_split_the_occupied_time_and_order_of_arrival_does_not_matter() -> None:
    events = [
        Ev("e4", "stop", 100 * S, quantity_good=20, quantity_scrap=1),
        Ev("e2", "pause", 30 * S),
        Ev("e1", "start", 10 * S),
        Ev("e3", "resume", 50 * S),
    ]
    timeline = replay_order(events, open_end_ns=200 * S)
    assert timeline is not None
    assert timeline.occupied == ((10 * S, 30 * S), (50 * S, 100 * S))
    assert timeline.stop_ns == 100 * S
    assert (timeline.quantity_good, timeline.quantity_scrap) == (20, 1)
    assert timeline.anomalies == ()


def test_running_order_is_closed_at_the_given_instant() -> None:
    timeline = replay_order([Ev("e1", "start", 10 * S)], open_end_ns=25 * S)
    assert timeline is not None
    assert timeline.occupied == ((10 * S, 25 * S),)
    assert not timeline.is_stopped


def test_inconsistent_sequences_are_reported_not_fatal() -> None:
    events = [
        Ev("e1", "start", 10 * S),
        Ev("e2", "resume", 20 * S),
        Ev("e3", "stop", 40 * S, quantity_good=5),
        Ev("e4", "pause", 50 * S),
    ]
    timeline = replay_order(events, open_end_ns=60 * S)
    assert timeline is not None
    assert timeline.occupied == ((10 * S, 40 * S),)
    assert timeline.anomalies == (
        f"resume without pause at {20 * S}",
        f"pause after stop at {50 * S}",
    )


def test_no_start_means_no_timeline() -> None:
    assert replay_order([Ev("e1", "stop", 10 * S)], open_end_ns=20 * S) is None


# -- corrections, cancellation, auto-close (issue 7) -------------------------------------------


def stop(event_id: str, t: int, good: float = 20, **kw: object) -> Ev:
    return Ev(event_id, "stop", t * S, quantity_good=good, quantity_scrap=0, **kw)  # type: ignore[arg-type]


def test_the_last_received_stop_counts_whatever_the_ids_or_times() -> None:
    # "z-old" sorts after "a-new": ties must not depend on id sorting
    events = [Ev("s", "start", 10 * S), stop("z-old", 50, good=20), stop("a-new", 50, good=18)]
    timeline = replay_order(events, open_end_ns=99 * S)
    assert timeline is not None
    assert timeline.quantity_good == 18
    assert timeline.corrections == ("stop z-old replaced by a-new",)
    # a later-received stop with an earlier ts moves the end back
    moved = replay_order([*events, stop("fix-ts", 40, good=18)], open_end_ns=99 * S)
    assert moved is not None
    assert moved.occupied == ((10 * S, 40 * S),)


def test_an_identical_stop_under_a_new_id_is_a_retry_not_a_correction() -> None:
    events = [Ev("s", "start", 10 * S), stop("first", 50), stop("retry", 50)]
    timeline = replay_order(events, open_end_ns=99 * S)
    assert timeline is not None
    assert timeline.corrections == ()


def test_supersedes_takes_an_event_out_of_force_in_any_arrival_order() -> None:
    wrong_pause = Ev("p", "pause", 20 * S)
    withdraw = Ev("r2", "cancel", 20 * S, supersedes="p")  # withdraws the pause, not the order
    for events in (
        [Ev("s", "start", 10 * S), wrong_pause, withdraw, stop("e", 40)],
        [withdraw, stop("e", 40), Ev("s", "start", 10 * S), wrong_pause],
    ):
        timeline = replay_order(events, open_end_ns=99 * S)
        assert timeline is not None
        assert timeline.occupied == ((10 * S, 40 * S),)  # neither the pause nor its withdrawal
        assert timeline.corrections == ("pause p superseded by r2",)
        assert not timeline.cancelled
        assert timeline.anomalies == ()


def test_a_superseded_stop_brings_back_the_earlier_one() -> None:
    events = [Ev("s", "start", 10 * S), stop("a", 40, good=5), stop("b", 60, good=7)]
    undo = Ev("c", "stop", 45 * S, quantity_good=6, quantity_scrap=0, supersedes="b")
    timeline = replay_order([*events, undo], open_end_ns=99 * S)
    assert timeline is not None
    assert (timeline.stop_ns, timeline.quantity_good) == (45 * S, 6)


def test_cancel_voids_the_order() -> None:
    events = [Ev("s", "start", 10 * S), stop("e", 40), Ev("c", "cancel", 45 * S)]
    timeline = replay_order(events, open_end_ns=99 * S)
    assert timeline is not None
    assert timeline.cancelled
    assert timeline.occupied == ()
    assert timeline.is_stopped
    assert timeline.quantity_good is None
    # a cancel of a running order closes it too
    running = replay_order(
        [Ev("s", "start", 10 * S), Ev("c", "cancel", 15 * S)], open_end_ns=99 * S
    )
    assert running is not None
    assert running.is_stopped
    assert running.occupied == ()


def test_a_stop_before_the_start_is_ignored_not_trusted() -> None:
    timeline = replay_order([Ev("s", "start", 30 * S), stop("e", 20)], open_end_ns=40 * S)
    assert timeline is not None
    assert not timeline.is_stopped
    assert timeline.anomalies == (f"stop at {20 * S} before start at {30 * S}: ignored",)


def test_an_order_open_too_long_is_closed_at_its_last_event() -> None:
    events = [Ev("s", "start", 10 * S), Ev("p", "pause", 20 * S), Ev("r", "resume", 30 * S)]
    fresh = replay_order(events, open_end_ns=100 * S, max_duration_ns=100 * S)
    assert fresh is not None
    assert not fresh.auto_closed
    assert fresh.occupied == ((10 * S, 20 * S), (30 * S, 100 * S))
    stale = replay_order(events, open_end_ns=111 * S, max_duration_ns=100 * S)
    assert stale is not None
    assert stale.auto_closed
    assert stale.stop_ns == 30 * S
    assert stale.occupied == ((10 * S, 20 * S),)
    # a real stop, however late, corrects the auto-close
    stopped = replay_order([*events, stop("e", 200)], open_end_ns=300 * S, max_duration_ns=100 * S)
    assert stopped is not None
    assert not stopped.auto_closed
    assert stopped.occupied == ((10 * S, 20 * S), (30 * S, 200 * S))
