"""Footprints of lots and products: PACT 3.0, PACT 2.3 and Green x Digital, validated against
the unmodified OpenAPI and GxD schemas, numbers checked by hand."""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from edge_agent.errors import FootprintError
from edge_agent.footprint import (
    DeclaredUnit,
    build_gxd,
    build_gxd_product,
    build_pact_v2,
    build_pact_v2_product,
    build_pact_v3,
    build_pact_v3_product,
    lot_footprint_id,
)
from edge_agent.footprint.info import DEFAULT_DECLARED_UNITS, ProductInfo
from tests.unit.footprint_support import (
    GXD_SCHEMA_URL,
    PACT_DIR,
    PRODUCT,
    SITE,
    STEPS_SCHEMA_URL,
    T0,
    assert_valid_footprint,
    errors_of,
    extension,
    factor_use,
    gxd_schema_as_published,
    gxd_validator,
    info,
    lot_record,
    order_record,
    pact_v2_validator,
    pact_v3_validator,
    reference_file,
    worked_example,
)

CREATED = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
LOT_BUILDERS = {"pact-v3": build_pact_v3, "pact-v2": build_pact_v2, "gxd": build_gxd}
PRODUCT_BUILDERS = {
    "pact-v3": build_pact_v3_product,
    "pact-v2": build_pact_v2_product,
    "gxd": build_gxd_product,
}


def lot_footprint(fmt: str, lot: dict[str, Any], orders: list[dict[str, Any]], **kw: Any) -> Any:
    return LOT_BUILDERS[fmt](lot, orders, kw.pop("info", info()), created_at=CREATED, **kw)


# -- the validators themselves -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["example-1", "example-2", "example-3", "example-4"])
def test_validator_accepts_pacts_own_v3_examples(name: str) -> None:
    example = json.loads(reference_file(PACT_DIR / f"examples/v3/{name}.json").read_text())
    assert errors_of(pact_v3_validator(), example) == []


def test_validator_accepts_pacts_own_v2_example() -> None:
    response = json.loads(
        reference_file(PACT_DIR / "examples/v2/get-footprint-response.json").read_text()
    )
    assert errors_of(pact_v2_validator(), response["data"]) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("pcf.fossilGhgEmissions", None),  # None: remove the property
        ("pcf.declaredUnitOfMeasurement", "batch"),
        ("pcf.primaryDataShare", 12.9),
        ("pcf.declaredUnitAmount", "0"),
        ("pcf.pcfExcludingBiogenicUptake", "1.2e-3"),
        ("id", "not-a-uuid"),
        ("created", "2025-04-30 00:00"),
    ],
)
def test_validator_rejects_what_pact_rejects(path: str, value: Any) -> None:
    """SOURCES.md's hand checks, and the formats our validator adds (uuid, date-time)."""
    example = json.loads(reference_file(PACT_DIR / "examples/v3/example-1.json").read_text())
    *parents, last = path.split(".")
    node = example
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    assert errors_of(pact_v3_validator(), example) != []


def test_gxd_schema_defect_is_as_documented() -> None:
    """gxd/SOURCES.md: organization.required names two properties the schema never defines,
    so the published schema refuses every organization block; the test validator drops them."""
    organization = {
        "calcMethod": "1",
        "FWedition": "2.0",
        "organization": {
            "scope1DistributionLevel": "site",
            "scope2DistributionLevel": "site",
            "scope3DistributionLevel": "organization",
        },
    }
    import jsonschema

    published = jsonschema.Draft202012Validator(gxd_schema_as_published())
    messages = [error.message for error in published.iter_errors(organization)]
    assert any("'declaredUnit' is a required property" in m for m in messages)
    assert any("'crossSectoralStandardsUsed' is a required property" in m for m in messages)
    assert errors_of(gxd_validator(), organization) == []
    assert errors_of(gxd_validator(), {"calcMethod": "0"}) != []  # FWedition is required


# -- one lot -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pact-v3", "pact-v2", "gxd"])
def test_worked_example_validates_in_every_format(fmt: str) -> None:
    lot, orders = worked_example()
    assert_valid_footprint(lot_footprint(fmt, lot, orders), fmt)


