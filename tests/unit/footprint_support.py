"""Shared by the footprint tests: validators built at test time from the unmodified PACT and
Green x Digital files, and order/lot records as the agent publishes them (schema 1.1 fields).

The reference files are not part of this repository (their license allows exact copies but not
sharing modified ones, see pact/SOURCES.md there): they are read from ``$EDGE_AGENT_REFERENCE_DIR``
(default ``../shared`` beside the repository), folders ``pact/`` and ``gxd/``; tests that need them are skipped,
naming the folder, when it is missing.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from edge_agent.footprint import FootprintInfo, ProductInfo
from edge_agent.schemas import schema_path

REFERENCE_DIR = Path(
    os.environ.get("EDGE_AGENT_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared")
)
PACT_DIR = REFERENCE_DIR / "pact"
GXD_DIR = REFERENCE_DIR / "gxd"

GXD_SCHEMA_URL = (
    "https://github.com/Green-x-Digital-Consortium/data-model-extensions/blob/main/specs/"
    "GxD_schema_en.json"
)
STEPS_SCHEMA_URL = (
    "https://github.com/edge-agent/edge-agent/schemas/footprint-steps-1.0.schema.json"
)


def reference_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"reference file {path} not found (set EDGE_AGENT_REFERENCE_DIR)")
    return path


# -- formats the OpenAPI files use ------------------------------------------------------------

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_URN = re.compile(r"^urn:[a-z0-9][a-z0-9-]{0,31}:\S+$", re.IGNORECASE)

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339 (jsonschema checks it only with an optional package, absent here); PACT also
    wants UTC."""
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.match(value):
        return False
    moment = datetime.fromisoformat(value)
    return moment.utcoffset() == timedelta(0)


@FORMATS.checks("urn")
def _urn(value: object) -> bool:
    return not isinstance(value, str) or bool(_URN.match(value))


@FORMATS.checks("decimal")
def _decimal(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        number = Decimal(value)
    except InvalidOperation:
        return False
    return number.is_finite() and "e" not in value.lower()


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


# -- OpenAPI 3.x schema -> JSON Schema 2020-12 ------------------------------------------------


def openapi_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.1 schemas are JSON Schema 2020-12 already; what OpenAPI 3.0 writes
    differently is converted: ``nullable: true`` (a null allowed besides the type) and boolean
    ``exclusiveMinimum``/``exclusiveMaximum``. ``example``, ``x-*``, ``discriminator`` and the
    like are annotations a 2020-12 validator ignores. The PACT files are OpenAPI 3.1.0 (no
    ``nullable``); the conversion keeps the validator right if a 3.0 file is given."""
    if isinstance(node, list):
        return [openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: openapi_to_json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        kind = converted.get("type")
        if isinstance(kind, str):
            converted["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            converted["type"] = [*kind, "null"]
        elif kind is None:
            converted = {"anyOf": [converted, {"type": "null"}]}
        if "enum" in converted and None not in converted["enum"]:
            converted["enum"] = [*converted["enum"], None]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        # OpenAPI 3.0: "exclusiveMinimum: true" qualifies "minimum"; 2020-12 takes the number.
        if isinstance(converted.get(exclusive), bool) and converted.pop(exclusive):
            converted[exclusive] = converted.pop(bound)
    return converted


def _json_safe(node: Any) -> Any:
    """YAML reads unquoted dates in examples as date objects; a JSON Schema holds strings."""
    if isinstance(node, dict):
        return {str(key): _json_safe(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_json_safe(item) for item in node]
    if isinstance(node, date):  # datetime too
        return node.isoformat()
    return node


@cache
def openapi_validator(file_name: str, schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``components.schemas.<schema_name>`` of an unmodified OpenAPI file,
    ``$ref``s resolved within the file."""
    path = reference_file(PACT_DIR / file_name)
    document = openapi_to_json_schema(_json_safe(yaml.safe_load(path.read_text("utf-8"))))
    uri = f"urn:edge-agent-test:{file_name}"
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"{uri}#/components/schemas/{schema_name}",
    }
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=FORMATS)


def pact_v3_validator() -> jsonschema.Draft202012Validator:
    return openapi_validator("pact-openapi-3.0.3.yaml", "ProductFootprint")


def pact_v2_validator() -> jsonschema.Draft202012Validator:
    return openapi_validator("pact-openapi-2.3.3.yaml", "ProductFootprint")


def gxd_schema_as_published() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(reference_file(GXD_DIR / "GxD_schema_en.json").read_text())
    return schema


