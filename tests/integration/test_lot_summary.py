"""When the lot summary is made, and how it says it is incomplete (issue 8).

On ``lot_complete`` the summary waits only for steps that have stopped and are waiting for their
boundary reading (final within ``final_timeout_s``); steps still running do not hold it: it is
published with ``incomplete`` and ``open_steps`` and re-issued when they are final. The engine
on a real SQLite file with a synthetic counter (see split_bench).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge_agent.domain import NS_PER_S
from tests.integration.split_bench import Plant, at, event, steady

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "edge_agent/schemas/lot-record.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
KW = 6.0


def codes(record: dict[str, Any]) -> set[str]:
    return {flag["code"] for flag in record["flags"]}


def kwh(minutes: float) -> float:
    return KW * minutes / 60


def done(minute: float, event_id: str = "done", **fields: Any) -> dict[str, Any]:
    return event(event_id, "lot_complete", at(minute), "", "L1", **fields)


async def lots(plant: Plant) -> list[dict[str, Any]]:
    records = await plant.revisions("lot", "L1")
    for record in records:
        VALIDATOR.validate(record)
    return records


async def run_a(plant: Plant, start: float = 0, stop: float = 10) -> None:
    """Order A of lot L1 runs [start, stop] and is final."""
    await plant.advance_to(at(start))
    await plant.send(event("a0", "start", at(start), "A"))
    await plant.advance_to(at(stop))
    await plant.send(event("a1", "stop", at(stop), "A", quantity_good=20))
    await plant.advance_to(at(stop) + NS_PER_S)


async def test_a_running_step_does_not_hold_the_summary(tmp_path: Path) -> None:
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.advance_to(at(20))
        await plant.send(event("b0", "start", at(20), "B"))
        await plant.advance_to(at(25))
        await plant.send(done(25, quantity_good=19))
        await plant.advance_to(at(25) + NS_PER_S)
        first = await plant.lot()
        await plant.advance_to(at(30))
        await plant.send(event("b1", "stop", at(30), "B", quantity_good=19))
        await plant.advance_to(at(31))
        revisions = await lots(plant)
    finally:
        await plant.close()
    assert first is not None
    assert (first["revision"], first["incomplete"], first["open_steps"], first["steps"]) == (
        1, True, 1, 1,
    )  # fmt: skip
    assert "incomplete" in codes(first)
    assert first["energy_kwh"] == pytest.approx(kwh(10))
    assert [o["order_id"] for o in first["orders"]] == ["A"]
    last = revisions[-1]
    assert [r["revision"] for r in revisions] == [1, 2]
    assert (last["incomplete"], last["open_steps"], last["steps"]) == (False, 0, 2)
    assert "incomplete" not in codes(last)
    assert last["energy_kwh"] == pytest.approx(kwh(20))
    assert last["quantity_good"] == 19


async def test_a_stopped_step_waiting_for_its_boundary_reading_is_waited_for(
    tmp_path: Path,
) -> None:
    """B stops between two polls and its read on event fails: the summary waits for the next
    poll (a few seconds) rather than publishing a needless incomplete revision 1."""
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.advance_to(at(20))
        await plant.send(event("b0", "start", at(20), "B"))
        plant.read_on_event = False
        stop = at(30) + 5 * NS_PER_S  # between the polls at :30:00 and :30:10
        await plant.advance_to(stop)
        await plant.send(event("b1", "stop", stop, "B", quantity_good=20), done(30.1))
        await plant.advance_to(stop + 2 * NS_PER_S)
        waiting = await plant.lot()
        await plant.advance_to(stop + 5 * NS_PER_S)  # the next poll reads the meter
        revisions = await lots(plant)
        b = await plant.record("B")
    finally:
        await plant.close()
    assert waiting is None
    assert [(r["revision"], r["incomplete"], r["steps"]) for r in revisions] == [(1, False, 2)]
    assert "final_by_timeout" not in codes(b)


async def test_a_stopped_step_without_any_reading_holds_the_summary_until_its_timeout(
    tmp_path: Path,
) -> None:
    """The meter goes silent as B stops: B is final by timeout (final_timeout_s, 60 s here),
    and the summary waits for it — a bounded wait, then one complete revision."""
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.advance_to(at(20))
        await plant.send(event("b0", "start", at(20), "B"))
        plant.read_on_event, plant.polling = False, False
        stop = at(30) + 5 * NS_PER_S
        await plant.advance_to(stop)
        await plant.send(event("b1", "stop", stop, "B", quantity_good=20), done(30.1))
        await plant.advance_to(stop + 59 * NS_PER_S)
        waiting = await plant.lot()
        await plant.advance_to(stop + 60 * NS_PER_S)
        revisions = await lots(plant)
        b = await plant.record("B")
    finally:
        await plant.close()
    assert waiting is None
    assert "final_by_timeout" in codes(b)
    assert [(r["revision"], r["incomplete"], r["steps"]) for r in revisions] == [(1, False, 2)]


async def test_a_new_step_in_a_summarised_lot_makes_it_incomplete_again(tmp_path: Path) -> None:
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.advance_to(at(12))
        await plant.send(done(12))
        await plant.advance_to(at(13))
        await plant.send(event("c0", "start", at(13), "C"))
        await plant.advance_to(at(14))
        await plant.send(event("c1", "stop", at(20), "C", quantity_good=20))
        await plant.advance_to(at(21))
        revisions = await lots(plant)
    finally:
        await plant.close()
    assert [(r["revision"], r["incomplete"], r["open_steps"], r["steps"]) for r in revisions] == [
        (1, False, 0, 1),
        (2, True, 1, 1),
        (3, False, 0, 2),
    ]
    assert revisions[1]["energy_kwh"] == revisions[0]["energy_kwh"]
    assert revisions[2]["energy_kwh"] == pytest.approx(kwh(17))


async def test_a_withdrawn_stop_makes_the_summary_incomplete_until_the_step_stops_again(
    tmp_path: Path,
) -> None:
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.send(done(11))
        await plant.advance_to(at(12))
        await plant.send(event("a-w", "cancel", at(12), "A", supersedes="a1"))
        await plant.advance_to(at(13))
        reopened = await plant.lot()
        await plant.send(event("a2", "stop", at(15), "A", quantity_good=20))
        await plant.advance_to(at(16))
        revisions = await lots(plant)
    finally:
        await plant.close()
    assert reopened is not None
    assert (reopened["revision"], reopened["incomplete"], reopened["open_steps"]) == (2, True, 1)
    assert reopened["steps"] == 0
    assert {"incomplete", "no_orders"} <= codes(reopened)
    assert [(r["revision"], r["incomplete"]) for r in revisions] == [
        (1, False),
        (2, True),
        (3, False),
    ]
    assert revisions[-1]["energy_kwh"] == pytest.approx(kwh(15))


async def test_a_running_step_cancelled_completes_the_summary(tmp_path: Path) -> None:
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.advance_to(at(20))
        await plant.send(event("b0", "start", at(20), "B"), done(20))
        await plant.advance_to(at(21))
        await plant.send(event("b-x", "cancel", at(21), "B"))
        await plant.advance_to(at(22))
        revisions = await lots(plant)
    finally:
        await plant.close()
    assert [(r["revision"], r["incomplete"], r["steps"]) for r in revisions] == [
        (1, True, 1),
        (2, False, 1),
    ]
    assert [o["order_id"] for o in revisions[-1]["orders"]] == ["A"]


async def test_an_incomplete_summary_is_completed_after_a_restart(tmp_path: Path) -> None:
    """B stops while the agent is down (its stop is delivered to the next engine): the lot,
    summarised incomplete before, is re-issued complete."""
    plant = await Plant.open(tmp_path, steady(KW))
    try:
        await run_a(plant)
        await plant.advance_to(at(20))
        await plant.send(event("b0", "start", at(20), "B"), done(20))
        await plant.advance_to(at(21))
        plant = await plant.restart()
        await plant.advance_to(at(30))
        await plant.send(event("b1", "stop", at(30), "B", quantity_good=20))
        await plant.advance_to(at(31))
        revisions = await lots(plant)
    finally:
        await plant.close()
    assert [(r["revision"], r["incomplete"], r["steps"]) for r in revisions] == [
        (1, True, 1),
        (2, False, 2),
    ]


async def test_a_step_due_for_its_auto_close_is_closed_not_waited_for(tmp_path: Path) -> None:
    """Found by the conservation property test: B runs past max_order_duration_s (10 min here)
    and the housekeeping has not auto-closed it yet when the lot completes. The summary does not
    wait for the housekeeping: B is closed at once, and the lot gets one complete revision."""
    plant = await Plant.open(tmp_path, steady(KW), max_order_duration_s=600)
    try:
        await run_a(plant)
        await plant.advance_to(at(11))
        await plant.send(event("b0", "start", at(11), "B"))
        await plant.advance_to(at(30))
        await plant.send(done(30))
        await plant.settle()
        revisions = await lots(plant)
        b = await plant.record("B")
    finally:
        await plant.close()
    assert "auto_closed" in codes(b)
    assert [(r["revision"], r["incomplete"], r["steps"]) for r in revisions] == [(1, False, 2)]
