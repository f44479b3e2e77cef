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
