"""Numbered schema migrations of the hub's database. Append a step; never edit one that shipped.

The applied steps are rows of ``hub_schema_version``. Each step runs in its own transaction
with the step's row, under a lock (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``),
so hub instances starting together against one database migrate it exactly once.

Step 1 creates the tables as :mod:`.tables` defines them today. When a later step changes a
table, change its definition in :mod:`.tables` **and** freeze step 1 first: give it its own copy
of the version-1 definitions (a database created by step 1 then migrated must equal one created
by this release).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import func, insert, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_agent.errors import StoreError
from edge_agent.hub.store import tables
from edge_agent.hub.store.engine import WRITE_OPTION, lock_for_migration

log = logging.getLogger(__name__)

Step = Callable[[Connection], None]


def _v1_tables(conn: Connection) -> None:
    """1: records, gateways and their sequence ranges, footprints and their filter terms."""
    tables.metadata.create_all(
        conn,
        tables=[
            tables.records,
            tables.gateways,
            tables.gateway_ranges,
            tables.footprints,
            tables.footprint_keys,
            tables.footprint_terms,
        ],
        checkfirst=False,
    )


MIGRATIONS: tuple[Step, ...] = (_v1_tables,)


def _ensure_version_table(conn: Connection) -> None:
    tables.metadata.create_all(conn, tables=[tables.schema_version], checkfirst=True)


def _has_version_table(conn: Connection) -> bool:
    return inspect(conn).has_table(tables.schema_version.name)


async def schema_version(engine: AsyncEngine) -> int:
    """The database's schema version (0: empty)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(_has_version_table):
            return 0
        found = await conn.scalar(select(func.max(tables.schema_version.c.version)))
    return int(found or 0)


async def migrate(engine: AsyncEngine, target: int | None = None) -> int:
    """Apply the steps above the database's version up to ``target`` (default: all);
    returns the version reached."""
    target = len(MIGRATIONS) if target is None else target
    while True:
        async with engine.connect() as conn:
            await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                await lock_for_migration(conn)
                await conn.run_sync(_ensure_version_table)
                found = await conn.scalar(select(func.max(tables.schema_version.c.version)))
                current = int(found or 0)
                if current > len(MIGRATIONS):
                    raise StoreError(
                        f"the hub database's schema version {current} is newer than this "
                        f"edge-agent's ({len(MIGRATIONS)}): upgrade edge-agent"
                    )
                if current >= target:
                    return current
                version = current + 1
                await conn.run_sync(MIGRATIONS[version - 1])
                await conn.execute(
                    insert(tables.schema_version).values(version=version, applied_ns=time.time_ns())
                )
        log.info("hub database schema migrated to version %d", version)