def test_v3_pcf_is_the_lots_co2e_per_good_piece() -> None:
    lot, orders = worked_example()  # 1.68 kg CO2e, 20 good pieces
    footprint = build_pact_v3(lot, orders, info(), created_at=CREATED)
    pcf = footprint["pcf"]
    assert pcf["declaredUnitOfMeasurement"] == "piece"
    assert pcf["declaredUnitAmount"] == "1"
    assert pcf["productMassPerDeclaredUnit"] == "6.25"
    assert pcf["pcfExcludingBiogenicUptake"] == "0.084"
    assert pcf["pcfIncludingBiogenicUptake"] == "0.084"
    assert pcf["fossilGhgEmissions"] == "0.084"
    assert pcf["fossilCarbonContent"] == "0"
    assert "biogenicCarbonContent" not in pcf  # unknown at the site: left out in 3.0
    assert pcf["referencePeriodStart"] == "2026-01-30T23:00:00Z"
    assert pcf["referencePeriodEnd"] == "2026-01-31T01:25:00Z"  # the last step's end
    assert pcf["geographyCountrySubdivision"] == "JP-27"
    assert "geographyCountry" not in pcf
    assert pcf["primaryDataShare"] == "0"  # metered kWh x grid average: 0 % primary
    assert pcf["exemptedEmissionsPercent"] == "0"
    assert pcf["packagingEmissionsIncluded"] is False
    assert pcf["secondaryEmissionFactorSources"] == [
        {"name": "MOE Japan, electricity emission factors", "version": "FY2024"}
    ]
    described = pcf["boundaryProcessesDescription"]
    assert "laser-cutter, press-brake, welding-robot, paint-booth, assembly" in described
    assert "Gate-to-gate" in described
    assert "Not included" in described
    gxd = extension(footprint, GXD_SCHEMA_URL)["data"]
    assert gxd["calcMethod"] == "0"
    assert gxd["FWedition"] == "2.0"
    assert "organization" not in gxd
    assert gxd["gateToGate"]["gateToGateFossilGhgEmissions"] == "0.084"
    assert "1 piece" in gxd["gateToGate"]["unitaryProductAmountComment"]


def test_v3_identity_company_and_product() -> None:
    lot, orders = worked_example()
    footprint = build_pact_v3(lot, orders, info(), created_at=CREATED)
    assert footprint["specVersion"] == "3.0.3"
    assert footprint["status"] == "Active"
    assert footprint["created"] == "2026-02-01T09:00:00Z"
    assert "version" not in footprint  # obsolete in 3.0: a new version is a new id
    assert "precedingPfIds" not in footprint
    assert footprint["companyName"] == "Example Enclosures K.K."
    assert footprint["companyIds"] == ["urn:pact:company:customcode:buyer-id:4321"]
    assert footprint["productNameCompany"] == "Enclosure 400x300"
    assert footprint["productIds"] == [
        "urn:pact:example-enclosures.co.jp:supplier-id:ENCL-400x300",
        "urn:pact:example-enclosures.co.jp:batch-id:osaka-plant:LOT-0001",
    ]
    assert footprint["productClassifications"] == ["urn:cpc:42999"]
    assert "not a cradle-to-gate PCF" in footprint["comment"]


def test_ids_are_derived_so_a_reexport_gives_the_same_footprint() -> None:
    lot, orders = worked_example(revision=3)
    first = build_pact_v3(lot, orders, info(), created_at=CREATED, version=3)
    again = build_pact_v3(
        copy.deepcopy(lot), copy.deepcopy(orders), info(), created_at=CREATED, version=3
    )
    assert first == again
    assert first["id"] == lot_footprint_id("pact-v3", SITE, "LOT-0001", 3)
    assert uuid.UUID(first["id"]).version == 4
    earlier = [lot_footprint_id("pact-v3", SITE, "LOT-0001", v) for v in (1, 2)]
    assert len({first["id"], *earlier}) == 3
    other_lot = build_pact_v3(*worked_example("LOT-0002"), info(), created_at=CREATED, version=3)
    assert other_lot["id"] != first["id"]


def test_v3_new_version_names_its_predecessors() -> None:
    lot, orders = worked_example(revision=2)
    preceding = [lot_footprint_id("pact-v3", SITE, "LOT-0001", 1)]
    footprint = build_pact_v3(
        lot, orders, info(), created_at=CREATED, version=2, preceding_ids=preceding
    )
    assert footprint["precedingPfIds"] == preceding
    assert footprint["id"] == lot_footprint_id("pact-v3", SITE, "LOT-0001", 2)
    assert_valid_footprint(footprint, "pact-v3")


def test_v2_keeps_its_id_across_versions_and_counts_them() -> None:
    lot, orders = worked_example(revision=1)
    first = build_pact_v2(lot, orders, info(), created_at=CREATED)
    lot2, orders2 = worked_example(revision=2)
    second = build_pact_v2(
        lot2, orders2, info(), created_at=CREATED, updated_at=CREATED + timedelta(days=1), version=2
    )
    assert first["id"] == second["id"]
    assert (first["version"], second["version"]) == (1, 2)
    assert "updated" not in first  # PACT 2.x: MUST NOT be there before an update
    assert second["updated"] == "2026-02-02T09:00:00Z"
    gxd = build_gxd(lot, orders, info(), created_at=CREATED)
    assert gxd["id"] != first["id"]  # another document of the same lot
    assert_valid_footprint(second, "pact-v2")


def test_v2_states_a_piece_per_kilogram() -> None:
    """2.x has no 'piece': the product (one piece of 6.25 kg) contains 6.25 declared units."""
    lot, orders = worked_example()
    pcf = build_pact_v2(lot, orders, info(), created_at=CREATED)["pcf"]
    assert pcf["declaredUnit"] == "kilogram"
    assert pcf["unitaryProductAmount"] == "6.25"
    assert pcf["productMassPerDeclaredUnit"] == "1"
    assert pcf["pCfExcludingBiogenic"] == "0.01344"  # 1.68 / (20 x 6.25)
    assert pcf["fossilGhgEmissions"] == "0.01344"
    assert pcf["biogenicCarbonContent"] == "0"
    assert pcf["characterizationFactors"] == "AR6"
    assert pcf["crossSectoralStandardsUsed"] == ["GHG Protocol Product standard"]
    assert pcf["primaryDataShare"] == 0.0
    assert pcf["exemptedEmissionsPercent"] == 0
    dqi = pcf["dqi"]
    assert dqi["coveragePercent"] == 100.0
    assert all(1 <= dqi[key] <= 3 for key in dqi if key.endswith("DQR"))


def test_gxd_block_per_declared_unit_of_the_v2_document() -> None:
    lot, orders = worked_example()
    footprint = build_gxd(lot, orders, info(), created_at=CREATED)
    gate = extension(footprint, GXD_SCHEMA_URL)["data"]["gateToGate"]
    assert gate["gateToGateFossilGhgEmissions"] == footprint["pcf"]["pCfExcludingBiogenic"]
    assert "1 kilogram" in gate["unitaryProductAmountComment"]
    assert "6.25 kg" in gate["unitaryProductAmountComment"]
    plain = build_pact_v2(lot, orders, info(), created_at=CREATED)
    assert [e["dataSchema"] for e in plain["extensions"]] == [STEPS_SCHEMA_URL]


def test_a_unit_in_both_versions_needs_no_mass() -> None:
    orders = [order_record("mixer", 2.0)]
    lot = lot_record(orders, quantity_good=400)
    lot["unit"] = "kg"
    product = ProductInfo(name="Compound A", description="Rubber compound, bulk", cpc="35510")
    footprint_info = info(products={PRODUCT: product}, site_subdivision=None)
    v3 = build_pact_v3(lot, orders, footprint_info, created_at=CREATED)
    assert v3["pcf"]["declaredUnitOfMeasurement"] == "kilogram"
    assert v3["pcf"]["productMassPerDeclaredUnit"] == "1"
    assert v3["pcf"]["pcfExcludingBiogenicUptake"] == "0.005"
    assert v3["pcf"]["geographyCountry"] == "JP"
    v2 = build_pact_v2(lot, orders, footprint_info, created_at=CREATED)
    assert (v2["pcf"]["declaredUnit"], v2["pcf"]["unitaryProductAmount"]) == ("kilogram", "1")
    assert v2["pcf"]["pCfExcludingBiogenic"] == "0.005"
    for footprint, fmt in ((v3, "pact-v3"), (v2, "pact-v2")):
        assert_valid_footprint(footprint, fmt)


def test_a_record_unit_that_is_a_multiple_of_a_declared_unit() -> None:
    orders = [order_record("kiln", 30.0)]
    lot = lot_record(orders, quantity_good=1.5)
    lot["unit"] = "t"
    product = ProductInfo(name="Clinker", description="Cement clinker", cpc="37410")
    footprint = build_pact_v3(lot, orders, info(products={PRODUCT: product}), created_at=CREATED)
    assert DEFAULT_DECLARED_UNITS["t"] == DeclaredUnit("kilogram", Decimal(1000))
    assert footprint["pcf"]["pcfExcludingBiogenicUptake"] == "0.02"  # 30 kg / 1500 kg


def test_configured_carbon_content_per_declared_unit() -> None:
    product = ProductInfo(
        name="Enclosure 400x300",
        description="Sheet-steel enclosure",
        cpc="42999",
        mass_kg=Decimal("6.25"),
        fossil_carbon_content_kg=Decimal("0.05"),
        biogenic_carbon_content_kg=Decimal("0.5"),
    )
    lot, orders = worked_example()
    footprint_info = info(products={PRODUCT: product})
    v3 = build_pact_v3(lot, orders, footprint_info, created_at=CREATED)["pcf"]
    assert (v3["fossilCarbonContent"], v3["biogenicCarbonContent"]) == ("0.05", "0.5")
    v2 = build_pact_v2(lot, orders, footprint_info, created_at=CREATED)["pcf"]
    assert (v2["fossilCarbonContent"], v2["biogenicCarbonContent"]) == ("0.008", "0.08")


def test_step_detail_traces_back_to_the_records() -> None:
    lot, orders = worked_example(revision=2)
    footprint = build_pact_v3(lot, orders, info(), created_at=CREATED, version=2)
    data = extension(footprint, STEPS_SCHEMA_URL)["data"]
    assert (data["site_id"], data["product_id"], data["quantity_good"]) == (SITE, PRODUCT, "20")
    assert data["co2e_kg"] == "1.68"
    [detail] = data["lots"]
    assert (detail["record_id"], detail["revision"]) == (lot["record_id"], 2)
    assert [(s["equipment_id"], s["record_id"], s["revision"]) for s in detail["steps"]] == [
        (o["equipment_id"], o["record_id"], o["revision"]) for o in orders
    ]
    welding = detail["steps"][2]
    assert welding["co2e_kg"] == "0.83"
    assert welding["record_available"] is True
    assert welding["energy_direct_kwh"] == welding["energy_kwh"]
    assert welding["flags"] == ["secondary_emission_factor"]
    [factor] = welding["factors"]
    assert factor["value"] == "0.434"
    assert (factor["geography"], factor["reference_year"], factor["set"]) == (
        "JP",
        2025,
        "location",
    )


def test_only_the_reported_set_counts() -> None:
    """factors[] lists location and market side by side; the reported ones make the DQI and
    the detail (here a supplier-specific market factor)."""
    kwh = 10.0
    factors = [
        factor_use(kwh, reported=False),
        factor_use(
            kwh,
            value=0.1,
            factor_set="market",
            primary=True,
            geography=None,
            reference_year=2026,
            source="Kansai Electric, green plan",
            version="2026",
        ),
    ]
    order = order_record("laser-cutter", 1.0, factors=factors, primary_data_share=1.0)
    order["co2e_by_set"] = {"location": 4.34, "market": 1.0}
    lot = lot_record([order], quantity_good=10)
    footprint = build_pact_v3(lot, [order], info(), created_at=CREATED)
    pcf = footprint["pcf"]
    assert pcf["pcfExcludingBiogenicUptake"] == "0.1"
    assert pcf["primaryDataShare"] == "100"
    assert "secondaryEmissionFactorSources" not in pcf  # no secondary data: MUST be undefined
    assert pcf["dqi"] == {"technologicalDQR": "1", "geographicalDQR": "1", "temporalDQR": "1"}
    step = extension(footprint, STEPS_SCHEMA_URL)["data"]["lots"][0]["steps"][0]
    assert [f["set"] for f in step["factors"]] == ["market"]
    assert step["co2e_by_set"] == {"location": "4.34", "market": "1"}
    assert_valid_footprint(footprint, "pact-v3")


@pytest.mark.parametrize("factors", ["missing", "empty"])
def test_records_without_factors_fall_back_to_their_carriers(factors: str) -> None:
    """Records of schema 1.0 (no factors[], no geography, no reference year)."""
    lot, orders = worked_example()
    for record in (lot, *orders):
        for key in ("factors", "co2e_by_set", "energy_direct_kwh", "energy_shared_kwh"):
            record.pop(key, None)
        if factors == "empty":
            record["factors"] = []
    lot["carriers"] = orders[0]["carriers"]
    footprint = build_pact_v3(lot, orders, info(), created_at=CREATED)
    assert footprint["pcf"]["pcfExcludingBiogenicUptake"] == "0.084"
    # geography and time unknown: the worst ratings
    assert footprint["pcf"]["dqi"] == {
        "technologicalDQR": "2",
        "geographicalDQR": "5",
        "temporalDQR": "5",
    }
    assert_valid_footprint(footprint, "pact-v3")