def gxd_validator() -> jsonschema.Draft202012Validator:
    """The GxD extension's ``data`` schema with its documented defect worked around here.

    The published schema (gxd/SOURCES.md) lists ``declaredUnit`` and
    ``crossSectoralStandardsUsed`` in ``$defs.organization.required`` but never defines them:
    they are CarbonFootprint properties of PACT 2.x that slipped into the extension's
    organization block, so every ``organization`` block fails validation unless it carries two
    properties the extension does not define. Our footprints are product-based (``calcMethod``
    "0") and carry no organization block, so the defect does not touch them; the copy made here
    drops the two names so that the validator is right for organization blocks too (see
    test_gxd_schema_defect_is_as_documented). The file itself stays unmodified.
    """
    schema = copy.deepcopy(gxd_schema_as_published())
    organization = schema["$defs"]["organization"]
    defined = set(organization["properties"])
    organization["required"] = [name for name in organization["required"] if name in defined]
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


@cache
def steps_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_path("footprint-steps").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


def errors_of(validator: jsonschema.Draft202012Validator, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def extension(footprint: Mapping[str, Any], schema_url: str) -> dict[str, Any]:
    found = [ext for ext in footprint.get("extensions", []) if ext["dataSchema"] == schema_url]
    assert len(found) == 1, footprint.get("extensions")
    return dict(found[0])


def assert_valid_footprint(footprint: Mapping[str, Any], fmt: str) -> None:
    """Against the PACT version's ProductFootprint, and every extension's data against its
    schema (GxD, edge-agent steps)."""
    validator = pact_v3_validator() if fmt == "pact-v3" else pact_v2_validator()
    assert errors_of(validator, footprint) == []
    assert uuid.UUID(footprint["id"]).version == 4  # PACT PfId: a UUID v4
    for ext in footprint["extensions"]:
        if ext["dataSchema"] == GXD_SCHEMA_URL:
            assert errors_of(gxd_validator(), ext["data"]) == []
        elif ext["dataSchema"] == STEPS_SCHEMA_URL:
            assert errors_of(steps_validator(), ext["data"]) == []
        else:
            raise AssertionError(f"unexpected extension {ext['dataSchema']}")
    has_gxd = any(ext["dataSchema"] == GXD_SCHEMA_URL for ext in footprint["extensions"])
    assert has_gxd == (fmt in ("pact-v3", "gxd"))


# -- records as the agent publishes them ------------------------------------------------------

SITE = "osaka-plant"
PRODUCT = "ENCL-400x300"
T0 = datetime(2026, 1, 30, 23, 0, tzinfo=UTC)
# The worked example (DESIGN.md §1): an enclosure lot of 20 through five steps.
WORKED_STEPS = (
    ("laser-cutter", 0.22),
    ("press-brake", 0.04),
    ("welding-robot", 0.83),
    ("paint-booth", 0.45),
    ("assembly", 0.14),
)
GRID_FACTOR = 0.434  # kg CO2e / kWh


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def factor_use(
    kwh: float,
    *,
    value: float = GRID_FACTOR,
    factor_set: str = "location",
    reported: bool = True,
    primary: bool = False,
    geography: str | None = "JP",
    reference_year: int | None = 2025,
    valid_from: str | None = None,
    valid_to: str | None = None,
    source: str = "MOE Japan, electricity emission factors",
    version: str = "FY2024",
) -> dict[str, Any]:
    return {
        "carrier": "electricity",
        "set": factor_set,
        "reported": reported,
        "value": value,
        "unit": "kgCO2e/kWh",
        "source": source,
        "version": version,
        "primary": primary,
        "geography": geography,
        "reference_year": reference_year,
        "valid_from": valid_from,
        "valid_to": valid_to,
        "activity": kwh,
        "activity_unit": "kWh",
        "conversion": 1.0,
        "co2e_kg": round(kwh * value, 9),
    }


def order_record(
    equipment_id: str,
    co2e_kg: float,
    *,
    lot_id: str = "LOT-0001",
    step: int = 0,
    revision: int = 1,
    quantity_good: float | None = 20,
    measured_share: float = 1.0,
    coverage: float = 1.0,
    primary_data_share: float = 0.0,
    factors: Sequence[dict[str, Any]] | None = None,
    start: datetime | None = None,
) -> dict[str, Any]:
    """An order record (schema 1.1 fields) whose CO2e is ``co2e_kg`` at the grid factor."""
    kwh = co2e_kg / GRID_FACTOR
    begin = start or T0 + timedelta(minutes=30 * step)
    uses = list(factors) if factors is not None else [factor_use(kwh)]
    order_id = f"{lot_id}-{equipment_id}"
    return {
        "record_id": record_id(SITE, "order", lot_id, order_id, equipment_id),
        "schema_version": "1.1",
        "kind": "order",
        "revision": revision,
        "site_id": SITE,
        "line_id": "enclosure-line",
        "lot_id": lot_id,
        "order_id": order_id,
        "equipment_id": equipment_id,
        "product_id": PRODUCT,
        "start": _iso(begin),
        "end": _iso(begin + timedelta(minutes=25)),
        "quantity_good": quantity_good,
        "quantity_scrap": 0,
        "unit": "piece",
        "energy_kwh": kwh,
        "energy_direct_kwh": kwh,
        "energy_shared_kwh": 0.0,
        "uncertainty_kwh": 0.001,
        "co2e_kg": co2e_kg,
        "co2e_uncertainty_kg": 0.0005,
        "co2e_by_set": {"location": co2e_kg},
        "co2e_kg_per_unit": None if not quantity_good else co2e_kg / quantity_good,
        "kwh_per_unit": None if not quantity_good else kwh / quantity_good,
        "measured_share": measured_share,
        "primary_data_share": primary_data_share,
        "coverage": coverage,
        "carriers": [
            {
                "carrier": "electricity",
                "quantity": kwh,
                "uncertainty": 0.001,
                "unit": "kWh",
                "co2e_kg": co2e_kg,
                "set": "location",
                "emission_factor": {
                    "value": GRID_FACTOR,
                    "unit": "kgCO2e/kWh",
                    "source": "MOE Japan, electricity emission factors",
                    "version": "FY2024",
                    "primary": False,
                },
            }
        ],
        "factors": uses,
        "meters": [],
        "states": {},
        "emission_factors": {},
        "flags": [{"code": "secondary_emission_factor", "detail": "grid average"}],
    }


def lot_record(
    orders: Sequence[Mapping[str, Any]],
    *,
    lot_id: str = "LOT-0001",
    revision: int = 1,
    quantity_good: float | None = 20,
    product_id: str | None = PRODUCT,
    open_steps: int = 0,
    primary_data_share: float | None = None,
) -> dict[str, Any]:
    """The lot summary of these order records, as the agent sums them."""
    co2e = round(math.fsum(order["co2e_kg"] for order in orders), 9)
    energy = round(math.fsum(order["energy_kwh"] for order in orders), 9)
    if primary_data_share is None:
        weighted = math.fsum(o["primary_data_share"] * o["co2e_kg"] for o in orders)
        primary_data_share = weighted / co2e if co2e else 0.0
    return {
        "record_id": record_id(SITE, "lot", lot_id),
        "schema_version": "1.1",
        "kind": "lot",
        "revision": revision,
        "site_id": SITE,
        "line_id": "enclosure-line",
        "lot_id": lot_id,
        "product_id": product_id,
        "start": orders[0]["start"] if orders else None,
        "end": orders[-1]["end"] if orders else None,
        "quantity_good": quantity_good,
        "quantity_scrap": 0,
        "unit": "piece",
        "energy_kwh": energy,
        "energy_direct_kwh": energy,
        "energy_shared_kwh": 0.0,
        "uncertainty_kwh": 0.005,
        "co2e_kg": co2e,
        "co2e_uncertainty_kg": 0.002,
        "co2e_by_set": {"location": co2e},
        "co2e_kg_per_unit": co2e / quantity_good if quantity_good else None,
        "kwh_per_unit": energy / quantity_good if quantity_good else None,
        "measured_share": 1.0,
        "primary_data_share": primary_data_share,
        "coverage": 1.0,
        "steps": len(orders),
        "open_steps": open_steps,
        "incomplete": open_steps > 0,
        "orders": [
            {
                "order_id": order["order_id"],
                "equipment_id": order["equipment_id"],
                "record_id": order["record_id"],
                "revision": order["revision"],
                "energy_kwh": order["energy_kwh"],
                "co2e_kg": order["co2e_kg"],
            }
            for order in orders
        ],
        "carriers": [],
        "factors": [use for order in orders for use in order["factors"]],
        "meters": [],
        "states": {},
        "emission_factors": {},
        "flags": [],
    }


def worked_example(
    lot_id: str = "LOT-0001", *, revision: int = 1, start: datetime = T0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The lot of 20 enclosures, 1.68 kg CO2e over five steps."""
    orders = [
        order_record(
            equipment, co2e, lot_id=lot_id, step=index, start=start + timedelta(minutes=30 * index)
        )
        for index, (equipment, co2e) in enumerate(WORKED_STEPS)
    ]
    return lot_record(orders, lot_id=lot_id, revision=revision), orders


def info(**changes: Any) -> FootprintInfo:
    products = {
        PRODUCT: ProductInfo(
            name="Enclosure 400x300",
            description="Sheet-steel enclosure 400 x 300 x 200 mm, powder-coated, bulk packed",
            cpc="42999",
            mass_kg=Decimal("6.25"),
        )
    }
    values: dict[str, Any] = {
        "company_name": "Example Enclosures K.K.",
        "company_ids": ("urn:pact:company:customcode:buyer-id:4321",),
        "site_country": "JP",
        "site_subdivision": "JP-27",
        "company_domain": "example-enclosures.co.jp",
        "products": products,
    }
    values.update(changes)
    return FootprintInfo(**values)
