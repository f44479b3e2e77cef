"""SQLite store: samples, MES events, order and lot status, the record outbox."""

from edge_agent.store.sqlite import (
    BalancePeriod,
    IntakeCommit,
    OutboxRecord,
    OutboxRow,
    OutboxStats,
    Status,
    Store,
    StoredEvent,
    migrate,
    open_store,
)

__all__ = [
    "BalancePeriod",
    "IntakeCommit",
    "OutboxRecord",
    "OutboxRow",
    "OutboxStats",
    "Status",
    "Store",
    "StoredEvent",
    "migrate",
    "open_store",
]
