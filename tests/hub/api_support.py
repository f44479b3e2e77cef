"""Shared by the API tests: a test CA and server certificate made at test time, the API under
real uvicorn over HTTPS on loopback, real PACT 3.0 footprints (edge_agent.footprint) in the real
SQLite hub store, an HTTPS "data recipient" that receives events, and a client that validates
every response body against the unmodified PACT OpenAPI file (tests/unit/footprint_support.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_agent.clock import Clock
from edge_agent.domain import ns_from_iso
from edge_agent.footprint import FootprintInfo, ProductInfo, build_pact_v3
from edge_agent.hub.api import ApiServer, HubApi, create_app, hash_secret
from edge_agent.hub.assemble import footprint_row
from edge_agent.hub.config import ApiClient, HubApiConfig, HubStoreConfig
from edge_agent.hub.model import FootprintRow
from edge_agent.hub.store import SqlHubStore, open_hub_store
from simulators.tls import Pki
from tests.unit.footprint_support import (
    FORMATS,
    PACT_DIR,
    PRODUCT,
    SITE,
    T0,
    _json_safe,
    errors_of,
    info,
    openapi_to_json_schema,
    openapi_validator,
    reference_file,
    worked_example,
)

OPENAPI = "pact-openapi-3.0.3.yaml"
PRODUCT_A = PRODUCT  # ENCL-400x300, shared with customer-a
PRODUCT_B = "ENCL-600x400"  # shared with customer-b
SECRET_A = "customer-a-secret-0123456789abcdef"
SECRET_B = "customer-b-secret-fedcba9876543210"
TOKEN_KEY = b"test token key material, 32 bytes+"


# -- clients and the API under uvicorn ---------------------------------------------------------


@cache
def secret_hash(secret: str) -> str:
    return hash_secret(secret)  # scrypt: ~0.1 s, once per secret and test session


def customer(client_id: str, secret: str, products: Sequence[str]) -> ApiClient:
    return ApiClient(id=client_id, secret_hash=secret_hash(secret), products=list(products))


def two_customers() -> list[ApiClient]:
    return [
        customer("customer-a", SECRET_A, [PRODUCT_A]),
        customer("customer-b", SECRET_B, [PRODUCT_B]),
    ]


def api_config(pki: Pki, clients: Sequence[ApiClient], *, token_ttl_s: int = 3600) -> HubApiConfig:
    config = HubApiConfig(
        host="127.0.0.1",
        port=8443,
        cert_file=pki.cert_file,
        key_file=pki.key_file,
        token_ttl_s=token_ttl_s,
        clients=list(clients),
    )
    return config.model_copy(update={"port": 0})  # a free port (the server reports it)


@dataclass
class RunningApi:
    base_url: str
    port: int
    hub: HubApi
    server: ApiServer


@contextlib.asynccontextmanager
async def running_api(
    pki: Pki,
    store: SqlHubStore,
    clients: Sequence[ApiClient],
    *,
    clock: Clock | None = None,
    token_key: bytes | None = TOKEN_KEY,
    token_ttl_s: int = 3600,
    **options: Any,
) -> AsyncIterator[RunningApi]:
    api = api_config(pki, clients, token_ttl_s=token_ttl_s)
    options.setdefault("callback_verify", pki.client_context())
    app = create_app(api, store, clock=clock, token_key=token_key, **options)
    server = ApiServer(app, api, log_level="warning")
    port = await server.start()
    try:
        yield RunningApi(f"https://127.0.0.1:{port}", port, app.state.hub_api, server)
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def sqlite_store(folder: Path) -> AsyncIterator[SqlHubStore]:
    store = await open_hub_store(HubStoreConfig(url=f"sqlite:///{folder / 'hub.db'}"))
    try:
        yield store
    finally:
        await store.close()


# -- validating every response against the unmodified OpenAPI file -----------------------------

_LIST_200 = "#/paths/~13~1footprints/get/responses/200/content/application~1json/schema"
_GET_200 = "#/paths/~13~1footprints~1{id}/get/responses/200/content/application~1json/schema"

# RFC 6749 §5.1 and §5.2 (no PACT schema: PACT points to the RFC)
TOKEN_SCHEMA = {
    "type": "object",
    "required": ["access_token", "token_type"],
    "properties": {
        "access_token": {"type": "string", "minLength": 1},
        "token_type": {"type": "string", "pattern": "^[Bb]earer$"},
        "expires_in": {"type": "integer", "minimum": 1},
    },
}
OAUTH_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "enum": [
                "invalid_request",
                "invalid_client",
                "invalid_grant",
                "unauthorized_client",
                "unsupported_grant_type",
                "invalid_scope",
            ]
        },
        "error_description": {"type": "string", "pattern": r"^[\x20-\x21\x23-\x5B\x5D-\x7E]*$"},
    },
}


@cache
def openapi_pointer_validator(pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for any schema inside the unmodified OpenAPI file (``openapi_validator``
    reaches ``components.schemas`` only; the list and get responses are inline in ``paths``)."""
    path = reference_file(PACT_DIR / OPENAPI)
    import yaml

    document = openapi_to_json_schema(_json_safe(yaml.safe_load(path.read_text("utf-8"))))
    uri = f"urn:edge-agent-test:paths:{OPENAPI}"
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": uri + pointer}
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=FORMATS)


