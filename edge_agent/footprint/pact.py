"""PACT ProductFootprints (Tech Spec 3.0 and 2.3) and the Green x Digital extension, built from
lot records.

Every footprint is **gate-to-gate at the site**: the emissions of the energy its equipment used
while the MES's production orders ran, per declared unit of good product. What the site's meters
cannot know — materials and their upstream emissions, transport, biogenic carbon, land use,
packaging — is left out where PACT allows it and written as zero where PACT requires a value
(documented in docs/carbon.md); the comment and ``boundaryProcessesDescription`` say so, so that
the company's PCF system adds the rest for a cradle-to-gate footprint.

Three formats:

- ``pact-v3``: PACT 3.0 ProductFootprint with two extensions — the Green x Digital block
  (``calcMethod`` "0", gate-to-gate emissions per declared unit) and edge-agent's per-step detail.
- ``pact-v2``: PACT 2.3 ProductFootprint (2.x deprecated since 2026-04-01) with the per-step
  detail.
- ``gxd``: what the Green x Digital Consortium's Technical Specifications 2.0 exchange — a PACT
  2.x ProductFootprint (the extension text links the 2.x data model and was written against it)
  carrying the GxD extension, and the per-step detail.

Pure functions: records in (JSON objects as published), a dict out; the caller passes the time
of creation, so the same records always give the same footprint, id included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from edge_agent.errors import FootprintError
from edge_agent.footprint.basis import FootprintBasis, LotWithOrders, lot_basis, product_basis
from edge_agent.footprint.decimals import (
    decimal_places_string,
    decimal_string,
    divide,
    percent_string,
)
from edge_agent.footprint.identity import batch_urn, derived_uuid, supplier_product_urn
from edge_agent.footprint.info import MASSLESS_UNITS, PACT_V2_UNITS, FootprintInfo
from edge_agent.footprint.quality import SiteGeography, data_quality_v2, data_quality_v3
from edge_agent.footprint.records import FactorUse, LotRecord, StepRecord

__all__ = [
    "EXTENSION_SPEC_VERSION",
    "FORMATS",
    "GXD_SCHEMA_URL",
    "STEPS_SCHEMA_URL",
    "V2_SPEC_VERSION",
    "V3_SPEC_VERSION",
    "build_gxd",
    "build_gxd_product",
    "build_pact_v2",
    "build_pact_v2_product",
    "build_pact_v3",
    "build_pact_v3_product",
    "footprint_id",
    "lot_footprint_id",
]

FORMATS = ("pact-v3", "pact-v2", "gxd")
V3_SPEC_VERSION = "3.0.3"  # the OpenAPI file the tests validate against
V2_SPEC_VERSION = "2.3.3"
EXTENSION_SPEC_VERSION = "2.0.0"  # PACT Data Model Extensions specification
GXD_SCHEMA_URL = (
    "https://github.com/Green-x-Digital-Consortium/data-model-extensions/blob/main/specs/"
    "GxD_schema_en.json"
)
GXD_DOCUMENTATION_URL = (
    "https://github.com/Green-x-Digital-Consortium/data-model-extensions/blob/main/specs/"
    "GxD_extension_en.md"
)
GXD_FRAMEWORK_EDITION = "2.0"  # CO2 Visualization Framework Edition 2.0
STEPS_SCHEMA_URL = (
    "https://github.com/edge-agent/edge-agent/schemas/footprint-steps-1.0.schema.json"
)
STEPS_DOCUMENTATION_URL = (
    "https://github.com/edge-agent/edge-agent/blob/main/docs/carbon.md"
    "#footprints-pact-30-pact-23-green-x-digital"
)

# crossSectoralStandards (3.0 names) -> 2.x's deprecated but required crossSectoralStandardsUsed.
_V2_STANDARDS_USED = {
    "GHGP-Product": "GHG Protocol Product standard",
    "ISO14067": "ISO Standard 14067",
    "ISO14040-44": "ISO Standard 14044",
}
_V2_STANDARDS = (
    "ISO14067", "ISO14083", "ISO14040-44", "GHGP-Product", "PEF", "PACT-1.0", "PACT-2.0",
    "PACT-3.0",
)  # fmt: skip


def footprint_id(fmt: str, identity: Sequence[str], version: int) -> str:
    """The id of a footprint: PACT 3.0 makes every version a new footprint (new id, the old
    ones in ``precedingPfIds``); 2.x keeps the id and counts ``version``."""
    if fmt == "pact-v3":
        return derived_uuid(fmt, *identity, f"v{version}")
    return derived_uuid(fmt, *identity)


def lot_footprint_id(fmt: str, site_id: str, lot_id: str, version: int) -> str:
    """The id :func:`build_pact_v3` (and the 2.x builders) give the lot's footprint of
    ``version`` — what a caller lists in ``preceding_ids``."""
    return footprint_id(fmt, ("lot", site_id, lot_id), version)


# -- pieces every format shares ----------------------------------------------------------------


def _utc(moment: datetime) -> str:
    """PACT DateTime: ISO 8601 in UTC, ``Z``, milliseconds when there are any."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _site(info: FootprintInfo) -> SiteGeography:
    return SiteGeography(info.site_country, info.site_subdivision)


def _geography(info: FootprintInfo) -> dict[str, str]:
    """Exactly one geography property (PACT: the most specific level the data owner gives)."""
    if info.site_subdivision:
        return {"geographyCountrySubdivision": info.site_subdivision}
    return {"geographyCountry": info.site_country}


def _check_created(created_at: datetime) -> None:
    if created_at.tzinfo is None:
        raise FootprintError(f"created_at {created_at.isoformat()} has no UTC offset")


def _company(info: FootprintInfo) -> dict[str, Any]:
    if not info.company_name or not info.company_ids:
        raise FootprintError("a footprint needs the company's name and at least one id (URN)")
    return {"companyName": info.company_name, "companyIds": list(dict.fromkeys(info.company_ids))}


def _product_ids(basis: FootprintBasis, info: FootprintInfo) -> list[str]:
    ids = list(basis.product.ids)
    if not ids:
        if info.company_domain is None:
            raise FootprintError(
                f"product {basis.product_id}: no product id URN — give "
                f"footprint.products.{basis.product_id}.ids or footprint.company.domain"
            )
        ids.append(supplier_product_urn(info.company_domain, basis.product_id))
    if basis.kind == "lot" and info.company_domain is not None:
        # The lot as a batch of the product, so a customer can match the delivery.
        lot = basis.lots[0].lot
        ids.append(batch_urn(info.company_domain, lot.site_id, lot.lot_id))
    return list(dict.fromkeys(ids))


def _classifications(basis: FootprintBasis) -> list[str]:
    urns = [f"urn:cpc:{basis.product.cpc}"] if basis.product.cpc else []
    return list(dict.fromkeys([*urns, *basis.product.classifications]))


def _secondary_sources(basis: FootprintBasis) -> list[dict[str, str]]:
    """The secondary factors' sources (PACT: defined only when secondary data was used)."""
    pairs = sorted(
        {(i.factor.source, i.factor.version) for i in basis.inputs if not i.factor.primary}
    )
    return [{"name": name, "version": version} for name, version in pairs]


def _equipment_in_order(basis: FootprintBasis) -> list[str]:
    return list(dict.fromkeys(step.equipment_id for lot in basis.lots for step in lot.steps))


def _carriers(basis: FootprintBasis) -> list[str]:
    by_carrier: dict[str, set[str]] = {}
    for item in basis.inputs:
        by_carrier.setdefault(item.factor.carrier, set()).add(item.factor.set)
    return [
        f"{carrier} ({'/'.join(sorted(sets))}-based factor)"
        for carrier, sets in sorted(by_carrier.items())
    ]


def _what(basis: FootprintBasis) -> str:
    if basis.kind == "lot":
        lot = basis.lots[0].lot
        return (
            f"lot {lot.lot_id} (good quantity {decimal_string(basis.quantity)} {basis.record_unit})"
        )
    return (
        f"{len(basis.lots)} lot(s) of product {basis.product_id} ending "
        f"{_utc(basis.period_start)} .. {_utc(basis.period_end)} "
        f"(good quantity {decimal_string(basis.quantity)} {basis.record_unit})"
    )


def _boundary_description(basis: FootprintBasis, info: FootprintInfo) -> str:
    steps = ", ".join(_equipment_in_order(basis)) or "none"
    where = info.site_subdivision or info.site_country
    return (
        f"Gate-to-gate at site {basis.site_id} ({where}), {_what(basis)}. Included: the energy "
        f"metered on each production step's equipment while its production order ran (steps, "
        f"by equipment in order: {steps}; carriers: {', '.join(_carriers(basis)) or 'none'}), "
        "with the share of shared equipment (compressed air, HVAC, lighting) allocated to it "
        "where the site configures one. Not included: materials and purchased parts and their "
        "upstream emissions, transport, packaging, the site's energy outside production orders "
        "(published as energy-balance records), use and end of life."
    )