def test_missing_order_records_leave_the_lots_lines() -> None:
    lot, orders = worked_example()
    footprint = build_pact_v3(lot, orders[:2], info(), created_at=CREATED)
    steps = extension(footprint, STEPS_SCHEMA_URL)["data"]["lots"][0]["steps"]
    assert [s["record_available"] for s in steps] == [True, True, False, False, False]
    assert steps[4]["factors"] == []
    assert steps[4]["measured_share"] is None
    assert footprint["pcf"]["pcfExcludingBiogenicUptake"] == "0.084"  # the lot's own sum
    assert_valid_footprint(footprint, "pact-v3")


def test_the_order_revision_the_lot_summed_is_used() -> None:
    lot, orders = worked_example()
    newer = copy.deepcopy(orders[0])
    newer["revision"] = 2
    newer["co2e_kg"] = 9.99
    footprint = build_pact_v3(lot, [newer, *orders], info(), created_at=CREATED)
    step = extension(footprint, STEPS_SCHEMA_URL)["data"]["lots"][0]["steps"][0]
    assert (step["revision"], step["co2e_kg"]) == (1, "0.22")


# -- what cannot become a footprint ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pact-v3", "pact-v2", "gxd"])
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"quantity_good": None}, ["lot LOT-0001", "no good quantity"]),
        ({"quantity_good": 0}, ["lot LOT-0001", "no good quantity"]),
        ({"open_steps": 1, "incomplete": True}, ["lot LOT-0001", "incomplete", "1 step"]),
        ({"product_id": None}, ["lot LOT-0001", "no product_id"]),
        ({"product_id": "UNKNOWN-9"}, ["lot LOT-0001", "'UNKNOWN-9'", "footprint.products"]),
        ({"unit": "bundle"}, ["lot LOT-0001", "'bundle'", "footprint.declared_units"]),
        ({"start": None}, ["lot LOT-0001", "no start or end"]),
        ({"kind": "order"}, ["lot record LOT-0001", "kind"]),
    ],
)
def test_a_lot_that_cannot_be_a_footprint_is_named(
    fmt: str, change: dict[str, Any], words: list[str]
) -> None:
    lot, orders = worked_example()
    lot.update(change)
    with pytest.raises(FootprintError) as raised:
        lot_footprint(fmt, lot, orders)
    for word in words:
        assert word in str(raised.value)


def test_pieces_need_a_mass() -> None:
    product = ProductInfo(name="Enclosure", description="Sheet-steel enclosure", cpc="42999")
    lot, orders = worked_example()
    for fmt in ("pact-v3", "pact-v2"):
        with pytest.raises(
            FootprintError, match=re.escape(f"footprint.products.{PRODUCT}.mass_kg")
        ):
            lot_footprint(fmt, lot, orders, info=info(products={PRODUCT: product}))


def test_v2_needs_a_cpc_code_and_a_2x_standard() -> None:
    product = ProductInfo(name="Enclosure", description="Enclosure", mass_kg=Decimal(6))
    lot, orders = worked_example()
    with pytest.raises(FootprintError, match="productCategoryCpc"):
        lot_footprint("pact-v2", lot, orders, info=info(products={PRODUCT: product}))
    assert build_pact_v3(lot, orders, info(products={PRODUCT: product}), created_at=CREATED)
    with pytest.raises(FootprintError, match="crossSectoralStandardsUsed"):
        lot_footprint("gxd", lot, orders, info=info(cross_sectoral_standards=("PACT-3.0",)))


def test_product_ids_need_ids_or_a_domain() -> None:
    lot, orders = worked_example()
    with pytest.raises(FootprintError, match=r"footprint\.company\.domain"):
        lot_footprint("pact-v3", lot, orders, info=info(company_domain=None))
    product = ProductInfo(
        name="Enclosure",
        description="Enclosure",
        ids=("urn:gtin:4712345060507",),
        mass_kg=Decimal(6),
    )
    footprint = lot_footprint(
        "pact-v3", lot, orders, info=info(company_domain=None, products={PRODUCT: product})
    )
    assert footprint["productIds"] == ["urn:gtin:4712345060507"]
    assert "productClassifications" not in footprint


def test_created_at_must_carry_its_offset() -> None:
    lot, orders = worked_example()
    with pytest.raises(FootprintError, match="UTC offset"):
        build_pact_v3(lot, orders, info(), created_at=datetime(2026, 2, 1))