def event_problems(event: Mapping[str, Any]) -> list[str]:
    kind = str(event.get("type", "")).rsplit(".", 2)[-2]  # ...ProductFootprint.<Name>.3
    return errors_of(openapi_validator(OPENAPI, kind), event)


def response_problems(response: httpx.Response) -> list[str]:
    """What is wrong with a response of the API, by the OpenAPI file, RFC 6749 and PACT's
    pagination rules (empty when nothing)."""
    request = response.request
    path = request.url.path
    status = response.status_code
    if path == "/3/events" and request.method == "POST" and status == 200:
        return [] if response.content == b"" else [f"events: body {response.content[:80]!r}"]
    if not response.headers.get("content-type", "").startswith("application/json"):
        return [f"{path} {status}: content-type {response.headers.get('content-type')}"]
    body = response.json()
    if path == "/auth/token":
        schema = TOKEN_SCHEMA if status == 200 else OAUTH_ERROR_SCHEMA
        problems = errors_of(jsonschema.Draft202012Validator(schema), body)
        if response.headers.get("cache-control") != "no-store":
            problems.append("token responses need Cache-Control: no-store (RFC 6749 §5.1)")
        return problems
    if status != 200:
        return errors_of(openapi_validator(OPENAPI, "Error"), body)
    if path == "/3/footprints":
        problems = errors_of(openapi_pointer_validator(_LIST_200), body)
        link = response.headers.get("link")
        if link is not None:
            problems += link_problems(link, request.headers["host"])
        return problems
    if path.startswith("/3/footprints/"):
        return errors_of(openapi_pointer_validator(_GET_200), body)
    return [f"unexpected 200 from {path}"]


def next_link(link: str | None) -> str | None:
    if link is None:
        return None
    target, _, params = link.partition(";")
    assert params.strip() == 'rel="next"', link
    return target.strip().removeprefix("<").removesuffix(">")


def link_problems(link: str, host: str) -> list[str]:
    target = next_link(link)
    assert target is not None
    parts = urlsplit(target)
    problems = []
    if parts.scheme != "https" or not parts.netloc:
        problems.append(f"Link target {target} is not an absolute https URI")
    if parts.netloc != host:
        problems.append(f"Link host {parts.netloc} is not the request's Host {host}")
    if ", " in target:
        problems.append("Link target contains ', '")
    return problems


def api_client(pki: Pki, base_url: str, **options: Any) -> httpx.AsyncClient:
    """An HTTPS client trusting the test CA; every response it receives is validated."""

    async def validate(response: httpx.Response) -> None:
        await response.aread()
        problems = response_problems(response)
        assert not problems, f"{response.request.method} {response.request.url}: {problems}"

    return httpx.AsyncClient(
        base_url=base_url,
        verify=pki.client_context(),
        event_hooks={"response": [validate]},
        timeout=10,
        **options,
    )


async def access_token(http: httpx.AsyncClient, client_id: str, secret: str) -> str:
    response = await http.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- footprints --------------------------------------------------------------------------------


def hub_info(**changes: Any) -> FootprintInfo:
    """The worked example's company with two products (one per customer)."""
    base = info()
    products = dict(base.products)
    products[PRODUCT_B] = ProductInfo(
        name="Enclosure 600x400",
        description="Sheet-steel enclosure 600 x 400 x 250 mm, powder-coated, bulk packed",
        classifications=("urn:eclass:27182402",),
        cpc="42999",
        mass_kg=Decimal("9.5"),
    )
    values: dict[str, Any] = {"products": products, **changes}
    return info(**values)