def _comment(basis: FootprintBasis) -> str:
    records = ", ".join(
        f"{lot.lot.record_id} revision {lot.lot.revision}" for lot in basis.lots[:3]
    )
    if len(basis.lots) > 3:
        records += f" and {len(basis.lots) - 3} more"
    return (
        f"Gate-to-gate contribution of site {basis.site_id} to this product, computed by "
        f"edge-agent from metered energy and the MES's production orders ({_what(basis)}; lot "
        f"record {records}). It is not a cradle-to-gate PCF: the company's PCF system adds the "
        "upstream emissions of materials and the other life-cycle stages. Biogenic and land-use "
        "emissions are outside this boundary and not reported; pcfIncludingBiogenicUptake "
        "equals pcfExcludingBiogenicUptake for the same reason. Per-step detail (orders, "
        "equipment, kWh, factors, record ids and revisions): extension " + STEPS_SCHEMA_URL + "."
    )


_ALLOCATION = (
    "Each equipment's metered energy is attributed to the production order running on it over "
    "the order's time (counter differences, interpolated at the order's start and stop); orders "
    "overlapping on one equipment share it equally or by good quantity; shared equipment "
    "(compressors, HVAC, lighting) is allocated to the equipment it serves by a configured key "
    "(running time, direct energy, quantity or equal). The lot's CO2e is divided by its good "
    "quantity: scrap carries no share of its own."
)
_ALLOCATION_PRODUCT = (
    " Over a period, the lots' CO2e is divided by their total good quantity (the quantity-"
    "weighted mean of the lots' intensities)."
)
_EXEMPTED = (
    "None within the gate-to-gate boundary. Emissions outside it (materials, transport, "
    "packaging) are not part of this footprint rather than exempted."
)


def _allocation(basis: FootprintBasis) -> str:
    return _ALLOCATION + (_ALLOCATION_PRODUCT if basis.kind == "product" else "")


def _per_declared_unit(basis: FootprintBasis, value: Decimal) -> str:
    """A per-record-unit property (mass, carbon content) per PACT declared unit."""
    return decimal_string(divide(value, basis.declared.amount))


def _mass_per_declared_unit(basis: FootprintBasis) -> str:
    unit = basis.declared.unit
    if unit in MASSLESS_UNITS:
        return "0"
    if unit == "kilogram":
        return "1"
    if basis.product.mass_kg is None:
        raise FootprintError(
            f"product {basis.product_id}: PACT needs the mass of one {unit} "
            f"(footprint.products.{basis.product_id}.mass_kg)"
        )
    return _per_declared_unit(basis, basis.product.mass_kg)


def _fossil_carbon_content(basis: FootprintBasis) -> str:
    content = basis.product.fossil_carbon_content_kg
    return "0" if content is None else _per_declared_unit(basis, content)


def _biogenic_carbon_content(basis: FootprintBasis) -> str | None:
    content = basis.product.biogenic_carbon_content_kg
    return None if content is None else _per_declared_unit(basis, content)


def _step_json(step: StepRecord) -> dict[str, Any]:
    def optional(value: Decimal | None) -> str | None:
        return None if value is None else decimal_string(value)

    return {
        "order_id": step.order_id,
        "equipment_id": step.equipment_id,
        "record_id": step.record_id,
        "revision": step.revision,
        "record_available": step.record_available,
        "start": None if step.start is None else _utc(step.start),
        "end": None if step.end is None else _utc(step.end),
        "energy_kwh": decimal_string(step.energy_kwh),
        "energy_direct_kwh": optional(step.energy_direct_kwh),
        "energy_shared_kwh": optional(step.energy_shared_kwh),
        "co2e_kg": decimal_string(step.co2e_kg),
        "co2e_by_set": {name: decimal_string(v) for name, v in sorted(step.co2e_by_set.items())},
        "measured_share": optional(step.measured_share),
        "primary_data_share": optional(step.primary_data_share),
        "coverage": optional(step.coverage),
        "factors": [_factor_json(factor) for factor in step.factors],
        "flags": list(step.flags),
    }


