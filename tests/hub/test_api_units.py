"""The API's parts without a server: client secrets, access tokens, the pydantic models
against the unmodified PACT OpenAPI file, query parsing and event sources."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from edge_agent.clock import FakeClock
from edge_agent.errors import ConfigError
from edge_agent.hub.api import callback_url, hash_secret, models, secret_hash_problem, verify_secret
from edge_agent.hub.api.errors import ApiError
from edge_agent.hub.api.listing import decode_cursor, encode_cursor, parse_list_query
from edge_agent.hub.api.tokens import (
    InvalidToken,
    TokenExpired,
    TokenService,
    derive_token_key,
    token_key_from_environment,
)
from edge_agent.hub.config import ApiClient
from tests.hub.api_support import OPENAPI, SECRET_A, secret_hash
from tests.unit.footprint_support import PACT_DIR, reference_file

# -- secrets -----------------------------------------------------------------------------------


def test_hash_secret_has_the_configured_format_and_verifies() -> None:
    stored = secret_hash(SECRET_A)
    assert re.fullmatch(r"scrypt\$32768\$8\$1\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*", stored)
    assert verify_secret(SECRET_A, stored)
    assert not verify_secret(SECRET_A + "x", stored)
    assert not verify_secret("", stored)
    assert secret_hash_problem(stored) is None
    # a fresh salt each time
    assert hash_secret("another-secret-0123") != hash_secret("another-secret-0123")


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ("bcrypt$x", "expected scrypt$"),
        ("scrypt$1000$8$1$AAAAAAAAAAA=$" + "A" * 44, "power of 2"),
        ("scrypt$4194304$8$1$AAAAAAAAAAA=$" + "A" * 44, "power of 2 from 2^10 to 2^20"),
        ("scrypt$1048576$32$1$AAAAAAAAAAA=$" + "A" * 44, "MiB"),
        ("scrypt$16384$8$1$not base64!$" + "A" * 44, "base64"),
        ("scrypt$16384$8$1$AAAA$" + "A" * 44, "salt needs 8 bytes"),
        ("scrypt$16384$x$1$AAAAAAAAAAA=$" + "A" * 44, "integers"),
    ],
)
def test_unusable_hashes_are_named_and_never_verify(stored: str, problem: str) -> None:
    found = secret_hash_problem(stored)
    assert found is not None
    assert problem in found
    assert not verify_secret("anything", stored)


def test_hash_secret_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_secret("")


def test_edge_agent_hub_hash_secret_reads_stdin_and_prints_the_hash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "hub", "hash-secret"],
        input=SECRET_A + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed.startswith("scrypt$")
    assert verify_secret(SECRET_A, printed)


# -- tokens ------------------------------------------------------------------------------------


def _client(secret_hash_value: str | None = None) -> ApiClient:
    return ApiClient(
        id="customer-a",
        secret_hash=secret_hash_value or secret_hash(SECRET_A),
        products=["P"],
    )


def test_tokens_verify_on_any_instance_with_the_same_key_until_they_expire() -> None:
    clock = FakeClock()
    client = _client()
    clients = {client.id: client}
    issuer = TokenService(derive_token_key(b"k" * 32), clock, ttl_s=3600)
    other_instance = TokenService(derive_token_key(b"k" * 32), clock, ttl_s=3600)
    issued = issuer.issue(client)
    assert issued.expires_in == 3600
    assert other_instance.check(issued.access_token, clients) is client
    clock.advance(3599)
    assert issuer.check(issued.access_token, clients) is client
    clock.advance(1)
    with pytest.raises(TokenExpired):
        other_instance.check(issued.access_token, clients)


def test_tokens_are_refused_with_another_key_tampered_or_after_a_secret_change() -> None:
    clock = FakeClock()
    client = _client()
    issuer = TokenService(derive_token_key(b"k" * 32), clock, ttl_s=600)
    token = issuer.issue(client).access_token
    stranger = TokenService(derive_token_key(b"q" * 32), clock, ttl_s=600)
    with pytest.raises(InvalidToken):
        stranger.check(token, {client.id: client})
    prefix, payload, signature = token.split(".")
    for bad in (
        f"{prefix}.{payload}x.{signature}",
        f"{prefix}.{payload}.{signature[:-2]}AA",
        f"xx.{payload}.{signature}",
        "not-a-token",
        "",
    ):
        with pytest.raises(InvalidToken):
            issuer.check(bad, {client.id: client})
    with pytest.raises(InvalidToken):  # the client was removed from the configuration
        issuer.check(token, {})
    rotated = _client(secret_hash("a-new-secret-for-customer-a"))
    with pytest.raises(InvalidToken):  # the client was given a new secret
        issuer.check(token, {rotated.id: rotated})


def test_the_token_key_comes_from_the_environment_or_a_file(tmp_path: Any) -> None:
    assert token_key_from_environment({}) is None
    assert token_key_from_environment({"EDGE_HUB_TOKEN_KEY": "x" * 20}) == b"x" * 20
    key_file = tmp_path / "token.key"
    key_file.write_text("y" * 40 + "\n")
    assert token_key_from_environment({"EDGE_HUB_TOKEN_KEY_FILE": str(key_file)}) == b"y" * 40
    with pytest.raises(ConfigError, match="at least 16"):
        token_key_from_environment({"EDGE_HUB_TOKEN_KEY": "short"})
    with pytest.raises(ConfigError, match="not both"):
        token_key_from_environment(
            {"EDGE_HUB_TOKEN_KEY": "x" * 20, "EDGE_HUB_TOKEN_KEY_FILE": str(key_file)}
        )
    with pytest.raises(ConfigError, match="cannot read"):
        token_key_from_environment({"EDGE_HUB_TOKEN_KEY_FILE": str(tmp_path / "missing")})


# -- the models against the unmodified OpenAPI file --------------------------------------------


@cache
def _openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(reference_file(PACT_DIR / OPENAPI).read_text("utf-8"))
    return document


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = _openapi()["components"]["schemas"][name]
    return schema


def _fields(model: type[BaseModel]) -> tuple[set[str], set[str]]:
    names = set(model.model_fields)
    required = {name for name, info in model.model_fields.items() if info.is_required()}
    return names, required


def test_error_body_is_pacts_error_schema() -> None:
    schema = _schema("Error")
    assert _fields(models.ErrorBody) == (set(schema["properties"]), set(schema["required"]))
    assert set(get_args(models.ErrorCode)) == set(schema["properties"]["code"]["enum"])


def test_event_models_are_pacts_event_schemas() -> None:
    base = _schema("BaseEvent")
    assert _fields(models.EventBase) == (set(base["properties"]), set(base["required"]))
    cases: list[tuple[str, type[models.EventBase], type[BaseModel]]] = [
        ("RequestCreatedEvent", models.RequestCreatedEvent, models.RequestCreatedData),
        ("RequestFulfilledEvent", models.RequestFulfilledEvent, models.RequestFulfilledData),
        ("RequestRejectedEvent", models.RequestRejectedEvent, models.RequestRejectedData),
        ("PublishedEvent", models.PublishedEvent, models.PublishedData),
    ]
    for name, event_model, data_model in cases:
        schema = _schema(name)
        assert schema["$ref"] == "#/components/schemas/BaseEvent"
        const = schema["properties"]["type"]["const"]
        assert get_args(event_model.model_fields["type"].annotation) == (const,)
        assert models.EVENT_MODELS[const] is event_model
        data = schema["properties"]["data"]
        names, required = _fields(data_model)
        assert names == set(data["properties"]), name
        assert required == set(data.get("required", [])) | (
            {"pfIds"} if name == "PublishedEvent" else set()  # rest-api.md: non-empty list
        ), name


def test_list_filters_are_the_openapi_parameters() -> None:
    operation = _openapi()["paths"]["/3/footprints"]["get"]
    names = set()
    for parameter in operation["parameters"]:
        ref = parameter.get("$ref")
        names.add(
            _openapi()["components"]["parameters"][ref.rsplit("/", 1)[-1]]["name"]
            if ref
            else parameter["name"]
        )
    data_filters = set(_schema("RequestCreatedEvent")["properties"]["data"]["properties"])
    assert names == {"limit", *data_filters} - {"comment"}
    for name in names:  # each is understood (not refused as unknown)
        value = {"limit": "3", "status": "Active"}.get(name, "urn:x:1")
        if name.startswith("valid"):
            value = "2026-01-01T00:00:00Z"
        parse_list_query([(name, value)])
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert _fields(models.FootprintListResponse) == (set(response["properties"]), {"data"})


# -- the query string --------------------------------------------------------------------------


def test_list_query_repeats_and_ands_filters_with_names_in_any_case() -> None:
    query = parse_list_query(
        [
            ("productId", "urn:a:1"),
            ("productid", "urn:a:2"),
            ("GEOGRAPHY", "DE"),
            ("geography", "FR"),
            ("validon", "2025-04-01T00:00Z"),
            ("status", "active"),
            ("limit", "10"),
        ]
    )
    assert query.filters.product_ids == ("urn:a:1", "urn:a:2")
    assert query.filters.geography == ("DE", "FR")
    assert query.filters.valid_on_ns == 1_743_465_600 * 10**9
    assert query.filters.status == "Active"
    assert query.limit == 10
    assert not query.matches_nothing
    assert parse_list_query([("status", "BogusStatus")]).matches_nothing
    # a "+" offset that the query string made a space is read back
    moved = parse_list_query([("validAfter", "2025-04-01T09:00:00 09:00")])
    assert moved.filters.valid_after_ns == 1_743_465_600 * 10**9


@pytest.mark.parametrize(
    ("items", "code", "text"),
    [
        ([("limit", "0")], "BadRequest", "limit"),
        ([("limit", "ten")], "BadRequest", "limit"),
        ([("limit", "1"), ("limit", "2")], "BadRequest", "more than once"),
        ([("$filter", "created ge '2023-01-15'")], "NotImplemented", "$filter"),
        ([("x-atq-invoice-id", "1")], "NotImplemented", "x-atq-invoice-id"),
        ([("color", "red")], "BadRequest", "unknown parameter"),
        ([("productId", "")], "BadRequest", "empty"),
        ([("validOn", "yesterday")], "BadRequest", "validOn"),
        ([("cursor", "!!")], "BadRequest", "cursor"),
        (
            [("cursor", encode_cursor(decode_cursor("WzIsImEiLDFd"))), ("offset", "1")],
            "BadRequest",
            "not both",
        ),
        ([("offset", "-1")], "BadRequest", "offset"),
    ],
)
def test_bad_queries_name_the_parameter(items: list[tuple[str, str]], code: str, text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_list_query(items)
    assert caught.value.code == code
    assert caught.value.status == 400
    assert text in caught.value.message


# -- event sources -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "url"),
    [
        ("//api.recipient.org/3/events", "https://api.recipient.org/3/events"),
        ("https://api.recipient.org", "https://api.recipient.org/3/events"),
        ("https://api.recipient.org:8443/pact/", "https://api.recipient.org:8443/pact/3/events"),
        ("HTTPS://host.example/3/events?x=1", "https://host.example/3/events?x=1"),
    ],
)
def test_an_event_source_names_the_events_endpoint(source: str, url: str) -> None:
    assert callback_url(source) == url


@pytest.mark.parametrize(
    "source",
    [
        "http://api.recipient.org/3/events",
        "ftp://x/3/events",
        "api.recipient.org",
        "https://user:pw@host/3/events",
        "https:///3/events",
        "//host:99999/3/events",
        "https://host/3/events#frag",
    ],
)
def test_an_event_source_that_is_not_https_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="source"):
        callback_url(source)