def lot_footprint(
    lot_id: str,
    *,
    product: str = PRODUCT_A,
    start: datetime = T0,
    revision: int = 1,
    footprint_info: FootprintInfo | None = None,
    preceding: Sequence[str] = (),
) -> FootprintRow:
    """The store row of a real PACT 3.0 lot footprint (the worked example's records)."""
    lot, orders = worked_example(lot_id, revision=revision, start=start)
    if product != PRODUCT:
        lot = {**lot, "product_id": product}
        orders = [{**order, "product_id": product} for order in orders]
    created = datetime.fromisoformat(str(lot["end"]))
    payload = build_pact_v3(
        lot,
        orders,
        footprint_info or hub_info(),
        created_at=created,
        version=revision,
        preceding_ids=preceding,
    )
    return footprint_row(
        payload, f"lot:{SITE}:{lot_id}", revision, product, ns_from_iso(str(lot["end"]))
    )


@dataclass
class Seeded:
    a: list[FootprintRow] = field(default_factory=list)  # customer-a's (PRODUCT_A), stored
    b: list[FootprintRow] = field(default_factory=list)

    def ids(self, rows: Sequence[FootprintRow] | None = None) -> set[str]:
        return {row.id for row in (self.a if rows is None else rows)}


async def seed(store: SqlHubStore, lots_a: int = 5, lots_b: int = 2) -> Seeded:
    """``lots_a`` footprints of PRODUCT_A a day apart (newest last) and ``lots_b`` of
    PRODUCT_B."""
    seeded = Seeded()
    for index in range(lots_a):
        row = lot_footprint(f"LOT-A{index:03d}", start=T0 + timedelta(days=index))
        assert await store.save_footprint(row)
        seeded.a.append(row)
    for index in range(lots_b):
        row = lot_footprint(
            f"LOT-B{index:03d}", product=PRODUCT_B, start=T0 + timedelta(days=index, hours=3)
        )
        assert await store.save_footprint(row)
        seeded.b.append(row)
    return seeded


# -- a data recipient's host: receives events over HTTPS ---------------------------------------

RECIPIENT_CLIENT_ID = "plant-hub"
RECIPIENT_SECRET = "recipient-gave-the-hub-this-secret"
RECIPIENT_TOKEN = "recipient-token-for-the-hub"


@dataclass
class Recipient:
    """What the recipient received; ``fail_first`` answers 503 to that many event POSTs."""

    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    unauthenticated: int = 0
    fail_first: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    base_url: str = ""

    async def wait_for(
        self, count: int, within_s: float = 10.0, where: Callable[[dict[str, Any]], bool] = bool
    ) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]]:
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self._of(where)) >= count)
                return self._of(where)

        return await asyncio.wait_for(enough(), within_s)

    def _of(self, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [event for event in self.events if where(event)]


def recipient_app(recipient: Recipient) -> Starlette:
    async def token(request: Request) -> Response:
        auth = httpx.BasicAuth(RECIPIENT_CLIENT_ID, RECIPIENT_SECRET)
        expected = next(auth.auth_flow(httpx.Request("POST", "https://x"))).headers
        form = (await request.body()).decode()
        if request.headers.get("authorization") != expected["Authorization"]:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form != "grant_type=client_credentials":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        return JSONResponse(
            {"access_token": RECIPIENT_TOKEN, "token_type": "Bearer", "expires_in": 3600}
        )

    async def events(request: Request) -> Response:
        recipient.attempts += 1
        if request.headers.get("authorization") != f"Bearer {RECIPIENT_TOKEN}":
            recipient.unauthenticated += 1
            return JSONResponse({"code": "BadRequest", "message": "no token"}, status_code=401)
        if recipient.attempts <= recipient.fail_first:
            return JSONResponse({"code": "InternalError", "message": "busy"}, status_code=503)
        assert request.headers["content-type"].startswith("application/cloudevents+json")
        event = json.loads(await request.body())
        async with recipient.arrived:
            recipient.events.append(event)
            recipient.arrived.notify_all()
        return Response(status_code=200)

    return Starlette(
        routes=[
            Route("/auth/token", token, methods=["POST"]),
            Route("/3/events", events, methods=["POST"]),
        ]
    )


@contextlib.asynccontextmanager
async def running_recipient(pki: Pki, recipient: Recipient) -> AsyncIterator[Recipient]:
    config = HubApiConfig(host="127.0.0.1", cert_file=pki.cert_file, key_file=pki.key_file)
    server = ApiServer(
        recipient_app(recipient), config.model_copy(update={"port": 0}), log_level="warning"
    )
    port = await server.start()
    recipient.base_url = f"https://127.0.0.1:{port}"
    try:
        yield recipient
    finally:
        await server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
