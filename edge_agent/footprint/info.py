"""What a footprint needs that the records do not carry: the company, the site's geography,
the products, how the MES's quantity units map to PACT's declared units.

Plain frozen values, so that the agent (from its configuration, ``footprint`` section) and the
plant hub build them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Literal, get_args

__all__ = [
    "DEFAULT_DECLARED_UNITS",
    "PACT_V2_UNITS",
    "PACT_V3_UNITS",
    "DeclaredUnit",
    "FootprintInfo",
    "PactUnit",
    "ProductInfo",
]

PactUnit = Literal[
    "liter",
    "kilogram",
    "cubic meter",
    "kilowatt hour",
    "megajoule",
    "ton kilometer",
    "square meter",
    "piece",
    "hour",
    "megabit second",
]
# declaredUnitOfMeasurement (3.0) and declaredUnit (2.x) enumerations, in the OpenAPI files.
PACT_V3_UNITS: tuple[str, ...] = get_args(PactUnit)
PACT_V2_UNITS: tuple[str, ...] = (
    "liter",
    "kilogram",
    "cubic meter",
    "kilowatt hour",
    "megajoule",
    "ton kilometer",
    "square meter",
)
# Units whose product mass is irrelevant: PACT 3.0 wants productMassPerDeclaredUnit "0".
MASSLESS_UNITS = ("kilowatt hour", "megajoule", "ton kilometer", "hour", "megabit second")


@dataclass(frozen=True, slots=True)
class DeclaredUnit:
    """PACT's unit for one unit of a record's quantity: ``amount`` declared units per record
    unit (a quantity in tonnes is ``DeclaredUnit("kilogram", Decimal(1000))``)."""

    unit: PactUnit
    amount: Decimal = Decimal(1)


# The MES's usual spellings; a configuration adds or overrides entries.
DEFAULT_DECLARED_UNITS: Mapping[str, DeclaredUnit] = MappingProxyType(
    {
        "piece": DeclaredUnit("piece"),
        "pcs": DeclaredUnit("piece"),
        "pc": DeclaredUnit("piece"),
        "kg": DeclaredUnit("kilogram"),
        "t": DeclaredUnit("kilogram", Decimal(1000)),
        "L": DeclaredUnit("liter"),
        "l": DeclaredUnit("liter"),
        "m3": DeclaredUnit("cubic meter"),
        "m2": DeclaredUnit("square meter"),
        "kWh": DeclaredUnit("kilowatt hour"),
        "MJ": DeclaredUnit("megajoule"),
    }
)


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """A product (an MES ``product_id``) as PACT names it."""

    name: str  # productNameCompany
    description: str  # productDescription
    ids: tuple[str, ...] = ()  # URNs; default urn:pact:<company domain>:supplier-id:<product_id>
    classifications: tuple[str, ...] = ()  # URNs, e.g. urn:eclass:...
    cpc: str | None = None  # UN CPC code: urn:cpc:<code> (3.0), productCategoryCpc (2.x)
    # Mass of one unit of the records' quantity (one piece), without packaging.
    mass_kg: Decimal | None = None
    # Carbon content of one unit of the product (material data the site's meters cannot know).
    fossil_carbon_content_kg: Decimal | None = None
    biogenic_carbon_content_kg: Decimal | None = None


@dataclass(frozen=True, slots=True)
class FootprintInfo:
    """The data owner and the site, for every footprint of one site."""

    company_name: str
    company_ids: tuple[str, ...]  # URNs
    site_country: str  # ISO 3166-1 alpha-2
    site_subdivision: str | None = None  # ISO 3166-2, more specific than the country
    company_domain: str | None = None  # for urn:pact:<domain>:... product and batch ids
    products: Mapping[str, ProductInfo] = field(default_factory=dict)
    declared_units: Mapping[str, DeclaredUnit] = field(
        default_factory=lambda: DEFAULT_DECLARED_UNITS
    )
    ipcc_characterization_factors: tuple[str, ...] = ("AR6",)
    cross_sectoral_standards: tuple[str, ...] = ("GHGP-Product", "PACT-3.0")
