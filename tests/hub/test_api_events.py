"""POST /3/events under real uvicorn over HTTPS, with a data recipient's host on loopback
(HTTPS, the same test CA) that authenticates the hub and receives its events. Every event the
recipient receives is validated against the unmodified PACT OpenAPI file."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from edge_agent.hub.api import RecipientCredentials, RetryPolicy
from edge_agent.hub.store import SqlHubStore
from tests.hub.api_support import (
    RECIPIENT_CLIENT_ID,
    RECIPIENT_SECRET,
    SECRET_B,
    Pki,
    Recipient,
    RunningApi,
    Seeded,
    access_token,
    bearer,
    event_problems,
    running_api,
    running_recipient,
    two_customers,
)

CREATED = "org.wbcsd.pact.ProductFootprint.RequestCreatedEvent.3"
PUBLISHED = "org.wbcsd.pact.ProductFootprint.PublishedEvent.3"
FULFILLED = "org.wbcsd.pact.ProductFootprint.RequestFulfilledEvent.3"
REJECTED = "org.wbcsd.pact.ProductFootprint.RequestRejectedEvent.3"
CE = {"Content-Type": "application/cloudevents+json; charset=UTF-8"}
FAST = RetryPolicy(attempts=4, first_delay_s=0.05, max_delay_s=0.2, timeout_s=5)


@pytest.fixture
async def recipient(pki: Pki) -> AsyncIterator[Recipient]:
    async with running_recipient(pki, Recipient()) as running:
        yield running


@pytest.fixture
async def api(
    pki: Pki, store: SqlHubStore, seeded: Seeded, recipient: Recipient
) -> AsyncIterator[RunningApi]:
    credentials = {recipient.base_url: RecipientCredentials(RECIPIENT_CLIENT_ID, RECIPIENT_SECRET)}
    async with running_api(
        pki,
        store,
        two_customers(),
        retry=FAST,
        recipient_credentials=credentials,
        recipient_endpoints={
            "customer-a": f"{recipient.base_url}/3/events",
            "customer-b": f"{recipient.base_url}/3/events",
        },
        public_url="https://hub.example-enclosures.co.jp",
    ) as running:
        yield running


def _event(event_type: str, data: dict[str, Any], source: str, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "type": event_type,
        "data": data,
        **extra,
    }


def _valid(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        assert event_problems(event) == [], event
    return events


async def test_a_request_is_fulfilled_with_the_clients_footprints_only(
    http: httpx.AsyncClient, recipient: Recipient, seeded: Seeded, token_a: str, api: RunningApi
) -> None:
    product_urn = seeded.a[0].product_ids[0]  # the supplier id all of A's lots share
    request = _event(
        CREATED,
        {"productId": [product_urn], "comment": "Please send PCF data for this year."},
        f"//127.0.0.1:{recipient.base_url.rsplit(':', 1)[1]}/3/events",
    )
    began = time.monotonic()
    response = await http.post("/3/events", json=request, headers={**CE, **bearer(token_a)})
    assert response.status_code == 200
    assert response.content == b""
    assert time.monotonic() - began < 2
    [answer] = _valid(await recipient.wait_for(1))
    assert answer["type"] == FULFILLED
    assert answer["data"]["requestEventId"] == request["id"]
    assert {pf["id"] for pf in answer["data"]["pfs"]} == seeded.ids()
    assert answer["source"] == f"//127.0.0.1:{api.port}/3/events"
    assert recipient.unauthenticated == 0  # the hub authenticated with the recipient's host


async def test_a_request_for_another_clients_product_is_rejected(
    http: httpx.AsyncClient, recipient: Recipient, seeded: Seeded, token_a: str
) -> None:
    for product_ids in ([seeded.b[0].product_ids[0]], ["urn:pact:null"]):
        request = _event(CREATED, {"productId": product_ids}, recipient.base_url)
        response = await http.post("/3/events", json=request, headers={**CE, **bearer(token_a)})
        assert response.status_code == 200
    answers = _valid(await recipient.wait_for(2))
    assert [answer["type"] for answer in answers] == [REJECTED, REJECTED]
    assert {answer["data"]["error"]["code"] for answer in answers} == {"NotFound"}


async def test_a_request_uses_every_filter_of_list_footprints(
    http: httpx.AsyncClient, recipient: Recipient, seeded: Seeded, token_a: str
) -> None:
    second = seeded.a[1]
    data = {
        "productId": ["urn:bogus:x", second.product_ids[1]],
        "companyId": list(second.company_ids),
        "geography": ["JP-27"],
        "classification": ["urn:cpc:42999"],
        "validOn": datetime.fromtimestamp(second.validity_start_ns / 1e9, UTC).isoformat(),
        "status": "Active",
    }
    await http.post(
        "/3/events",
        json=_event(CREATED, data, recipient.base_url),
        headers={**CE, **bearer(token_a)},
    )
    [answer] = _valid(await recipient.wait_for(1))
    assert [pf["id"] for pf in answer["data"]["pfs"]] == [second.id]


async def test_a_request_sent_twice_is_answered_once(
    http: httpx.AsyncClient, recipient: Recipient, seeded: Seeded, token_a: str, api: RunningApi
) -> None:
    request = _event(CREATED, {"productId": ["urn:pact:null"]}, recipient.base_url)
    for _ in range(2):
        response = await http.post("/3/events", json=request, headers={**CE, **bearer(token_a)})
        assert response.status_code == 200
    await api.hub.sender.drain()
    assert len(recipient.events) == 1


async def test_answers_are_retried_until_the_recipient_accepts(
    http: httpx.AsyncClient, recipient: Recipient, seeded: Seeded, token_a: str, api: RunningApi
) -> None:
    recipient.fail_first = 2
    request = _event(CREATED, {"productId": ["urn:pact:null"]}, recipient.base_url)
    await http.post("/3/events", json=request, headers={**CE, **bearer(token_a)})
    [answer] = _valid(await recipient.wait_for(1))
    assert answer["data"]["requestEventId"] == request["id"]
    assert recipient.attempts == 3
    await api.hub.sender.drain()
    assert api.hub.sender.delivered == 1


async def test_an_unreachable_recipient_never_blocks_and_is_given_up(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str, api: RunningApi
) -> None:
    request = _event(CREATED, {"productId": ["urn:pact:null"]}, "https://127.0.0.1:9")
    began = time.monotonic()
    response = await http.post("/3/events", json=request, headers={**CE, **bearer(token_a)})
    assert response.status_code == 200
    assert time.monotonic() - began < 1
    await api.hub.sender.drain()
    assert api.hub.sender.abandoned == 1
    assert api.hub.sender.delivered == 0


async def test_published_notifications_go_to_each_client_for_its_footprints(
    recipient: Recipient, seeded: Seeded, api: RunningApi
) -> None:
    assert api.hub.notify_published([*seeded.a[:2], seeded.b[0]]) == 2
    events = _valid(await recipient.wait_for(2))
    assert {event["type"] for event in events} == {PUBLISHED}
    assert sorted(sorted(event["data"]["pfIds"]) for event in events) == sorted(
        [sorted(seeded.ids(seeded.a[:2])), [seeded.b[0].id]]
    )
    assert {event["source"] for event in events} == {"//hub.example-enclosures.co.jp/3/events"}


async def test_events_the_hub_receives_are_acknowledged(
    http: httpx.AsyncClient, seeded: Seeded, token_a: str, recipient: Recipient
) -> None:
    published = _event(PUBLISHED, {"pfIds": [str(uuid.uuid4())]}, recipient.base_url)
    fulfilled = _event(
        FULFILLED, {"requestEventId": "x", "pfs": [dict(seeded.a[0].payload)]}, recipient.base_url
    )
    rejected = _event(
        REJECTED,
        {"requestEventId": "x", "error": {"code": "NotFound", "message": "none"}},
        recipient.base_url,
        datacontenttype="application/json",
    )
    for event in (published, fulfilled, rejected):
        assert event_problems(event) == []
        response = await http.post("/3/events", json=event, headers={**CE, **bearer(token_a)})
        assert response.status_code == 200, response.text
    plain_json = await http.post("/3/events", json=published, headers=bearer(token_a))
    assert plain_json.status_code == 200


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"data": {"pfIds": ["urn:gtin:4712345060507"]}}, "BadRequest"),  # not a UUID
        ({"data": {"pfIds": []}}, "BadRequest"),
        ({"time": None}, "BadRequest"),
        ({"specversion": "0.3"}, "BadRequest"),
        ({"type": "org.wbcsd.pact.ProductFootprint.Unknown.3"}, "NotImplemented"),
        ({"type": "org.wbcsd.pathfinder.ProductFootprint.Published.v1"}, "NotImplemented"),
        ({"type": None}, "BadRequest"),
        (
            {"type": CREATED, "data": {"productId": ["urn:x:1"]}, "source": "http://plain.example"},
            "BadRequest",
        ),
        ({"type": CREATED, "data": {"pf": {"productIds": ["urn:x:1"]}}}, "BadRequest"),
        ({"type": CREATED, "data": {"productId": "urn:x:1"}}, "BadRequest"),
    ],
)
async def test_invalid_events_are_400(
    http: httpx.AsyncClient, token_a: str, change: dict[str, Any], code: str
) -> None:
    event = _event(PUBLISHED, {"pfIds": [str(uuid.uuid4())]}, "https://r.example")
    event.update(change)
    event = {key: value for key, value in event.items() if value is not None}
    response = await http.post("/3/events", json=event, headers={**CE, **bearer(token_a)})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code


async def test_events_need_a_token_and_structured_mode(
    http: httpx.AsyncClient, token_a: str
) -> None:
    event = _event(PUBLISHED, {"pfIds": [str(uuid.uuid4())]}, "https://r.example")
    assert (await http.post("/3/events", json=event, headers=CE)).status_code == 401
    for headers, code in (
        ({"Content-Type": "text/plain"}, "BadRequest"),
        ({"Content-Type": "application/cloudevents-batch+json"}, "NotImplemented"),
        ({"Content-Type": "application/json", "ce-specversion": "1.0"}, "NotImplemented"),
    ):
        response = await http.post("/3/events", json=event, headers={**headers, **bearer(token_a)})
        assert response.status_code == 400
        assert response.json()["code"] == code
    not_json = await http.post("/3/events", content=b"{", headers={**CE, **bearer(token_a)})
    assert not_json.status_code == 400
    huge = await http.post(
        "/3/events", content=b" " * (1024 * 1024 + 1), headers={**CE, **bearer(token_a)}
    )
    assert huge.status_code == 400


async def test_customer_b_is_answered_with_its_own_footprints(
    http: httpx.AsyncClient, recipient: Recipient, seeded: Seeded
) -> None:
    token_b = await access_token(http, "customer-b", SECRET_B)
    request = _event(CREATED, {"companyId": list(seeded.a[0].company_ids)}, recipient.base_url)
    await http.post("/3/events", json=request, headers={**CE, **bearer(token_b)})
    [answer] = _valid(await recipient.wait_for(1))
    assert {pf["id"] for pf in answer["data"]["pfs"]} == seeded.ids(seeded.b)
