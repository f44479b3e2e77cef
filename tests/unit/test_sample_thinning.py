"""store.other_points: which samples of `other`-role points reach the store (pure filter)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.batching import OtherPointThinning
from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample


def sample(
    t_s: float,
    value: float | None,
    *,
    point: str = "voltage_l1",
    role: PointRole = PointRole.OTHER,
    quality: Quality = Quality.GOOD,
    meter: str = "m1",
) -> Sample:
    return Sample(round(t_s * NS_PER_S), meter, point, role, "V", value, quality)


def kept_times(thinning: OtherPointThinning, samples: list[Sample]) -> list[float]:
    return [s.ts_ns / NS_PER_S for s in thinning.keep(samples)]


def test_energy_power_and_state_points_are_all_kept() -> None:
    thinning = OtherPointThinning(every_s=60, on_change=None)
    samples = [
        sample(t, 1.0, point=name, role=role)
        for t in range(10)
        for name, role in (("e", PointRole.ENERGY), ("p", PointRole.POWER), ("s", PointRole.STATE))
    ]
    assert list(thinning.keep(samples)) == samples
    assert thinning.thinned == 0


def test_one_sample_per_slot_aligned_to_the_clock() -> None:
    thinning = OtherPointThinning(every_s=10, on_change=None)
    polls = [sample(t + 0.25, 230.0 + t) for t in range(95, 126)]
    assert kept_times(thinning, polls) == [95.25, 100.25, 110.25, 120.25]
    assert thinning.thinned == len(polls) - 4


def test_every_point_of_every_meter_has_its_own_slot() -> None:
    thinning = OtherPointThinning(every_s=60, on_change=None)
    batch = [sample(1, 230.0, meter=m, point=p) for m in ("m1", "m2") for p in ("v", "i")]
    assert list(thinning.keep(batch)) == batch
    assert list(thinning.keep([sample(2, 231.0, meter="m1", point="v")])) == []


def test_a_failure_and_its_recovery_are_stored_at_once() -> None:
    thinning = OtherPointThinning(every_s=60, on_change=None)
    polls = [
        sample(1, 230.0),
        sample(2, None, quality=Quality.TIMEOUT),
        sample(3, None, quality=Quality.TIMEOUT),
        sample(4, None, quality=Quality.CONNECTION),
        sample(5, 229.0),
        sample(6, 229.5),
    ]
    assert kept_times(thinning, polls) == [1, 2, 4, 5]


def test_on_change_stores_a_move_beyond_the_deadband() -> None:
    thinning = OtherPointThinning(every_s=60, on_change=2.0)
    polls = [
        sample(1, 230.0),
        sample(2, 231.0),
        sample(3, 232.5),
        sample(4, 233.0),
        sample(5, 230.4),
    ]
    # 232.5 is 2.5 from 230.0 (stored); 233.0 is 0.5 from 232.5; 230.4 is 2.1 from 232.5
    assert kept_times(thinning, polls) == [1, 3, 5]


def test_on_change_zero_stores_every_change() -> None:
    thinning = OtherPointThinning(every_s=60, on_change=0)
    polls = [sample(1, 50.0), sample(2, 50.0), sample(3, 50.01), sample(4, 50.01)]
    assert kept_times(thinning, polls) == [1, 3]


def test_every_s_zero_stores_everything() -> None:
    thinning = OtherPointThinning(every_s=0, on_change=None)
    polls = [sample(t, 230.0) for t in range(5)]
    assert list(thinning.keep(polls)) == polls


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=200),
    st.integers(min_value=1, max_value=120),
)
def test_every_slot_with_a_poll_has_exactly_one_stored_sample(times: list[int], every: int) -> None:
    times = sorted(times)
    thinning = OtherPointThinning(every_s=every, on_change=None)
    stored = kept_times(thinning, [sample(t, 1.0) for t in times])
    assert sorted({int(t) // every for t in stored}) == sorted({t // every for t in times})
    assert len(stored) == len({t // every for t in times})
    assert thinning.thinned == len(times) - len(stored)
