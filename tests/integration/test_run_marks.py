"""The agent's run marks and its own down-times, on real SQLite files.

A simulated crash is a run with no clean stop: the store is closed (as the kernel closes the
file of a killed process) without :meth:`RunMarks.stop`, so the last heartbeat stands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from edge_agent.accounting import OrderInputs, build_order
from edge_agent.clock import FakeClock
from edge_agent.config import parse_config
from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample, iso_from_ns
from edge_agent.engine import OrderEngine
from edge_agent.mes.events import OrderEvent, parse_event
from edge_agent.mes.timeline import OrderTimeline
from edge_agent.runmarks import RunMarks
from edge_agent.store import open_store
from edge_agent.store.runs import RUN_HISTORY_NS, AgentRun, downtimes, parse_run, run_key

S = NS_PER_S
T0 = 1_800_000_000 * S


async def test_a_first_start_has_no_previous_run_and_no_downtime(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "a.db") as store:
        assert await store.record_run_start(T0) is None
        await store.record_run_alive(T0, T0 + 5 * S)
        assert await store.agent_runs() == [AgentRun(T0, T0 + 5 * S, clean=False)]
        assert await store.agent_downtimes(0, T0 + 100 * S) == []


async def test_a_killed_run_ends_at_its_last_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with await open_store(path) as store:
        await store.record_run_start(T0)
        for second in range(1, 11):
            await store.record_run_alive(T0, T0 + second * S)
    # kill -9: no stop mark; the heartbeats committed with synchronous=NORMAL are in the WAL
    async with await open_store(path) as store:
        previous = await store.record_run_start(T0 + 12 * S)
        assert previous == AgentRun(T0, T0 + 10 * S, clean=False)
        assert await store.agent_downtimes(T0, T0 + 20 * S) == [(T0 + 10 * S, T0 + 12 * S)]


async def test_a_clean_stop_ends_the_run_at_the_stop(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with await open_store(path) as store:
        await store.record_run_start(T0)
        await store.record_run_alive(T0, T0 + 3 * S)
        await store.record_run_alive(T0, T0 + 3_500_000_000, clean=True)
    async with await open_store(path) as store:
        previous = await store.record_run_start(T0 + 4 * S)
        assert previous == AgentRun(T0, T0 + 3_500_000_000, clean=True)
        assert await store.agent_downtimes(T0, T0 + 10 * S) == [(T0 + 3_500_000_000, T0 + 4 * S)]


async def test_downtimes_are_those_overlapping_the_window(tmp_path: Path) -> None:
    # runs [0, 10], [12, 20], [25, 30], [40, 41 (running)]: down-times (10, 12), (20, 25), (30, 40)
    async with await open_store(tmp_path / "a.db") as store:
        for start, alive in ((0, 10), (12, 20), (25, 30), (40, 41)):
            await store.record_run_start(T0 + start * S)
            await store.record_run_alive(T0 + start * S, T0 + alive * S)

        async def between(since: float, until: float) -> list[tuple[float, float]]:
            found = await store.agent_downtimes(T0 + int(since * S), T0 + int(until * S))
            return [((a - T0) / S, (b - T0) / S) for a, b in found]

        assert await between(-100, 100) == [(10, 12), (20, 25), (30, 40)]
        assert await between(11, 11) == [(10, 12)]  # inside one
        assert await between(13, 19) == []  # inside a run
        assert await between(12, 20) == [(10, 12), (20, 25)]  # touching both ends
        assert await between(21, 35) == [(20, 25), (30, 40)]
        assert await between(35, 100) == [(30, 40)]
        assert await between(41, 100) == []  # the running run has no down-time after it yet


async def test_a_clock_set_back_between_runs_leaves_no_downtime(tmp_path: Path) -> None:
    runs = [AgentRun(T0, T0 + 10 * S, False), AgentRun(T0 + 5 * S, T0 + 20 * S, False)]
    assert downtimes(runs, 0, T0 + 100 * S) == []


def test_run_values_this_module_did_not_write_are_ignored() -> None:
    key = run_key(T0)
    assert parse_run(key, AgentRun(T0, T0 + S, True).value()) == AgentRun(T0, T0 + S, True)
    assert parse_run(key, "not json") is None
    assert parse_run(key, json.dumps({"alive_ns": "x", "clean": False})) is None
    assert parse_run(key, json.dumps({"clean": False})) is None
    assert parse_run("agent_run/abc", AgentRun(T0, T0, False).value()) is None
    assert parse_run("clock_journal", AgentRun(T0, T0, False).value()) is None
    # a heartbeat before the start (clock set back mid-run) never makes the run end early
    assert parse_run(key, json.dumps({"alive_ns": T0 - S, "clean": False})) == AgentRun(
        T0, T0, False
    )


async def test_history_keeps_what_a_late_recomputation_can_need(tmp_path: Path) -> None:
    day = 86_400 * S
    async with await open_store(tmp_path / "a.db") as store:
        await store.set_state("clock_journal", "{}")  # other agent state is never touched
        for start in (0, day, 2 * day):
            await store.record_run_start(T0 + start)
            await store.record_run_alive(T0 + start, T0 + start + S)
        # Down for 7.5 days: the history kept starts 1.5 days after T0. The first run's
        # down-time ended before that (forgotten), the second's after it (kept).
        now = T0 + 2 * day + RUN_HISTORY_NS // 16 * 15
        await store.record_run_start(now)
        assert [r.start_ns for r in await store.agent_runs()] == [T0 + day, T0 + 2 * day, now]
        assert await store.agent_downtimes(now - S, now) == [(T0 + 2 * day + S, now)]
        assert await store.get_state("clock_journal") == "{}"


async def test_a_crash_loop_keeps_a_bounded_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge_agent.store.sqlite.RUN_HISTORY_MAX", 5)
    async with await open_store(tmp_path / "a.db") as store:
        for index in range(12):
            await store.record_run_start(T0 + index * S)
        runs = await store.agent_runs()
    assert [(r.start_ns - T0) // S for r in runs] == [7, 8, 9, 10, 11]


async def test_run_marks_start_heartbeat_crash_and_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.db"
    clock = FakeClock(start_ns=T0)
    async with await open_store(path, clock=clock) as store:
        marks = RunMarks(store, clock)
        assert await marks.start() is None
        for _ in range(3):
            clock.advance(1.0)
            await marks.beat()
        clock.advance(0.7)  # killed 0.7 s after the last heartbeat: no stop mark
    clock.advance(1.8)
    with caplog.at_level(logging.WARNING, logger="edge_agent.runmarks"):
        async with await open_store(path, clock=clock) as store:
            marks = RunMarks(store, clock)
            previous = await marks.start()
            assert previous == AgentRun(T0, T0 + 3 * S, clean=False)
            assert await store.agent_downtimes(T0, clock.now_ns()) == [
                (T0 + 3 * S, T0 + 5_500_000_000)
            ]
            clock.advance(2.0)
            await marks.stop()
    assert "without a clean stop" in caplog.text
    assert "down for 2.5 s" in caplog.text
    caplog.clear()
    clock.advance(1.0)
    with caplog.at_level(logging.INFO, logger="edge_agent.runmarks"):
        async with await open_store(path, clock=clock) as store:
            previous = await RunMarks(store, clock).start()
            assert previous is not None
            assert previous.clean
            assert await store.agent_downtimes(T0, clock.now_ns()) == [
                (T0 + 3 * S, T0 + 5_500_000_000),
                (T0 + 7_500_000_000, T0 + 8_500_000_000),
            ]
    assert "was stopped at" in caplog.text
    assert "without a clean stop" not in caplog.text


# -- the down-times reach attribution ---------------------------------------------------------


def _config(tmp_path: Path) -> Any:
    return parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {
                    "id": "m1",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "interval_s": 1.0,
                    "points": {
                        "energy": {"address": 0, "type": "float32", "unit": "Wh", "role": "energy"}
                    },
                }
            ],
            "equipment": [{"id": "laser", "meters": ["m1"], "max_power_kw": 50}],
            "emission_factors": {
                "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
            },
        },
        tmp_path,
    )


def _samples() -> list[Sample]:
    """Readings of 10 kW every second from T0, except 9.0 → 10.3 s (closer than the
    1.5-interval boundary-gap threshold: a restart quicker than a poll interval)."""
    times = [t * 1_000_000_000 // 10 for t in (*range(0, 91, 10), 103, 110, *range(120, 201, 10))]
    return [
        Sample(T0 + t, "m1", "energy", PointRole.ENERGY, "Wh", 10_000 * t / 3600 / S, Quality.GOOD)
        for t in times
    ]


def _record(tmp_path: Path, outages: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """An order started at 9.5 s (between the readings at 9.0 and 10.3 s), stopped at 15.0 s."""
    samples = _samples()
    timeline = OrderTimeline(
        order_id="o1",
        lot_id="lot-1",
        equipment_id="laser",
        product_id="P",
        start_ns=T0 + 9_500_000_000,
        stop_ns=T0 + 15 * S,
        occupied=((T0 + 9_500_000_000, T0 + 15 * S),),
        quantity_good=1,
        quantity_scrap=0,
        unit="piece",
        anomalies=(),
    )
    config = _config(tmp_path)
    inputs = OrderInputs(
        config=config,
        equipment=config.equipment[0],
        timeline=timeline,
        others=(),
        readings={("m1", "energy"): samples},
        state_samples=(),
        outages=outages,
    )
    return build_order(inputs, revision=1, final_by_timeout=False).to_json_dict()


def test_a_boundary_inside_the_agents_downtime_is_an_estimate(tmp_path: Path) -> None:
    measured = _record(tmp_path, ())
    assert measured["measured_share"] == pytest.approx(1.0)
    # The agent was down from 9.2 s (last heartbeat) to 9.8 s (restart): the start was not read.
    down = _record(tmp_path, ((T0 + 9_200_000_000, T0 + 9_800_000_000),))
    assert down["measured_share"] < 1.0
    flags = [flag for flag in down["flags"] if flag["code"] == "boundary_estimated"]
    assert flags
    assert "the agent was down for 0.6 s" in flags[0]["detail"]
    assert down["energy_kwh"] == pytest.approx(measured["energy_kwh"])
    assert down["uncertainty_kwh"] > 0.0
    # A down-time away from the boundaries changes nothing: the counter total is exact.
    elsewhere = _record(tmp_path, ((T0 + 12_100_000_000, T0 + 12_400_000_000),))
    assert elsewhere["measured_share"] == pytest.approx(1.0)


async def test_the_engine_gives_attribution_the_downtimes_of_the_store(tmp_path: Path) -> None:
    config = _config(tmp_path)
    clock = FakeClock(start_ns=T0 + 20 * S)

    async def no_meters(_: Any) -> list[Sample]:
        return []

    def event(event_id: str, kind: str, ts_ns: int) -> OrderEvent:
        body: dict[str, Any] = {
            "event_id": event_id,
            "type": kind,
            "ts": iso_from_ns(ts_ns),
            "lot_id": "lot-1",
            "order_id": "o1",
            "equipment_id": "laser",
        }
        body.update(
            {"product_id": "P"} if kind == "start" else {"quantity_good": 1, "quantity_scrap": 0}
        )
        return parse_event(json.dumps(body).encode(), ["laser"])

    async with await open_store(tmp_path / "e.db", clock=clock) as store:
        await store.write_samples(_samples())
        # The run before was killed: last heartbeat at 9.2 s, this run started at 9.8 s.
        await store.record_run_start(T0 - 100 * S)
        await store.record_run_alive(T0 - 100 * S, T0 + 9_200_000_000)
        await store.record_run_start(T0 + 9_800_000_000)
        engine = OrderEngine(config, store, clock, no_meters, lambda: None)
        await engine.handle_batch(
            [event("e1", "start", T0 + 9_500_000_000), event("e2", "stop", T0 + 15 * S)]
        )
        await engine.finalise_ready()
        record = await store.latest_record("o1")
    assert record is not None
    assert record["measured_share"] < 1.0
    assert "boundary_estimated" in {flag["code"] for flag in record["flags"]}
    assert record["energy_kwh"] == pytest.approx(10 * 5.5 / 3600, rel=1e-6)