def test_a_record_field_of_the_wrong_type_is_named() -> None:
    lot, orders = worked_example()
    orders[1]["co2e_kg"] = "0.04"
    with pytest.raises(
        FootprintError,
        match=r"order record LOT-0001-press-brake of lot LOT-0001: co2e_kg '0\.04' is not",
    ):
        build_pact_v3(lot, orders, info(), created_at=CREATED)


# -- a product over a period -------------------------------------------------------------------


def two_lots() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """20 pieces at 1.68 kg (primary share 0.5) and 10 pieces at 1.2 kg (0)."""
    first_orders = [
        order_record("laser-cutter", 0.84, lot_id="LOT-A", primary_data_share=1.0),
        order_record("welding-robot", 0.84, lot_id="LOT-A", step=1),
    ]
    second_orders = [
        order_record("laser-cutter", 1.2, lot_id="LOT-B", start=T0 + timedelta(days=1))
    ]
    return [
        (lot_record(first_orders, lot_id="LOT-A"), first_orders),
        (lot_record(second_orders, lot_id="LOT-B", quantity_good=10), second_orders),
    ]


PERIOD = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


@pytest.mark.parametrize("fmt", ["pact-v3", "pact-v2", "gxd"])
def test_product_footprint_validates(fmt: str) -> None:
    footprint = PRODUCT_BUILDERS[fmt](two_lots(), info(), *PERIOD, created_at=CREATED)
    assert_valid_footprint(footprint, fmt)


def test_product_footprint_weights_intensity_by_quantity_and_primary_share_by_co2e() -> None:
    footprint = build_pact_v3_product(two_lots(), info(), *PERIOD, created_at=CREATED)
    pcf = footprint["pcf"]
    assert pcf["pcfExcludingBiogenicUptake"] == "0.096"  # (1.68 + 1.2) / (20 + 10)
    assert pcf["primaryDataShare"] == "29.1666667"  # 0.5 x 1.68 / 2.88, 9 digits
    assert pcf["referencePeriodStart"] == "2026-01-01T00:00:00Z"
    assert pcf["referencePeriodEnd"] == "2026-02-01T00:00:00Z"
    batch_ids = [pid for pid in footprint["productIds"] if ":batch-id:" in pid]
    assert batch_ids == []  # a product footprint is not one batch
    lots = extension(footprint, STEPS_SCHEMA_URL)["data"]["lots"]
    assert [lot["lot_id"] for lot in lots] == ["LOT-A", "LOT-B"]
    assert "2 lot(s) of product" in pcf["boundaryProcessesDescription"]


def test_product_footprint_id_changes_with_a_lots_revision() -> None:
    lots = two_lots()
    first = build_pact_v3_product(lots, info(), *PERIOD, created_at=CREATED)
    assert build_pact_v3_product(copy.deepcopy(lots), info(), *PERIOD, created_at=CREATED) == first
    lots[1][0]["revision"] = 2
    assert build_pact_v3_product(lots, info(), *PERIOD, created_at=CREATED)["id"] != first["id"]


def test_reference_period_reaches_back_to_a_lot_that_began_before_it() -> None:
    lots = two_lots()
    start = datetime(2026, 1, 31, tzinfo=UTC)
    footprint = build_pact_v3_product(lots, info(), start, PERIOD[1], created_at=CREATED)
    assert footprint["pcf"]["referencePeriodStart"] == "2026-01-30T23:00:00Z"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"product_id": "OTHER"}, ["lot LOT-B", "product 'OTHER' differs"]),
        ({"unit": "kg"}, ["lot LOT-B", "quantity unit 'kg' differs"]),
        ({"site_id": "nagoya"}, ["lot LOT-B", "site 'nagoya' differs"]),
        ({"quantity_good": None}, ["lot LOT-B", "no good quantity"]),
    ],
)
def test_product_footprint_refuses_mixed_or_unusable_lots(
    change: dict[str, Any], words: list[str]
) -> None:
    lots = two_lots()
    lots[1][0].update(change)
    with pytest.raises(FootprintError) as raised:
        build_pact_v3_product(lots, info(), *PERIOD, created_at=CREATED)
    for word in words:
        assert word in str(raised.value)


def test_product_footprint_needs_lots_and_a_period() -> None:
    with pytest.raises(FootprintError, match="no lot"):
        build_pact_v3_product([], info(), *PERIOD, created_at=CREATED)
    with pytest.raises(FootprintError, match="empty"):
        build_pact_v3_product(two_lots(), info(), PERIOD[1], PERIOD[0], created_at=CREATED)
