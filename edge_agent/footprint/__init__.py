"""Product footprints from lot records: PACT 3.0, PACT 2.3 and Green x Digital.

Pure functions (no I/O, no clock): published lot and order records in, one ProductFootprint (a
JSON-ready dict) out. The agent's ``edge-agent export --format pact-v3|pact-v2|gxd`` and the
plant hub both call them. See docs/carbon.md ("Footprints") for which PACT data items come from
metered data and which are left to the company's PCF system.

    build_pact_v3(lot, orders, info, created_at=...)        one lot, PACT 3.0 (+ GxD, steps)
    build_pact_v3_product(lots, info, start, end, ...)     one product over a period
    build_pact_v2 / build_pact_v2_product                  the same as PACT 2.3
    build_gxd / build_gxd_product                          PACT 2.x with the GxD extension

Records that cannot become a footprint raise :class:`~edge_agent.errors.FootprintError`
naming the lot or product and the reason.
"""

from edge_agent.errors import FootprintError
from edge_agent.footprint.basis import LotWithOrders
from edge_agent.footprint.decimals import SIGNIFICANT_DIGITS, decimal_string, percent_string
from edge_agent.footprint.info import (
    DEFAULT_DECLARED_UNITS,
    DeclaredUnit,
    FootprintInfo,
    PactUnit,
    ProductInfo,
)
from edge_agent.footprint.pact import (
    FORMATS,
    GXD_SCHEMA_URL,
    STEPS_SCHEMA_URL,
    build_gxd,
    build_gxd_product,
    build_pact_v2,
    build_pact_v2_product,
    build_pact_v3,
    build_pact_v3_product,
    footprint_id,
    lot_footprint_id,
)
from edge_agent.footprint.quality import (
    DataQualityV2,
    DataQualityV3,
    RatedInput,
    SiteGeography,
    data_quality_v2,
    data_quality_v3,
)

__all__ = [
    "DEFAULT_DECLARED_UNITS",
    "FORMATS",
    "GXD_SCHEMA_URL",
    "SIGNIFICANT_DIGITS",
    "STEPS_SCHEMA_URL",
    "DataQualityV2",
    "DataQualityV3",
    "DeclaredUnit",
    "FootprintError",
    "FootprintInfo",
    "LotWithOrders",
    "PactUnit",
    "ProductInfo",
    "RatedInput",
    "SiteGeography",
    "build_gxd",
    "build_gxd_product",
    "build_pact_v2",
    "build_pact_v2_product",
    "build_pact_v3",
    "build_pact_v3_product",
    "data_quality_v2",
    "data_quality_v3",
    "decimal_string",
    "footprint_id",
    "lot_footprint_id",
    "percent_string",
]
