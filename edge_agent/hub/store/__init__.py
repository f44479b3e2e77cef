"""The hub's database: :class:`~edge_agent.hub.model.HubStore` on SQLite (default, zero set-up)
or PostgreSQL (several hub instances, one database), behind one SQLAlchemy Core data-access
layer (docs/hub.md#database).

    tables.py      the tables, defined once for both databases
    migrations.py  numbered schema migrations (``hub_schema_version``)
    engine.py      URL, connection set-up and the few dialect-specific constructs
    sql.py         the store
    ranges.py      sequence-number ranges (what a gateway sent that the hub does not hold)
"""

from edge_agent.hub.store.sql import SqlHubStore, open_hub_store

__all__ = ["SqlHubStore", "open_hub_store"]
