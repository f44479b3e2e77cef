"""Versioned schema migrations. Append a step; never edit one that has shipped."""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: samples, MES events, orders and lots, the outbox, agent state
    (
        """CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            ts_ns INTEGER NOT NULL,
            meter_id TEXT NOT NULL,
            point TEXT NOT NULL,
            role TEXT NOT NULL,
            unit TEXT NOT NULL,
            value REAL,
            quality TEXT NOT NULL,
            state TEXT,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        # Attribution asks for one point's readings around a window.
        "CREATE INDEX samples_by_point_time ON samples (meter_id, point, ts_ns)",
        "CREATE INDEX samples_by_time ON samples (ts_ns)",
        """CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            order_id TEXT,
            lot_id TEXT NOT NULL,
            equipment_id TEXT,
            payload TEXT NOT NULL,
            received_ns INTEGER NOT NULL
        )""",
        "CREATE INDEX events_by_order ON events (order_id, ts_ns)",
        "CREATE INDEX events_by_lot ON events (lot_id, type)",
        "CREATE INDEX events_by_equipment ON events (equipment_id, ts_ns)",
        """CREATE TABLE orders (
            order_id TEXT PRIMARY KEY,
            lot_id TEXT NOT NULL,
            equipment_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'final')),
            revision INTEGER NOT NULL DEFAULT 0,
            record_id TEXT,
            finalised_ns INTEGER
        )""",
        "CREATE INDEX orders_by_lot ON orders (lot_id)",
        "CREATE INDEX orders_by_status ON orders (status)",
        """CREATE TABLE lots (
            lot_id TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('open', 'final')),
            revision INTEGER NOT NULL DEFAULT 0,
            record_id TEXT,
            finalised_ns INTEGER
        )""",
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            record_id TEXT NOT NULL,
            revision INTEGER NOT NULL,
            kind TEXT NOT NULL,
            lot_id TEXT NOT NULL,
            order_id TEXT,
            topic TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            sent_ns INTEGER,
            UNIQUE (record_id, revision)
        )""",
        "CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_ns IS NULL",
        "CREATE INDEX outbox_by_order ON outbox (order_id, revision)",
        "CREATE TABLE agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE rejected_events (reason TEXT PRIMARY KEY, count INTEGER NOT NULL)",
    ),
    # 2: publish attempts per outbox row (operators see a record the broker keeps refusing);
    # when a rejection reason was last seen (a counter alone cannot say "is it still happening?")
    (
        "ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE rejected_events ADD COLUMN last_ns INTEGER",
    ),
    # 3: MES corrections and out-of-order events. ``supersedes`` names the event a correction
    # replaces; ``held_until_ns`` marks an event waiting for its order's start (NULL = in force).
    (
        "ALTER TABLE events ADD COLUMN supersedes TEXT",
        "ALTER TABLE events ADD COLUMN held_until_ns INTEGER",
        "CREATE INDEX events_held ON events (held_until_ns) WHERE held_until_ns IS NOT NULL",
    ),
    # 4: energy-balance periods already computed (their records are in the outbox, kind
    # 'balance'): the revision published and, per equipment, the order spans the period was
    # computed with, so a changed order recomputes only the periods it really changes.
    (
        """CREATE TABLE balances (
            period_start_ns INTEGER NOT NULL,
            period_end_ns INTEGER NOT NULL,
            record_id TEXT NOT NULL,
            revision INTEGER NOT NULL,
            inputs TEXT NOT NULL,
            computed_ns INTEGER NOT NULL,
            PRIMARY KEY (period_start_ns, period_end_ns)
        )""",
        "CREATE INDEX balances_by_end ON balances (period_end_ns)",
    ),
    # 5: intensities of final order and lot records (kWh and kg CO2e per good unit), by
    # product and equipment ('' for a lot), for standards derived from the last N lots.
    (
        """CREATE TABLE intensities (
            record_key TEXT PRIMARY KEY,
            product_id TEXT NOT NULL,
            equipment_id TEXT NOT NULL,
            lot_id TEXT NOT NULL,
            end_ns INTEGER NOT NULL,
            kwh_per_unit REAL NOT NULL,
            co2e_kg_per_unit REAL NOT NULL
        )""",
        "CREATE INDEX intensities_by_step ON intensities (product_id, equipment_id, end_ns)",
    ),
    # 6: new samples are appended here (no index but the rowid) and moved into `samples`
    # every store.samples_merge_s, sorted by meter point (Store.merge_sample_journal): a
    # commit then writes the few pages its rows fill, not one index page per meter point.
    (
        """CREATE TABLE samples_journal (
            id INTEGER PRIMARY KEY,
            ts_ns INTEGER NOT NULL,
            meter_id TEXT NOT NULL,
            point TEXT NOT NULL,
            role TEXT NOT NULL,
            unit TEXT NOT NULL,
            value REAL,
            quality TEXT NOT NULL,
            state TEXT,
            detail TEXT NOT NULL DEFAULT ''
        )""",
    ),
)
