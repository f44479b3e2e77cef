"""The hub's tables, defined once for SQLite and PostgreSQL (docs/hub.md#database).

Times are epoch nanoseconds (BIGINT); payloads are JSON text, stored exactly as they are served.
The tuples of a footprint are JSON arrays in ``footprints`` (to rebuild the row in order) and one
row each in ``footprint_terms`` (to filter in the database).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# One row per applied migration (edge_agent.hub.store.migrations); the highest is the version.
schema_version = Table(
    "hub_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_ns", BigInteger, nullable=False),
)

# Every revision of every record as received (one row per (record_id, revision)).
records = Table(
    "records",
    metadata,
    Column("record_id", Text, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("kind", Text, nullable=False),  # order, lot, balance
    Column("site_id", Text, nullable=False),
    Column("lot_id", Text),
    Column("order_id", Text),
    Column("gateway_id", Text, nullable=False),
    Column("gateway_seq", BigInteger),
    # Lot records only: the lot's product and end (lots of a product over a period).
    Column("product_id", Text),
    Column("end_ns", BigInteger),
    Column("received_ns", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
    PrimaryKeyConstraint("record_id", "revision", name="records_pk"),
    Index("records_by_lot", "site_id", "lot_id"),
    Index("records_by_product_end", "product_id", "end_ns"),
)

# Every gateway (publisher) seen, with when it was first and last heard of.
gateways = Table(
    "gateways",
    metadata,
    Column("gateway_id", Text, primary_key=True),
    Column("first_seen_ns", BigInteger, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
)

# The sequence numbers held per gateway, as disjoint, non-adjacent ranges [first_seq, last_seq].
gateway_ranges = Table(
    "gateway_ranges",
    metadata,
    Column("gateway_id", Text, ForeignKey("gateways.gateway_id"), nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("gateway_id", "first_seq", name="gateway_ranges_pk"),
    CheckConstraint("first_seq <= last_seq", name="gateway_ranges_ordered"),
)

# Every version of every footprint; the payload is the ProductFootprint as served.
footprints = Table(
    "footprints",
    metadata,
    Column("id", Text, primary_key=True),
    Column("key", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("product_id", Text, nullable=False),
    Column("validity_start_ns", BigInteger, nullable=False),
    Column("validity_end_ns", BigInteger, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("product_ids", Text, nullable=False),  # JSON arrays of strings
    Column("company_ids", Text, nullable=False),
    Column("classifications", Text, nullable=False),
    Column("geography", Text, nullable=False),
    Column("preceding_ids", Text, nullable=False),
    Column("payload", Text, nullable=False),
    UniqueConstraint("key", "version", name="footprints_key_version"),
    CheckConstraint("status IN ('Active', 'Deprecated')", name="footprints_status"),
    Index("footprints_by_product_created", "product_id", "created_ns", "id"),
    Index("footprints_by_created", "created_ns", "id"),
)

# The highest version stored per key; its row is locked while a version is saved, so hub
# instances saving versions of one key at once leave exactly one Active.
footprint_keys = Table(
    "footprint_keys",
    metadata,
    Column("key", Text, primary_key=True),
    Column("latest_version", Integer, nullable=False),
)

# The multi-valued filter columns of a footprint, one row per value.
FACET_PRODUCT = "product"  # PACT productIds
FACET_COMPANY = "company"  # companyIds
FACET_CLASSIFICATION = "classification"  # productClassifications
FACET_GEOGRAPHY = "geography"  # region, country, subdivision

footprint_terms = Table(
    "footprint_terms",
    metadata,
    Column(
        "footprint_id",
        Text,
        ForeignKey("footprints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("facet", Text, nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("footprint_id", "facet", "value", name="footprint_terms_pk"),
    Index("footprint_terms_by_value", "facet", "value", "footprint_id"),
)
