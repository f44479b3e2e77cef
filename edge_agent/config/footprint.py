"""The ``footprint`` section: what PACT footprints need that the records do not carry.

Everything is optional for the agent itself (it runs and publishes records without it); only
``edge-agent export --format pact-v3|pact-v2|gxd`` needs the company's name and ids, and a
product's name, description and (for pieces) mass — :meth:`FootprintConfig.info` lists what is
missing, each with its key path. See docs/carbon.md, section "Footprints".
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from edge_agent.config.models import PositiveFloat, SiteConfig, StrictModel, invalid
from edge_agent.errors import ConfigError
from edge_agent.footprint.decimals import exact_decimal
from edge_agent.footprint.identity import URN_PATTERN
from edge_agent.footprint.info import (
    DEFAULT_DECLARED_UNITS,
    DeclaredUnit,
    FootprintInfo,
    PactUnit,
    ProductInfo,
)

__all__ = [
    "CompanyConfig",
    "DeclaredUnitConfig",
    "FootprintConfig",
    "FootprintSiteConfig",
    "ProductConfig",
]

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def _check_urn(value: str) -> str:
    if not URN_PATTERN.match(value):
        raise invalid(
            "{value!r} is not a URN (RFC 8141: urn:<namespace>:<id>, e.g. "
            "urn:pact:example.com:supplier-id:1234 or urn:gtin:4712345060507; "
            "characters outside letters, digits and -._~!$&'()*+,;=:@/ percent-encoded)",
            value=value,
        )
    return value


def _check_domain(value: str) -> str:
    if not _DOMAIN.match(value):
        raise invalid(
            "{value!r} is not a fully qualified domain name (e.g. example.co.jp): it becomes "
            "the issuer in urn:pact:<domain>:... product ids",
            value=value,
        )
    return value


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise invalid("{value!r} is listed twice in {what}", value=value, what=what)
        seen.add(value)
    return values


# The validators write the messages; the patterns are for the generated JSON Schema (editors).
Urn = Annotated[
    str, AfterValidator(_check_urn), Field(json_schema_extra={"pattern": URN_PATTERN.pattern})
]
Domain = Annotated[
    str, AfterValidator(_check_domain), Field(json_schema_extra={"pattern": _DOMAIN.pattern})
]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]
# MES product ids and quantity units: texts of up to 128 characters (docs/contracts.md).
MesText = Annotated[str, Field(min_length=1, max_length=128)]
IpccReport = Annotated[str, Field(pattern=r"^AR\d+$")]


class CompanyConfig(StrictModel):
    """The data owner of the footprints (PACT ``companyName``, ``companyIds``)."""

    name: Text | None = None
    ids: list[Urn] = Field(default_factory=list)
    # The company's domain: the issuer of urn:pact:<domain>:supplier-id:<product_id> (a
    # product without its own ids) and urn:pact:<domain>:batch-id:<site>:<lot> (each lot).
    domain: Domain | None = None

    _unique_ids = field_validator("ids")(lambda value: _unique(value, "company.ids"))


class FootprintSiteConfig(StrictModel):
    """The site's geography beyond ``site.country``."""

    # ISO 3166-2 subdivision (JP-27 for Osaka): the footprint's geography, more specific than
    # the country, and what factors' geographies are rated against.
    subdivision: Annotated[str, Field(pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$")] | None = None


class ProductConfig(StrictModel):
    """One MES ``product_id`` as PACT names it."""

    name: Text  # productNameCompany, the trade name
    description: Text  # productDescription: technology, dimensions, materials
    ids: list[Urn] = Field(default_factory=list)  # default urn:pact:<domain>:supplier-id:<id>
    classifications: list[Urn] = Field(default_factory=list)  # e.g. urn:eclass:27182401
    cpc: Annotated[str, Field(pattern=r"^\d{1,5}$")] | None = None  # UN CPC (2.x requires it)
    # Mass of one unit of the records' quantity (one piece), in kg, without packaging: PACT
    # requires it for a product counted in pieces, liters, m2 or m3.
    mass_kg: PositiveFloat | None = None
    # Carbon content of one unit of the product, in kg C (material data the meters cannot
    # know; written as 0 where PACT requires a value and none is given).
    fossil_carbon_content_kg: NonNegativeFloat | None = None
    biogenic_carbon_content_kg: NonNegativeFloat | None = None

    _unique_ids = field_validator("ids")(lambda value: _unique(value, "ids"))
    _unique_classes = field_validator("classifications")(
        lambda value: _unique(value, "classifications")
    )


class DeclaredUnitConfig(StrictModel):
    """PACT's declared unit for a quantity unit of the MES: ``sheet: {unit: piece}``, or for a
    unit that is a multiple of one, ``t: {unit: kilogram, amount: 1000}``."""

    unit: PactUnit
    amount: PositiveFloat = 1.0  # declared units in one unit of the MES's quantity


class FootprintConfig(StrictModel):
    """The ``footprint`` section (docs/carbon.md, "Footprints")."""

    company: CompanyConfig = Field(default_factory=CompanyConfig)
    site: FootprintSiteConfig = Field(default_factory=FootprintSiteConfig)
    products: dict[MesText, ProductConfig] = Field(default_factory=dict)
    # The MES's quantity units -> PACT declared units, over the defaults (piece, pcs, kg, t, L,
    # m3, m2, kWh, MJ).
    declared_units: dict[MesText, DeclaredUnitConfig] = Field(default_factory=dict)
    # IPCC assessment reports of the GWP values behind the emission factors (PACT
    # ipccCharacterizationFactors); PACT asks for the latest, AR6.
    ipcc_characterization_factors: list[IpccReport] = Field(
        default_factory=lambda: ["AR6"], min_length=1
    )
    # PACT crossSectoralStandards (ISO14067, GHGP-Product, PACT-3.0, ...).
    cross_sectoral_standards: list[Text] = Field(
        default_factory=lambda: ["GHGP-Product", "PACT-3.0"], min_length=1
    )

    _unique_reports = field_validator("ipcc_characterization_factors")(
        lambda value: _unique(value, "ipcc_characterization_factors")
    )
    _unique_standards = field_validator("cross_sectoral_standards")(
        lambda value: _unique(value, "cross_sectoral_standards")
    )

    def problems(self, site: SiteConfig, path: str = "footprint") -> list[str]:
        """What an export of footprints still needs, each ``key.path: message``."""
        problems: list[str] = []
        if self.company.name is None:
            problems.append(
                f"{path}.company.name: required to export footprints (PACT companyName)"
            )
        if not self.company.ids:
            problems.append(
                f"{path}.company.ids: required to export footprints: at least one URN "
                "identifying the company (PACT companyIds, e.g. urn:lei:..., or "
                "urn:pact:company:customcode:buyer-id:<code your customer gave you>)"
            )
        subdivision = self.site.subdivision
        if subdivision is not None and not subdivision.startswith(f"{site.country}-"):
            problems.append(
                f"{path}.site.subdivision: {subdivision!r} is not a subdivision of "
                f"site.country {site.country!r}"
            )
        return problems

    def info(self, site: SiteConfig) -> FootprintInfo:
        """The footprints' information for this site; ConfigError lists what is missing."""
        problems = self.problems(site)
        if problems or self.company.name is None:
            raise ConfigError(problems)
        declared = dict(DEFAULT_DECLARED_UNITS)
        for name, entry in self.declared_units.items():
            declared[name] = DeclaredUnit(entry.unit, exact_decimal(entry.amount))
        return FootprintInfo(
            company_name=self.company.name,
            company_ids=tuple(self.company.ids),
            site_country=site.country,
            site_subdivision=self.site.subdivision,
            company_domain=self.company.domain,
            products={pid: _product_info(p) for pid, p in self.products.items()},
            declared_units=declared,
            ipcc_characterization_factors=tuple(self.ipcc_characterization_factors),
            cross_sectoral_standards=tuple(self.cross_sectoral_standards),
        )


def _optional_decimal(value: float | None) -> Decimal | None:
    return None if value is None else exact_decimal(value)


def _product_info(product: ProductConfig) -> ProductInfo:
    return ProductInfo(
        name=product.name,
        description=product.description,
        ids=tuple(product.ids),
        classifications=tuple(product.classifications),
        cpc=product.cpc,
        mass_kg=_optional_decimal(product.mass_kg),
        fossil_carbon_content_kg=_optional_decimal(product.fossil_carbon_content_kg),
        biogenic_carbon_content_kg=_optional_decimal(product.biogenic_carbon_content_kg),
    )
