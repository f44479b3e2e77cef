"""The PACT 3.0 API under real uvicorn over HTTPS on loopback (a test CA made here), on the
real SQLite hub store, with real PACT 3.0 footprints. Every response body is validated against
the unmodified PACT OpenAPI file (RFC 6749 for /auth/token) by the client's response hook."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from edge_agent.clock import FakeClock
from edge_agent.domain import iso_from_ns
from edge_agent.errors import ConfigError
from edge_agent.hub.api import create_app, listing, serve
from edge_agent.hub.store import SqlHubStore
from tests.hub.api_support import (
    PRODUCT_A,
    SECRET_A,
    SECRET_B,
    Pki,
    RunningApi,
    Seeded,
    access_token,
    api_client,
    api_config,
    bearer,
    customer,
    free_port,
    hub_info,
    lot_footprint,
    next_link,
    running_api,
    two_customers,
)
from tests.unit.footprint_support import T0


@pytest.fixture
async def api(pki: Pki, store: SqlHubStore, seeded: Seeded) -> AsyncIterator[RunningApi]:
    async with running_api(pki, store, two_customers()) as running:
        yield running


async def _ids(http: httpx.AsyncClient, token: str, **params: Any) -> list[str]:
    response = await http.get("/3/footprints", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert "link" not in response.headers
    return [footprint["id"] for footprint in response.json()["data"]]


# -- /auth/token -------------------------------------------------------------------------------


async def test_a_client_gets_a_bearer_token_with_basic_auth(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=("customer-a", SECRET_A),
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["strict-transport-security"].startswith("max-age=")


@pytest.mark.parametrize(
    ("client_id", "secret"), [("customer-a", SECRET_B), ("nobody", SECRET_A), ("customer-a", "")]
)
async def test_wrong_credentials_are_invalid_client(
    http: httpx.AsyncClient, client_id: str, secret: str
) -> None:
    response = await http.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "Authentication failed",
    }
    assert response.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    ("request_options", "status", "error"),
    [
        ({"data": {"grant_type": "client_credentials"}}, 401, "invalid_client"),
        ({"data": {}, "auth": ("customer-a", SECRET_A)}, 400, "invalid_request"),
        (
            {"data": {"grant_type": "password"}, "auth": ("customer-a", SECRET_A)},
            400,
            "unsupported_grant_type",
        ),
        (
            {"json": {"grant_type": "client_credentials"}, "auth": ("customer-a", SECRET_A)},
            400,
            "invalid_request",
        ),
        (
            {
                "content": b"grant_type=client_credentials&grant_type=client_credentials",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "auth": ("customer-a", SECRET_A),
            },
            400,
            "invalid_request",
        ),
        (
            {
                "data": {
                    "grant_type": "client_credentials",
                    "client_id": "customer-a",
                    "client_secret": SECRET_A,
                },
                "auth": ("customer-a", SECRET_A),
            },
            400,
            "invalid_request",
        ),
        (
            {
                "data": {"grant_type": "client_credentials"},
                "headers": {"Authorization": "Basic !!!"},
            },
            401,
            "invalid_client",
        ),
        (
            {
                "data": {"grant_type": "client_credentials"},
                "headers": {"Authorization": "Digest x"},
            },
            401,
            "invalid_client",
        ),
    ],
)
async def test_malformed_token_requests_get_rfc_6749_errors(
    http: httpx.AsyncClient, request_options: dict[str, Any], status: int, error: str
) -> None:
    response = await http.post("/auth/token", **request_options)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


async def test_credentials_in_the_body_and_form_encoded_basic_credentials(
    pki: Pki, store: SqlHubStore
) -> None:
    odd_secret = "p+ss%word:with colon-0123456789"
    clients = [customer("odd client", odd_secret, [PRODUCT_A])]
    async with running_api(pki, store, clients) as api, api_client(pki, api.base_url) as http:
        in_body = await http.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "odd client",
                "client_secret": odd_secret,
            },
        )
        assert in_body.status_code == 200
        both = await http.post(  # some OAuth libraries repeat client_id in the body
            "/auth/token",
            data={"grant_type": "client_credentials", "client_id": "odd client"},
            auth=("odd client", odd_secret),
        )
        assert both.status_code == 200
        other = await http.post(
            "/auth/token",
            data={"grant_type": "client_credentials", "client_id": "someone else"},
            auth=("odd client", odd_secret),
        )
        assert other.json()["error"] == "invalid_request"
        assert await access_token(http, "odd client", odd_secret)  # raw in Basic
        # RFC 6749 §2.3.1: form-encoded before the Basic encoding
        encoded = base64.b64encode(b"odd+client:p%2Bss%25word%3Awith+colon-0123456789")
        response = await http.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {encoded.decode()}"},
        )
        assert response.status_code == 200, response.text


# -- bearer tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer very-invalid-access-token"}, {"Authorization": "Basic eDp5"}],
)
async def test_missing_or_invalid_tokens_are_401(
    http: httpx.AsyncClient, seeded: Seeded, headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/3/footprints"),
        ("GET", f"/3/footprints/{seeded.a[0].id}"),
        ("POST", "/3/events"),
    ):
        response = await http.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "BadRequest"
        assert response.headers["www-authenticate"].startswith("Bearer ")


async def test_an_expired_token_is_token_expired(
    pki: Pki, store: SqlHubStore, seeded: Seeded
) -> None:
    clock = FakeClock()
    async with (
        running_api(pki, store, two_customers(), clock=clock, token_ttl_s=600) as api,
        api_client(pki, api.base_url) as http,
    ):
        token = await access_token(http, "customer-a", SECRET_A)
        clock.advance(599)
        assert (await http.get("/3/footprints", headers=bearer(token))).status_code == 200
        clock.advance(1)
        response = await http.get("/3/footprints", headers=bearer(token))
        assert response.status_code == 401
        assert response.json()["code"] == "TokenExpired"
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        fresh = await access_token(http, "customer-a", SECRET_A)
        assert (await http.get("/3/footprints", headers=bearer(fresh))).status_code == 200


async def test_a_token_works_on_every_instance_with_the_same_key(
    pki: Pki, store: SqlHubStore, seeded: Seeded
) -> None:
    """Two hub instances on one database behind a load balancer: either one accepts a token
    the other issued; an instance with another key does not."""
    async with (
        running_api(pki, store, two_customers()) as first,
        running_api(pki, store, two_customers()) as second,
        running_api(
            pki, store, two_customers(), token_key=b"another key, 32 bytes long......"
        ) as third,
        api_client(pki, first.base_url) as http,
    ):
        token = await access_token(http, "customer-a", SECRET_A)
        for running, status in ((second, 200), (third, 401)):
            response = await http.get(f"{running.base_url}/3/footprints", headers=bearer(token))
            assert response.status_code == status


async def test_a_client_given_no_products_is_access_denied(
    pki: Pki, store: SqlHubStore, seeded: Seeded
) -> None:
    clients = [*two_customers(), customer("customer-c", SECRET_A, [])]
    async with running_api(pki, store, clients) as api, api_client(pki, api.base_url) as http:
        token = await access_token(http, "customer-c", SECRET_A)
        for path in ("/3/footprints", f"/3/footprints/{seeded.a[0].id}"):
            response = await http.get(path, headers=bearer(token))
            assert response.status_code == 403
            assert response.json()["code"] == "AccessDenied"


# -- HTTPS only --------------------------------------------------------------------------------


async def test_plain_http_gets_no_answer(api: RunningApi) -> None:
    async with httpx.AsyncClient(timeout=5) as plain:
        for method, path in (("POST", "/auth/token"), ("GET", "/3/footprints")):
            with pytest.raises(httpx.TransportError):
                await plain.request(method, f"http://127.0.0.1:{api.port}{path}")


async def test_the_api_refuses_to_start_without_tls_files(pki: Pki, store: SqlHubStore) -> None:
    api = api_config(pki, two_customers())
    app = create_app(api, store, token_key=b"k" * 32)
    for changes, expected in (
        (
            {"cert_file": None, "key_file": None},
            "api.cert_file, api.key_file: the PACT API is served over HTTPS only",
        ),
        ({"key_file": None}, "api.cert_file, api.key_file"),
        ({"cert_file": pki.cert_file.with_name("missing.pem")}, "api.cert_file: "),
        ({"key_file": pki.ca_file}, "are not a certificate and its private key"),
    ):
        with pytest.raises(ConfigError) as caught:
            await serve(app, api.model_copy(update=changes))
        assert len(caught.value.problems) == 1
        assert expected in caught.value.problems[0]


async def test_serve_runs_until_cancelled(pki: Pki, store: SqlHubStore) -> None:
    port = free_port()
    api = api_config(pki, two_customers()).model_copy(update={"port": port})
    task = asyncio.create_task(serve(create_app(api, store, token_key=b"k" * 32), api))
    async with api_client(pki, f"https://127.0.0.1:{port}") as http:
        for _ in range(100):
            try:
                await access_token(http, "customer-a", SECRET_A)
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the API did not come up")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with api_client(pki, f"https://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/3/footprints")


async def test_a_secret_hash_that_cannot_work_is_a_config_error(
    pki: Pki, store: SqlHubStore
) -> None:
    broken = customer("customer-a", SECRET_A, [PRODUCT_A]).model_copy(
        update={"secret_hash": "scrypt$3$8$1$AAAA$AAAA"}
    )
    with pytest.raises(
        ConfigError, match=r"api.clients\[0\].secret_hash: n 3 must be a power of 2"
    ):
        create_app(api_config(pki, [broken]), store, token_key=b"k" * 32)


# -- ListFootprints and GetFootprint: data sovereignty -----------------------------------------


async def test_each_client_sees_its_own_products_only(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str
) -> None:
    ids_a = await _ids(http, token_a)
    # newest first
    assert ids_a == [row.id for row in sorted(seeded.a, key=lambda r: -r.created_ns)]
    token_b = await access_token(http, "customer-b", SECRET_B)
    assert set(await _ids(http, token_b)) == seeded.ids(seeded.b)
    # A asking for B's product by its id gets nothing (not an error that confirms it exists)
    b_urn = seeded.b[0].product_ids[0]
    assert await _ids(http, token_a, productId=b_urn) == []


async def test_another_clients_footprint_is_not_found_like_a_missing_one(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str
) -> None:
    own = await http.get(f"/3/footprints/{seeded.a[0].id}", headers=bearer(token_a))
    assert own.status_code == 200
    assert own.json()["data"]["id"] == seeded.a[0].id
    theirs = await http.get(f"/3/footprints/{seeded.b[0].id}", headers=bearer(token_a))
    missing_id = "00000000-0000-0000-0000-000000000000"
    missing = await http.get(f"/3/footprints/{missing_id}", headers=bearer(token_a))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["code"] == missing.json()["code"] == "NotFound"
    assert theirs.json()["message"].replace(seeded.b[0].id, "X") == missing.json()[
        "message"
    ].replace(missing_id, "X")
    assert theirs.headers.keys() == missing.headers.keys()
    malformed = await http.get("/3/footprints/non-existent-id", headers=bearer(token_a))
    assert malformed.status_code == 400
    upper = await http.get(f"/3/footprints/{seeded.a[0].id.upper()}", headers=bearer(token_a))
    assert upper.status_code == 200


async def test_a_deprecated_footprint_is_still_served_as_deprecated(
    http: httpx.AsyncClient, store: SqlHubStore, seeded: Seeded, token_a: str
) -> None:
    old = seeded.a[0]
    newer = lot_footprint("LOT-A000", revision=2, preceding=[old.id])
    assert await store.save_footprint(newer)
    response = await http.get(f"/3/footprints/{old.id}", headers=bearer(token_a))
    assert response.json()["data"]["status"] == "Deprecated"
    assert await _ids(http, token_a, status="Deprecated") == [old.id]
    active = await _ids(http, token_a, status="Active")
    assert newer.id in active
    assert old.id not in active
    assert len(await _ids(http, token_a)) == 6  # deprecated ones are listed too


# -- pagination --------------------------------------------------------------------------------


async def _walk(
    http: httpx.AsyncClient, token: str, first: str, between: Any = None, **params: Any
) -> list[list[str]]:
    pages: list[list[str]] = []
    url: str | None = first
    while url is not None:
        response = await http.get(url, params=params if not pages else None, headers=bearer(token))
        assert response.status_code == 200
        pages.append([footprint["id"] for footprint in response.json()["data"]])
        url = next_link(response.headers.get("link"))
        if url is not None and between is not None:
            await between(len(pages), url)
        assert len(pages) < 50, "pagination does not end"
    return pages


async def test_pagination_walks_every_page_once(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str
) -> None:
    seen_links: list[str] = []

    async def again(_: int, url: str) -> None:
        seen_links.append(url)

    pages = await _walk(http, token_a, "/3/footprints", again, limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    flat = [pf for page in pages for pf in page]
    assert flat == await _ids(http, token_a)
    # a pagination link can be called more than once: the same set each time
    repeat = await http.get(seen_links[0], headers=bearer(token_a))
    assert [f["id"] for f in repeat.json()["data"]] == pages[1]
    # the Link's host is the request's Host header, the filters and limit are kept
    response = await http.get(
        "/3/footprints",
        params={"limit": 1, "companyid": "urn:pact:company:customcode:buyer-id:4321"},
        headers={**bearer(token_a), "Host": f"localhost:{http.base_url.port}"},
    )
    link = next_link(response.headers["link"])
    assert link is not None
    assert link.startswith(f"https://localhost:{http.base_url.port}/3/footprints?")
    assert "companyId=urn:pact:company:customcode:buyer-id:4321" in link
    assert "limit=1" in link


async def test_pages_stay_put_while_footprints_arrive(
    http: httpx.AsyncClient, store: SqlHubStore, seeded: Seeded, token_a: str
) -> None:
    """Newer footprints stored between two page requests would shift every offset; the
    cursor continues after the last footprint served: nothing skipped, nothing twice."""

    async def arrive(page: int, _: str) -> None:
        if page == 1:
            for index in range(3):
                row = lot_footprint(f"LOT-N{index}", start=T0 + timedelta(days=30 + index))
                assert await store.save_footprint(row)

    pages = await _walk(http, token_a, "/3/footprints", arrive, limit=2)
    flat = [pf for page in pages for pf in page]
    assert sorted(flat) == sorted(seeded.ids())  # the newer ones are before the cursor
    assert len(flat) == len(set(flat))


async def test_pages_under_a_status_filter_continue_when_the_last_served_is_deprecated(
    http: httpx.AsyncClient, store: SqlHubStore, seeded: Seeded, token_a: str
) -> None:
    """The footprint a cursor points after leaves the list (a newer version deprecates it):
    the next page starts where it was, with its successor; nothing skipped or repeated."""
    newest_first = [row.id for row in sorted(seeded.a, key=lambda r: -r.created_ns)]
    successor: list[str] = []

    async def deprecate(page: int, _: str) -> None:
        if page == 1:
            anchor = next(row for row in seeded.a if row.id == newest_first[1])
            lot_id = anchor.key.rsplit(":", 1)[-1]
            start = T0 + timedelta(days=seeded.a.index(anchor))
            newer = lot_footprint(lot_id, revision=2, start=start, preceding=[anchor.id])
            assert await store.save_footprint(newer)
            successor.append(newer.id)

    pages = await _walk(http, token_a, "/3/footprints", deprecate, limit=2, status="Active")
    flat = [pf for page in pages for pf in page]
    assert flat == [*newest_first[:2], successor[0], *newest_first[2:]]


async def test_the_cursor_finds_its_place_among_footprints_of_the_same_time(
    http: httpx.AsyncClient, store: SqlHubStore, token_a: str
) -> None:
    same_time = T0 + timedelta(days=60)
    for index in range(4):
        assert await store.save_footprint(lot_footprint(f"LOT-T{index}", start=same_time))

    async def arrive(page: int, _: str) -> None:
        row = lot_footprint(f"LOT-M{page}", start=T0 + timedelta(days=90 + page))
        assert await store.save_footprint(row)

    before = await _ids(http, token_a, limit=1000)
    pages = await _walk(http, token_a, "/3/footprints", arrive, limit=3)
    flat = [pf for page in pages for pf in page]
    assert len(flat) == len(set(flat))
    assert set(before) <= set(flat)


async def test_a_page_is_never_larger_than_asked_or_than_the_hosts_maximum(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing, "MAX_PAGE", 3)
    monkeypatch.setattr(listing, "DEFAULT_PAGE", 2)
    for params, size in (({"limit": 100}, 3), ({}, 2), ({"limit": 1}, 1)):
        response = await http.get("/3/footprints", params=params, headers=bearer(token_a))
        assert len(response.json()["data"]) == size
        assert "link" in response.headers


async def test_bad_list_requests_are_400(http: httpx.AsyncClient, token_a: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "BadRequest"),
        ({"limit": "x"}, "BadRequest"),
        ({"$filter": "created ge '2023-01-15T10:15:30Z'"}, "NotImplemented"),
        ({"x-atq-invoice-id": "1"}, "NotImplemented"),
        ({"offset": 2, "sort": "id"}, "BadRequest"),
        ({"validOn": "not a time"}, "BadRequest"),
        ({"cursor": "garbage"}, "BadRequest"),
    ]
    for params, code in cases:
        response = await http.get("/3/footprints", params=params, headers=bearer(token_a))
        assert response.status_code == 400, params
        assert response.json()["code"] == code


# -- filters -----------------------------------------------------------------------------------


async def test_each_filter_and_several_values(
    http: httpx.AsyncClient, store: SqlHubStore, seeded: Seeded, token_a: str
) -> None:
    german = lot_footprint(
        "LOT-DE1",
        start=T0 + timedelta(days=10),
        footprint_info=hub_info(site_country="DE", site_subdivision=None),
    )
    assert await store.save_footprint(german)
    a = {row.id: row for row in seeded.a}
    everything = {*a, german.id}
    supplier = seeded.a[0].product_ids[0]
    batch = [row.product_ids[1] for row in seeded.a[:2]]
    company = seeded.a[0].company_ids[0]

    async def found(**params: Any) -> set[str]:
        return set(await _ids(http, token_a, limit=1000, **params))

    assert await found() == everything
    assert await found(productId=supplier) == everything
    assert await found(productId=batch[0]) == {seeded.a[0].id}
    assert await found(productId=batch) == {seeded.a[0].id, seeded.a[1].id}
    assert await found(productId=["urn:bogus:1", batch[1]]) == {seeded.a[1].id}
    assert await found(companyId=company) == everything
    assert await found(companyId=["urn:bogus:company:x", company]) == everything
    assert await found(companyId="urn:bogus:company:x") == set()
    assert await found(companyId=[company, "5FIi8zS3"]) == everything  # not a URN: no match
    assert await found(geography="JP-27") == set(a)
    assert await found(geography="DE") == {german.id}
    assert await found(geography=["DE", "JP-27"]) == everything
    assert await found(geography="XX") == set()
    assert await found(classification="urn:cpc:42999") == everything
    assert await found(classification="urn:eclass:27182402") == set()  # customer-b's product
    # validity: no validity period in these footprints: the stored one starts at the
    # reference period's end
    third = seeded.a[2]
    assert third.id in await found(validOn=iso_from_ns(third.validity_start_ns))
    assert await found(validOn="1900-01-01T00:00:00Z") == set()
    assert await found(validAfter=iso_from_ns(third.validity_start_ns - 1)) == {
        row.id for row in seeded.a[2:]
    } | {german.id}
    assert await found(validAfter="2099-12-31T23:59:59Z") == set()
    assert await found(validBefore="2099-12-31T23:59:59Z") == everything
    assert await found(validBefore=iso_from_ns(third.validity_end_ns + 1_000_000)) == {
        row.id for row in seeded.a[:3]
    }
    assert await found(validBefore="1900-01-01T00:00:00Z") == set()
    assert await found(status="Active") == everything
    assert await found(status="active") == everything
    assert await found(status="Deprecated") == set()
    assert await found(status="BogusStatus") == set()
    # different filters must all match
    assert await found(productId=batch, geography="DE") == set()
    assert await found(productId=supplier, geography="DE", status="Active") == {german.id}
    assert await found(companyId="urn:bogus:company:x", productId=supplier) == set()


async def test_filter_names_are_matched_in_any_case(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str
) -> None:
    batch = seeded.a[0].product_ids[1]
    assert await _ids(http, token_a, productid=batch) == [seeded.a[0].id]
    assert await _ids(http, token_a, GEOGRAPHY="XX", Status="Active") == []


async def test_filter_values_are_matched_without_regard_to_case(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str
) -> None:
    batch = seeded.a[0].product_ids[1]
    assert await _ids(http, token_a, productId=batch.upper()) == [seeded.a[0].id]
    assert set(await _ids(http, token_a, geography="jp-27")) == seeded.ids()


# -- other paths -------------------------------------------------------------------------------


async def test_unknown_paths_and_methods_get_pact_errors(
    http: httpx.AsyncClient, token_a: str
) -> None:
    missing = await http.get("/2/footprints", headers=bearer(token_a))
    assert missing.status_code == 404
    assert missing.json()["code"] == "NotFound"
    wrong = await http.delete("/3/footprints", headers=bearer(token_a))
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "BadRequest"
    # no OpenID Connect: clients fall back to /auth/token (PACT 3.0 "Obtaining an Access Token")
    assert (await http.get("/.well-known/openid-configuration")).status_code == 404


async def test_the_application_answers_nothing_but_https(pki: Pki, store: SqlHubStore) -> None:
    """Mounted behind something that speaks plain HTTP, the app itself still refuses."""
    app = create_app(api_config(pki, two_customers()), store, token_key=b"k" * 32)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as plain:
        response = await plain.post(
            "/auth/token", data={"grant_type": "client_credentials"}, auth=("customer-a", SECRET_A)
        )
    assert response.status_code == 400
    assert response.json() == {
        "code": "BadRequest",
        "message": "this API is served over HTTPS only",
    }
