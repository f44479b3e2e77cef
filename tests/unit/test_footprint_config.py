"""The ``footprint`` configuration section: validation with key paths, and the footprints'
information built from it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.footprint import FootprintConfig
from edge_agent.config.models import SiteConfig
from edge_agent.errors import ConfigError
from edge_agent.export import load_footprint_config
from edge_agent.footprint import DeclaredUnit

SITE = SiteConfig(id="osaka-plant", country="JP")

GOOD: dict[str, Any] = {
    "company": {
        "name": "Example Enclosures K.K.",
        "ids": ["urn:lei:5493001KJTIIGC8Y1R12"],
        "domain": "example-enclosures.co.jp",
    },
    "site": {"subdivision": "JP-27"},
    "products": {
        "ENCL-400x300": {
            "name": "Enclosure 400x300",
            "description": "Sheet-steel enclosure, powder-coated",
            "cpc": "42999",
            "mass_kg": 6.25,
            "classifications": ["urn:eclass:27182401"],
        },
        "ENCL 500 #2": {"name": "Enclosure 500", "description": "Sheet-steel enclosure"},
    },
    "declared_units": {"sheet": {"unit": "piece"}, "t": {"unit": "kilogram", "amount": 1000}},
    "ipcc_characterization_factors": ["AR5", "AR6"],
    "cross_sectoral_standards": ["ISO14067", "GHGP-Product", "PACT-3.0"],
}


def test_a_full_section_gives_the_footprints_information() -> None:
    info = FootprintConfig.model_validate(GOOD).info(SITE)
    assert info.company_name == "Example Enclosures K.K."
    assert info.company_ids == ("urn:lei:5493001KJTIIGC8Y1R12",)
    assert (info.site_country, info.site_subdivision) == ("JP", "JP-27")
    assert info.company_domain == "example-enclosures.co.jp"
    product = info.products["ENCL-400x300"]
    assert product.mass_kg == Decimal("6.25")
    assert product.cpc == "42999"
    assert product.classifications == ("urn:eclass:27182401",)
    assert info.products["ENCL 500 #2"].mass_kg is None
    assert info.declared_units["sheet"] == DeclaredUnit("piece")
    assert info.declared_units["t"] == DeclaredUnit("kilogram", Decimal(1000))
    assert info.declared_units["piece"] == DeclaredUnit("piece")  # defaults stay
    assert info.ipcc_characterization_factors == ("AR5", "AR6")


def test_the_section_is_optional_until_footprints_are_exported() -> None:
    empty = FootprintConfig()
    assert empty.ipcc_characterization_factors == ["AR6"]
    with pytest.raises(ConfigError) as raised:
        empty.info(SITE)
    assert raised.value.problems[0].startswith("footprint.company.name: required")
    assert raised.value.problems[1].startswith("footprint.company.ids: required")


def test_subdivision_must_be_in_the_sites_country() -> None:
    section = {**GOOD, "site": {"subdivision": "US-CA"}}
    with pytest.raises(ConfigError) as raised:
        FootprintConfig.model_validate(section).info(SITE)
    assert raised.value.problems == [
        "footprint.site.subdivision: 'US-CA' is not a subdivision of site.country 'JP'"
    ]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "footprint.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_footprint_file_with_or_without_the_section_key(tmp_path: Path) -> None:
    bare = write(tmp_path, "company: {name: A, ids: ['urn:lei:1234']}\n")
    assert load_footprint_config(bare).company.name == "A"
    wrapped = write(tmp_path, "footprint:\n  company: {name: B, ids: ['urn:lei:1234']}\n")
    assert load_footprint_config(wrapped).company.name == "B"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "company: {ids: ['lei:1234']}\n",
            "footprint.company.ids[0]: 'lei:1234' is not a URN",
        ),
        (
            "company: {ids: ['urn:lei:1', 'urn:lei:1']}\n",
            "footprint.company.ids: 'urn:lei:1' is listed twice",
        ),
        ("company: {domain: 'not a domain'}\n", "footprint.company.domain: 'not a domain' is not"),
        ("company: {nmae: X}\n", "footprint.company.nmae: unknown key"),
        ("site: {subdivision: osaka}\n", "footprint.site.subdivision: 'osaka' is not valid"),
        ("products: {P1: {name: P}}\n", "footprint.products.P1.description: required key"),
        (
            "products: {P1: {name: P, description: D, mass_kg: 0}}\n",
            "footprint.products.P1.mass_kg",
        ),
        ("products: {P1: {name: P, description: D, cpc: '12a'}}\n", "footprint.products.P1.cpc"),
        (
            "products: {P1: {name: P, description: D, ids: ['urn:gtin:1 2']}}\n",
            "footprint.products.P1.ids[0]: 'urn:gtin:1 2' is not a URN",
        ),
        (
            "products: {P1: {name: P, description: D, fossil_carbon_content_kg: -1}}\n",
            "footprint.products.P1.fossil_carbon_content_kg",
        ),
        ("declared_units: {sheet: {unit: sheet}}\n", "footprint.declared_units.sheet.unit"),
        (
            "declared_units: {t: {unit: kilogram, amount: -5}}\n",
            "footprint.declared_units.t.amount",
        ),
        (
            "ipcc_characterization_factors: [AR6, SAR]\n",
            "footprint.ipcc_characterization_factors[1]",
        ),
        ("ipcc_characterization_factors: []\n", "footprint.ipcc_characterization_factors"),
        ("cross_sectoral_standards: [PACT-3.0, PACT-3.0]\n", "listed twice"),
    ],
)
def test_problems_name_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_footprint_config(write(tmp_path, text))
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems


def test_an_unreadable_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_footprint_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_footprint_config(write(tmp_path, "company: [\n"))
