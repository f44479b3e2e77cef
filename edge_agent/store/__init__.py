"""SQLite store: samples, MES events, order and lot status, the record outbox."""

from edge_agent.store.sqlite import (
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
    "OutboxRecord",
    "OutboxRow",
    "OutboxStats",
    "Status",
    "Store",
    "StoredEvent",
    "migrate",
    "open_store",
]