def _factor_json(factor: FactorUse) -> dict[str, Any]:
    return {
        "carrier": factor.carrier,
        "set": factor.set,
        "value": decimal_string(factor.value),
        "unit": factor.unit,
        "source": factor.source,
        "version": factor.version,
        "primary": factor.primary,
        "geography": factor.geography,
        "reference_year": factor.reference_year,
        "valid_from": None if factor.valid_from is None else _utc(factor.valid_from),
        "valid_to": None if factor.valid_to is None else _utc(factor.valid_to),
        "activity": decimal_string(factor.activity),
        "activity_unit": factor.activity_unit,
        "co2e_kg": decimal_string(factor.co2e_kg),
    }


def _lot_json(lot: LotRecord, steps: Sequence[StepRecord]) -> dict[str, Any]:
    return {
        "lot_id": lot.lot_id,
        "record_id": lot.record_id,
        "revision": lot.revision,
        "start": None if lot.start is None else _utc(lot.start),
        "end": None if lot.end is None else _utc(lot.end),
        "quantity_good": None if lot.quantity_good is None else decimal_string(lot.quantity_good),
        "unit": lot.unit,
        "energy_kwh": decimal_string(lot.energy_kwh),
        "co2e_kg": decimal_string(lot.co2e_kg),
        "co2e_set": lot.co2e_set,
        "co2e_by_set": {name: decimal_string(v) for name, v in sorted(lot.co2e_by_set.items())},
        "measured_share": decimal_string(lot.measured_share),
        "primary_data_share": decimal_string(lot.primary_data_share),
        "coverage": decimal_string(lot.coverage),
        "flags": list(lot.flags),
        "steps": [_step_json(step) for step in steps],
    }


def _steps_extension(basis: FootprintBasis) -> dict[str, Any]:
    """edge-agent's per-step detail: every lot and step with the ids and revisions of the
    records it comes from (field names and meanings as in the records, docs/contracts.md;
    numbers as decimal strings; shares 0..1 as in the records, not percent)."""
    return {
        "specVersion": EXTENSION_SPEC_VERSION,
        "dataSchema": STEPS_SCHEMA_URL,
        "documentation": STEPS_DOCUMENTATION_URL,
        "data": {
            "site_id": basis.site_id,
            "product_id": basis.product_id,
            "unit": basis.record_unit,
            "quantity_good": decimal_string(basis.quantity),
            "energy_kwh": decimal_string(basis.energy_kwh),
            "co2e_kg": decimal_string(basis.co2e_kg),
            "lots": [_lot_json(item.lot, item.steps) for item in basis.lots],
        },
    }


def _gxd_extension(
    basis: FootprintBasis, per_declared_unit: str, unit_comment: str
) -> dict[str, Any]:
    """The Green x Digital block of a product-based footprint (``calcMethod`` "0": no
    ``organization`` block, which only the organization-based method uses)."""
    return {
        "specVersion": EXTENSION_SPEC_VERSION,
        "dataSchema": GXD_SCHEMA_URL,
        "documentation": GXD_DOCUMENTATION_URL,
        "data": {
            "calcMethod": "0",
            "FWedition": GXD_FRAMEWORK_EDITION,
            "gateToGate": {
                "gateToGateFossilGhgEmissions": per_declared_unit,
                "unitaryProductAmountComment": unit_comment,
            },
        },
    }


# -- PACT 3.0 ----------------------------------------------------------------------------------


