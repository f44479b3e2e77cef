"""The engine of either database, and the few places where the two dialects differ.

Everything else (tables, queries) is dialect-neutral SQLAlchemy Core. The differences:

* URL and driver: ``sqlite:///FILE`` -> ``sqlite+aiosqlite``, ``postgresql://USER@HOST:PORT/DB``
  -> ``postgresql+asyncpg`` with the password from ``password_env`` / ``password_file``;
* SQLite connection set-up: WAL, ``synchronous=FULL`` (a record is acknowledged to the broker
  only after its commit, so the commit must be on disk), foreign keys, a busy timeout, and
  transactions begun by us — ``BEGIN IMMEDIATE`` for writes, so a writer waits for the write lock
  at its start instead of failing half-way;
* the idempotent insert (``INSERT ... ON CONFLICT DO NOTHING``): the dialect's own ``insert``;
* the lock that makes concurrent migrations of one PostgreSQL database wait for each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from edge_agent.config.loader import read_secret
from edge_agent.config.models import SecretRef
from edge_agent.errors import ConfigError
from edge_agent.hub.config import HubStoreConfig

# Execution option of a connection whose transaction writes (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "edge_hub_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# pg_advisory_xact_lock key held while migrating ("HUBS").
MIGRATION_LOCK_KEY = 0x48554253
# PostgreSQL SQLSTATEs after which the whole transaction is simply run again.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected


def engine_url(config: HubStoreConfig) -> URL:
    """The SQLAlchemy URL of the configured database (password included, never logged)."""
    if config.url.startswith("sqlite:///"):
        path = config.url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise ConfigError(["store.url: give a file: sqlite:///hub.db"])
        return URL.create("sqlite+aiosqlite", database=path)
    try:
        url = make_url(config.url)
    except ArgumentError as exc:
        raise ConfigError([f"store.url: {config.url!r} is not a valid URL ({exc})"]) from None
    if not url.database:
        raise ConfigError([f"store.url: {config.url!r} names no database (.../DB)"])
    password = read_secret(
        SecretRef(password_env=config.password_env, password_file=config.password_file),
        "store",
    )
    url = url.set(drivername="postgresql+asyncpg")
    return url.set(password=password) if password is not None else url


def create_engine_for(config: HubStoreConfig) -> AsyncEngine:
    url = engine_url(config)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=4, max_overflow=4)
        _sqlite_hooks(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,  # a database restart costs one failed check, not a failed batch
        connect_args={"server_settings": {"application_name": "edge-hub"}},
    )


def _sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below): the driver's implicit transactions would start
        # only at the first INSERT, and DDL would not be transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            row = cursor.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise RuntimeError(f"cannot switch the database to WAL mode (got {row})")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def insert_ignoring_conflicts(
    conn: AsyncConnection, table: Table
) -> postgresql.Insert | sqlite.Insert:
    """``INSERT INTO table ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


async def lock_for_migration(conn: AsyncConnection) -> None:
    """Make a concurrent migration of the same database wait (SQLite: BEGIN IMMEDIATE does)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))


def should_retry(exc: DBAPIError) -> bool:
    """A deadlock or serialization failure between hub instances: run the transaction again."""
    return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES
