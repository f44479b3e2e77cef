"""Store helpers for split rechecks and lot summaries (issue 8), on real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import StoreError
from edge_agent.store import OutboxRecord, Store, StoredEvent, open_store

S = 1_000_000_000


def record(order_id: str | None, revision: int = 1, created_s: int = 100) -> OutboxRecord:
    kind = "order" if order_id else "lot"
    return OutboxRecord(
        f"rec-{order_id or 'lot'}", revision, kind, "lot-1", order_id, "t", "{}", created_s * S
    )


def start(order_id: str, received_s: int, equipment: str = "laser") -> StoredEvent:
    return StoredEvent(
        f"{order_id}-start", "start", S, order_id, "lot-1", equipment, "{}", received_s * S
    )


async def opened(path: Path, *orders: str) -> Store:
    store = await open_store(path)
    for order_id in orders:
        await store.insert_event(start(order_id, 1))
    return store


async def test_rechecks_are_marked_with_the_record_and_cleared_by_the_next(
    tmp_path: Path,
) -> None:
    async with await opened(tmp_path / "r.db", "o1", "o2", "o3", "o/4") as store:
        await store.finalise_order("o1", record("o1"), recheck=["o2", "o/4", "o1"])
        assert await store.recheck_order_ids() == ["o/4", "o2"]  # never the order itself
        await store.set_state("split_recheckX", "unrelated")  # another key, same prefix start
        await store.finalise_order("o2", record("o2"))
        await store.confirm_order("o/4", "rec-o/4", 3, 50 * S, recheck=["o3"])
        assert await store.recheck_order_ids() == ["o3"]
        status = await store.order_status("o/4")
        assert status is not None
        assert (status.status, status.revision, status.finalised_ns) == ("final", 3, 50 * S)
    async with await open_store(tmp_path / "r.db") as store:  # durable
        assert await store.recheck_order_ids() == ["o3"]


async def test_a_failed_finalise_marks_nothing(tmp_path: Path) -> None:
    async with await opened(tmp_path / "f.db", "o1") as store:
        with pytest.raises(StoreError):
            await store.finalise_order("never-opened", record("x"), recheck=["o1"])
        assert await store.recheck_order_ids() == []


async def test_final_orders_by_when_they_were_computed(tmp_path: Path) -> None:
    async with await opened(tmp_path / "b.db", "o1", "o2", "o3") as store:
        await store.insert_event(start("p1", 1, equipment="press"))
        await store.finalise_order("o1", record("o1", created_s=100))
        await store.finalise_order("o2", record("o2", created_s=200))
        await store.finalise_order("p1", record("p1", created_s=150))
        assert await store.final_orders_finalised_between("laser", 100 * S, 199 * S) == ["o1"]
        assert await store.final_orders_finalised_between("laser", 0, 300 * S) == ["o1", "o2"]
        assert await store.final_orders_finalised_between("press", 0, 300 * S) == ["p1"]


async def test_final_orders_with_events_received_after_their_record(tmp_path: Path) -> None:
    async with await opened(tmp_path / "c.db", "o1", "o2") as store:
        await store.finalise_order("o1", record("o1", created_s=100))
        await store.finalise_order("o2", record("o2", created_s=100))
        late = StoredEvent("o2-pause", "pause", 5 * S, "o2", "lot-1", "laser", "{}", 150 * S)
        held = StoredEvent("o1-x", "stop", 6 * S, "o1", "lot-1", "laser", "{}", 160 * S, None, 1)
        await store.insert_event(late)
        await store.insert_event(held)  # held: not in force, not a change yet
        assert await store.final_orders_changed_since_final() == ["o2"]


async def test_lot_orders_and_stale_summaries(tmp_path: Path) -> None:
    async with await opened(tmp_path / "l.db", "o1", "o2") as store:
        await store.finalise_order("o1", record("o1", created_s=100))
        assert [(o, s.status) for o, s in await store.lot_orders("lot-1")] == [
            ("o1", "final"),
            ("o2", "open"),
        ]
        await store.finalise_lot("lot-1", record(None, created_s=110))
        assert await store.stale_lot_ids() == ["lot-1"]  # o2 still open
        await store.finalise_order("o2", record("o2", created_s=120))
        assert await store.stale_lot_ids() == ["lot-1"]  # o2 final after the summary
        await store.finalise_lot("lot-1", record(None, revision=2, created_s=130))
        assert await store.stale_lot_ids() == []


async def test_an_event_committed_in_the_tick_of_the_record_is_a_change(tmp_path: Path) -> None:
    """Receive time cannot order an event and a record of the same clock tick: the transaction
    that stores the event marks the final order, and its next record (or reopening) clears it."""
    path = tmp_path / "t.db"
    async with await opened(path, "o1", "o2", "o3") as store:
        for order_id in ("o1", "o2", "o3"):
            await store.finalise_order(order_id, record(order_id, created_s=100))
        for order_id in ("o1", "o2", "o3"):
            await store.insert_event(
                StoredEvent(
                    f"{order_id}-c", "cancel", 5 * S, order_id, "lot-1", "laser", "{}", 100 * S
                )
            )
        await store.insert_event(start("o4", 100))  # a new order: open, not a change
    async with await open_store(path) as store:  # durable
        assert await store.final_orders_changed_since_final() == ["o1", "o2", "o3"]
        await store.finalise_order("o1", record("o1", revision=2, created_s=100))
        await store.confirm_order("o2", "rec-o2", 1, 100 * S)
        await store.reopen_order("o3")
        assert await store.final_orders_changed_since_final() == []