def _pact_v3(
    basis: FootprintBasis,
    info: FootprintInfo,
    *,
    created_at: datetime,
    version: int,
    preceding_ids: Sequence[str],
) -> dict[str, Any]:
    _check_created(created_at)
    if version < 0:
        raise FootprintError(f"version {version} is negative")
    per_unit = decimal_string(basis.co2e_per_declared_unit)
    quality = data_quality_v3(basis.inputs, _site(info), basis.period_start, basis.period_end)
    pcf: dict[str, Any] = {
        "declaredUnitOfMeasurement": basis.declared.unit,
        "declaredUnitAmount": "1",
        "productMassPerDeclaredUnit": _mass_per_declared_unit(basis),
        "referencePeriodStart": _utc(basis.period_start),
        "referencePeriodEnd": _utc(basis.period_end),
        **_geography(info),
        "boundaryProcessesDescription": _boundary_description(basis, info),
        "pcfExcludingBiogenicUptake": per_unit,
        "pcfIncludingBiogenicUptake": per_unit,
        "fossilGhgEmissions": per_unit,
        "fossilCarbonContent": _fossil_carbon_content(basis),
    }
    biogenic = _biogenic_carbon_content(basis)
    if biogenic is not None:
        pcf["biogenicCarbonContent"] = biogenic
    pcf |= {
        "packagingEmissionsIncluded": False,
        "ipccCharacterizationFactors": list(dict.fromkeys(info.ipcc_characterization_factors)),
        "crossSectoralStandards": list(dict.fromkeys(info.cross_sectoral_standards)),
        "exemptedEmissionsPercent": "0",
        "exemptedEmissionsDescription": _EXEMPTED,
        "allocationRulesDescription": _allocation(basis),
    }
    secondary = _secondary_sources(basis)
    if secondary:
        pcf["secondaryEmissionFactorSources"] = secondary
    pcf["primaryDataShare"] = percent_string(basis.primary_data_share)
    pcf["dqi"] = {
        "technologicalDQR": decimal_places_string(quality.technological),
        "geographicalDQR": decimal_places_string(quality.geographical),
        "temporalDQR": decimal_places_string(quality.temporal),
    }
    footprint: dict[str, Any] = {
        "id": footprint_id("pact-v3", basis.identity, version),
        "specVersion": V3_SPEC_VERSION,
    }
    if preceding_ids:
        footprint["precedingPfIds"] = list(dict.fromkeys(preceding_ids))
    unit_comment = (
        f"Declared unit: 1 {basis.declared.unit} of {basis.product.name} "
        f"(declaredUnitAmount 1). gateToGateFossilGhgEmissions: kg CO2e per declared unit "
        f"emitted at site {basis.site_id} by the metered production steps of {_what(basis)}."
    )
    footprint |= {
        "created": _utc(created_at),
        "status": "Active",
        **_company(info),
        "productDescription": basis.product.description,
        "productIds": _product_ids(basis, info),
    }
    classifications = _classifications(basis)
    if classifications:
        footprint["productClassifications"] = classifications
    footprint |= {
        "productNameCompany": basis.product.name,
        "comment": _comment(basis),
        "pcf": pcf,
        "extensions": [_gxd_extension(basis, per_unit, unit_comment), _steps_extension(basis)],
    }
    return footprint


def build_pact_v3(
    lot_record: Mapping[str, Any],
    order_records: Sequence[Mapping[str, Any]],
    info: FootprintInfo,
    *,
    created_at: datetime,
    version: int = 1,
    preceding_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """One lot's PACT 3.0 ProductFootprint (gate-to-gate at the site, per declared unit of good
    product). ``version`` (the lot record's revision, by the agent's convention) enters the id:
    in PACT 3.0 each version is a new footprint; ``preceding_ids`` lists the earlier versions'
    ids (:func:`lot_footprint_id`). Raises FootprintError naming the lot when the records
    cannot make a footprint (incomplete, no good quantity, product information missing)."""
    basis = lot_basis(lot_record, order_records, info)
    return _pact_v3(
        basis, info, created_at=created_at, version=version, preceding_ids=preceding_ids
    )


def build_pact_v3_product(
    lot_records_with_orders: Sequence[LotWithOrders],
    info: FootprintInfo,
    period_start: datetime,
    period_end: datetime,
    *,
    created_at: datetime,
    version: int = 1,
    preceding_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """A product's PACT 3.0 ProductFootprint over a reference period, from the lots of one
    ``product_id`` (each a lot record with its order records): CO2e over good quantity,
    primary data share weighted by CO2e. The id depends on the lots' records and revisions,
    so a changed lot gives a new footprint."""
    basis = product_basis(lot_records_with_orders, info, period_start, period_end)
    return _pact_v3(
        basis, info, created_at=created_at, version=version, preceding_ids=preceding_ids
    )


# -- PACT 2.3 and Green x Digital --------------------------------------------------------------


def _v2_declared(basis: FootprintBasis) -> tuple[str, Decimal, Decimal]:
    """2.x's declared unit, the amount of it in one unit of product (``unitaryProductAmount``)
    and the total amount produced. 2.x has no ``piece``: a piece is stated per kilogram, the
    product (one piece) containing its mass in kilograms."""
    unit = basis.declared.unit
    if unit in PACT_V2_UNITS:
        return unit, Decimal(1), basis.declared_quantity
    if unit == "piece":
        mass = basis.product.mass_kg
        if mass is None:
            raise FootprintError(
                f"product {basis.product_id}: PACT 2.x has no 'piece' unit; a piece is stated "
                f"per kilogram, which needs footprint.products.{basis.product_id}.mass_kg"
            )
        return "kilogram", divide(mass, basis.declared.amount), basis.quantity * mass
    raise FootprintError(f"product {basis.product_id}: declared unit {unit!r} has no PACT 2.x form")


def _v2_standards(info: FootprintInfo) -> tuple[list[str], list[str]]:
    used = list(
        dict.fromkeys(
            _V2_STANDARDS_USED[s] for s in info.cross_sectoral_standards if s in _V2_STANDARDS_USED
        )
    )
    if not used:
        raise FootprintError(
            "PACT 2.x requires crossSectoralStandardsUsed: footprint.cross_sectoral_standards "
            f"needs one of {', '.join(_V2_STANDARDS_USED)}"
        )
    return used, [s for s in dict.fromkeys(info.cross_sectoral_standards) if s in _V2_STANDARDS]


def _v2_characterization(info: FootprintInfo) -> str:
    """2.x's single ``characterizationFactors``: the earliest report used (AR5 or AR6)."""
    earliest = min(info.ipcc_characterization_factors, key=lambda name: int(name[2:]))
    if earliest not in ("AR5", "AR6"):
        raise FootprintError(
            f"PACT 2.x accepts AR5 or AR6 as characterizationFactors, not {earliest}"
        )
    return earliest


def _number(value: Decimal | str) -> float:
    """A 2.x JSON number (``primaryDataShare``, the DQI) from its rounded decimal."""
    return float(value)


def _pact_v2(
    basis: FootprintBasis,
    info: FootprintInfo,
    fmt: str,
    *,
    created_at: datetime,
    updated_at: datetime | None,
    version: int,
) -> dict[str, Any]:
    _check_created(created_at)
    if updated_at is not None:
        _check_created(updated_at)
    if version < 0:
        raise FootprintError(f"version {version} is negative")
    if basis.product.cpc is None:
        raise FootprintError(
            f"product {basis.product_id}: PACT 2.x requires productCategoryCpc "
            f"(footprint.products.{basis.product_id}.cpc, a UN CPC code)"
        )
    unit, unitary_amount, declared_total = _v2_declared(basis)
    per_unit = decimal_string(divide(basis.co2e_kg, declared_total))

    def per_v2_unit(per_record_unit: Decimal | None) -> str:
        if per_record_unit is None:
            return "0"
        return decimal_string(divide(per_record_unit * basis.quantity, declared_total))

    used, standards = _v2_standards(info)
    quality = data_quality_v2(basis.inputs, _site(info), basis.period_start, basis.period_end)
    pcf: dict[str, Any] = {
        "declaredUnit": unit,
        "unitaryProductAmount": decimal_string(unitary_amount),
        "productMassPerDeclaredUnit": "1" if unit == "kilogram" else _mass_per_declared_unit(basis),
        "pCfExcludingBiogenic": per_unit,
        "pCfIncludingBiogenic": per_unit,
        "fossilGhgEmissions": per_unit,
        # Material data the meters cannot know: configured per product, else 0 (docs/carbon.md).
        "fossilCarbonContent": per_v2_unit(basis.product.fossil_carbon_content_kg),
        "biogenicCarbonContent": per_v2_unit(basis.product.biogenic_carbon_content_kg),
        "characterizationFactors": _v2_characterization(info),
        "ipccCharacterizationFactorsSources": list(
            dict.fromkeys(info.ipcc_characterization_factors)
        ),
        "crossSectoralStandardsUsed": used,
    }
    if standards:
        pcf["crossSectoralStandards"] = standards
    pcf |= {
        "boundaryProcessesDescription": _boundary_description(basis, info),
        "referencePeriodStart": _utc(basis.period_start),
        "referencePeriodEnd": _utc(basis.period_end),
        **_geography(info),
    }
    secondary = _secondary_sources(basis)
    if secondary:
        pcf["secondaryEmissionFactorSources"] = secondary
    pcf |= {
        "exemptedEmissionsPercent": 0,
        "exemptedEmissionsDescription": _EXEMPTED,
        "packagingEmissionsIncluded": False,
        "allocationRulesDescription": _allocation(basis),
        "primaryDataShare": _number(percent_string(basis.primary_data_share)),
        "dqi": {
            "coveragePercent": _number(decimal_places_string(quality.coverage_percent)),
            "technologicalDQR": _number(decimal_places_string(quality.technological)),
            "temporalDQR": _number(decimal_places_string(quality.temporal)),
            "geographicalDQR": _number(decimal_places_string(quality.geographical)),
            "completenessDQR": _number(decimal_places_string(quality.completeness)),
            "reliabilityDQR": _number(decimal_places_string(quality.reliability)),
        },
    }
    footprint: dict[str, Any] = {
        "id": footprint_id(fmt, basis.identity, version),
        "specVersion": V2_SPEC_VERSION,
        "version": version,
        "created": _utc(created_at),
    }
    if updated_at is not None:
        footprint["updated"] = _utc(updated_at)
    footprint |= {
        "status": "Active",
        **_company(info),
        "productDescription": basis.product.description,
        "productIds": _product_ids(basis, info),
        "productCategoryCpc": basis.product.cpc,
    }
    classifications = _classifications(basis)
    if classifications:
        footprint["productClassifications"] = classifications
    extensions: list[dict[str, Any]] = []
    if fmt == "gxd":
        if unit == basis.declared.unit:
            amount_comment = (
                f"Declared unit: 1 {unit} of {basis.product.name} (unitaryProductAmount 1)."
            )
        else:
            amount_comment = (
                f"Declared unit: 1 kilogram; the product, 1 {basis.declared.unit} of "
                f"{basis.product.name}, contains {decimal_string(unitary_amount)} kg "
                "(unitaryProductAmount)."
            )
        amount_comment += (
            " gateToGateFossilGhgEmissions: kg CO2e per declared unit emitted at site "
            f"{basis.site_id} by the metered production steps of {_what(basis)}."
        )
        extensions.append(_gxd_extension(basis, per_unit, amount_comment))
    extensions.append(_steps_extension(basis))
    footprint |= {
        "productNameCompany": basis.product.name,
        "comment": _comment(basis),
        "pcf": pcf,
        "extensions": extensions,
    }
    return footprint


def build_pact_v2(
    lot_record: Mapping[str, Any],
    order_records: Sequence[Mapping[str, Any]],
    info: FootprintInfo,
    *,
    created_at: datetime,
    updated_at: datetime | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """One lot's PACT 2.3 ProductFootprint. 2.x keeps a footprint's id across versions and
    counts them in ``version`` (with ``updated`` after the first); ``created_at`` is the first
    version's time."""
    basis = lot_basis(lot_record, order_records, info)
    return _pact_v2(
        basis, info, "pact-v2", created_at=created_at, updated_at=updated_at, version=version
    )


def build_pact_v2_product(
    lot_records_with_orders: Sequence[LotWithOrders],
    info: FootprintInfo,
    period_start: datetime,
    period_end: datetime,
    *,
    created_at: datetime,
    updated_at: datetime | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """A product's PACT 2.3 ProductFootprint over a reference period (see
    :func:`build_pact_v3_product`)."""
    basis = product_basis(lot_records_with_orders, info, period_start, period_end)
    return _pact_v2(
        basis, info, "pact-v2", created_at=created_at, updated_at=updated_at, version=version
    )


def build_gxd(
    lot_record: Mapping[str, Any],
    order_records: Sequence[Mapping[str, Any]],
    info: FootprintInfo,
    *,
    created_at: datetime,
    updated_at: datetime | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """One lot's footprint as the Green x Digital Consortium exchanges it: a PACT 2.x
    ProductFootprint carrying the GxD extension (product-based, gate-to-gate emissions per
    declared unit)."""
    basis = lot_basis(lot_record, order_records, info)
    return _pact_v2(
        basis, info, "gxd", created_at=created_at, updated_at=updated_at, version=version
    )


def build_gxd_product(
    lot_records_with_orders: Sequence[LotWithOrders],
    info: FootprintInfo,
    period_start: datetime,
    period_end: datetime,
    *,
    created_at: datetime,
    updated_at: datetime | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """A product's Green x Digital footprint over a reference period."""
    basis = product_basis(lot_records_with_orders, info, period_start, period_end)
    return _pact_v2(
        basis, info, "gxd", created_at=created_at, updated_at=updated_at, version=version
    )
