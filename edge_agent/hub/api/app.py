"""The PACT 3.0 host API (FastAPI): authenticate, list and get footprints, events.

    POST /auth/token            OAuth 2 client credentials (RFC 6749 §4.4), Basic auth
    GET  /3/footprints          ListFootprints: filters, limit, Link rel="next"
    GET  /3/footprints/{id}     GetFootprint
    POST /3/events              RequestCreated (answered in the background), PublishedEvent, …

Data sovereignty: a client sees the footprints whose MES ``product_id`` is in its configured
``products``, nothing else. A footprint of another client's product is answered exactly like
one that does not exist (404 NotFound): the OpenAPI text asks for 403 when access is denied,
but a 403 would confirm that the id exists — and footprint ids are derived from site, lot and
version, so a competitor could probe them to count a plant's lots. RFC 9110 §15.5.4 allows a
server to hide a forbidden resource behind 404. AccessDenied (403) is kept for a client that is
given no products at all (a configuration gap, not a secret).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edge_agent.clock import Clock, SystemClock
from edge_agent.domain import iso_from_ns, ns_from_datetime
from edge_agent.errors import ConfigError
from edge_agent.hub.api.errors import NO_STORE, ApiError, OAuthError, install_error_handlers
from edge_agent.hub.api.events import EventSender, RecipientCredentials, RetryPolicy, callback_url
from edge_agent.hub.api.listing import MAX_PAGE, STATUSES, fetch_page, parse_list_query
from edge_agent.hub.api.models import (
    EVENT_MODELS,
    FULFILLED,
    PUBLISHED,
    REJECTED,
    ErrorBody,
    FootprintListResponse,
    FootprintResponse,
    PublishedEvent,
    RequestCreatedEvent,
    RequestFulfilledEvent,
    RequestRejectedEvent,
    TokenResponse,
)
from edge_agent.hub.api.secrets import DUMMY_HASH, secret_hash_problem, verify_secret
from edge_agent.hub.api.tokens import (
    TOKEN_KEY_ENV,
    InvalidToken,
    TokenExpired,
    TokenService,
    derive_token_key,
    token_key_from_environment,
)
from edge_agent.hub.config import ApiClient, HubApiConfig
from edge_agent.hub.model import FootprintFilter, FootprintRow, FootprintStatus, HubStore

__all__ = ["HubApi", "create_app", "served_footprint"]

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 1024 * 1024
MAX_FORM_BYTES = 8 * 1024
MAX_EVENT_FOOTPRINTS = MAX_PAGE  # footprints in one RequestFulfilled event
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_REALM = 'realm="edge-agent hub"'


def served_footprint(row: FootprintRow) -> dict[str, Any]:
    """The footprint as served: the stored payload with the row's current status (a version
    becomes Deprecated after it was built, when a newer one is stored)."""
    return {**row.payload, "status": row.status}


class HubApi:
    """The API's state (``app.state.hub_api``): configuration, store, tokens and events.

    :meth:`notify_published` is for the hub's assembler: it sends a PublishedEvent with the ids
    of new footprints to every client with a known events endpoint that may see them."""

    def __init__(
        self,
        api: HubApiConfig,
        store: HubStore,
        *,
        clock: Clock,
        token_key: bytes,
        sender: EventSender,
        recipient_endpoints: Mapping[str, str],
        public_url: str,
    ) -> None:
        self.config = api
        self.store = store
        self.clock = clock
        self.clients: dict[str, ApiClient] = {client.id: client for client in api.clients}
        self.tokens = TokenService(derive_token_key(token_key), clock, api.token_ttl_s)
        self.sender = sender
        self.recipient_endpoints = dict(recipient_endpoints)
        self.public_source = "//" + public_url.split("://", 1)[-1].rstrip("/") + "/3/events"
        # scrypt costs ~32 MiB and ~0.1 s: a few at a time, in threads, never on the loop
        self._hashing = asyncio.Semaphore(4)

    # -- authentication ------------------------------------------------------------------------

    async def verify(self, client_id: str, secret: str) -> ApiClient | None:
        client = self.clients.get(client_id)
        stored = client.secret_hash if client is not None else DUMMY_HASH
        async with self._hashing:
            ok = await asyncio.to_thread(verify_secret, secret, stored)
        return client if ok and client is not None else None

    def bearer(self, request: Request) -> ApiClient:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                "BadRequest",
                "no access token: send 'Authorization: Bearer <token>' (POST /auth/token)",
                status=401,
                headers={"WWW-Authenticate": f"Bearer {_REALM}"},
            )
        try:
            return self.tokens.check(token.strip(), self.clients)
        except TokenExpired:
            raise ApiError(
                "TokenExpired",
                "The specified access token has expired",
                headers={
                    "WWW-Authenticate": f'Bearer {_REALM}, error="invalid_token", '
                    'error_description="The access token expired"'
                },
            ) from None
        except InvalidToken:
            raise ApiError(
                "BadRequest",
                "Invalid access token",
                status=401,
                headers={"WWW-Authenticate": f'Bearer {_REALM}, error="invalid_token"'},
            ) from None

    @staticmethod
    def visible(client: ApiClient) -> frozenset[str]:
        if not client.products:
            raise ApiError("AccessDenied", f"no footprints are shared with client {client.id!r}")
        return frozenset(client.products)

    # -- events --------------------------------------------------------------------------------

    async def answer_request(
        self, client: ApiClient, event: RequestCreatedEvent, url: str, source: str
    ) -> None:
        """A RequestFulfilled event with the footprints the client may see that match the
        request's criteria, or a RequestRejected event (none, too many, or a failure)."""
        data = event.data
        status = data.status
        known: FootprintStatus | None = STATUSES.get(status.lower()) if status else None

        def ns(moment: datetime | None) -> int | None:
            return None if moment is None else ns_from_datetime(moment)

        filters = FootprintFilter(
            product_ids=tuple(data.productId or ()),
            company_ids=tuple(data.companyId or ()),
            geography=tuple(data.geography or ()),
            classifications=tuple(data.classification or ()),
            valid_on_ns=ns(data.validOn),
            valid_after_ns=ns(data.validAfter),
            valid_before_ns=ns(data.validBefore),
            status=known,
        )
        answer: RequestFulfilledEvent | RequestRejectedEvent
        error: ErrorBody | None = None
        rows: list[FootprintRow] = []
        try:
            if status is None or known is not None:
                page = await self.store.list_footprints(
                    frozenset(client.products), filters, 0, MAX_EVENT_FOOTPRINTS + 1
                )
                rows = list(page.items)
        except Exception:
            log.exception("request event %s of client %s: store failed", event.id, client.id)
            error = ErrorBody(code="InternalError", message="The footprints could not be read")
        if error is None and not rows:
            error = ErrorBody(
                code="NotFound", message="No footprint available to you matches the criteria"
            )
        if error is None and len(rows) > MAX_EVENT_FOOTPRINTS:
            error = ErrorBody(
                code="BadRequest",
                message=f"More than {MAX_EVENT_FOOTPRINTS} footprints match: narrow the "
                "criteria, or page through them with ListFootprints",
            )
        common = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": source,
            "time": iso_from_ns(self.clock.now_ns()),
        }
        if error is None:
            answer = RequestFulfilledEvent.model_validate(
                {
                    **common,
                    "type": FULFILLED,
                    "data": {
                        "requestEventId": event.id,
                        "pfs": [served_footprint(row) for row in rows],
                    },
                }
            )
            what = f"RequestFulfilled ({len(rows)} footprints) for {event.id!r}"
        else:
            answer = RequestRejectedEvent.model_validate(
                {**common, "type": REJECTED, "data": {"requestEventId": event.id, "error": error}}
            )
            what = f"RequestRejected ({error.code}) for {event.id!r}"
        await self.sender.deliver(url, answer, what)

    def notify_published(self, rows: Sequence[FootprintRow]) -> int:
        """Send a PublishedEvent to each client with an events endpoint that may see some of
        ``rows`` (their ids only). Returns the events queued."""
        queued = 0
        for client_id, url in self.recipient_endpoints.items():
            client = self.clients.get(client_id)
            if client is None:
                continue
            ids = [row.id for row in rows if row.product_id in client.products]
            if not ids:
                continue
            event = PublishedEvent.model_validate(
                {
                    "type": PUBLISHED,
                    "specversion": "1.0",
                    "id": str(uuid.uuid4()),
                    "source": self.public_source,
                    "time": iso_from_ns(self.clock.now_ns()),
                    "data": {"pfIds": ids},
                }
            )
            self.sender.send(url, event, f"Published ({len(ids)} footprints) for {client_id}")
            queued += 1
        return queued


def _host(request: Request) -> str:
    host = request.headers.get("host", "")
    if not _HOST.match(host):
        raise ApiError("BadRequest", "the Host header is missing or not a host name")
    return host


async def _read_capped(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError("BadRequest", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise ValueError(f"{scheme!r} authentication: use Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("the Basic credentials are not base64 of 'id:secret'") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        raise ValueError("the Basic credentials are not 'id:secret'")
    return client_id, secret


def create_app(
    api: HubApiConfig,
    store: HubStore,
    *,
    clock: Clock | None = None,
    token_key: bytes | None = None,
    callback_verify: ssl.SSLContext | str | bool = True,
    retry: RetryPolicy | None = None,
    recipient_credentials: Mapping[str, RecipientCredentials] | None = None,
    recipient_endpoints: Mapping[str, str] | None = None,
    public_url: str | None = None,
) -> FastAPI:
    """The API over ``store`` for the clients of ``api``.

    ``token_key``: key material shared by every hub instance behind one load balancer
    (default: ``$EDGE_HUB_TOKEN_KEY`` / ``$EDGE_HUB_TOKEN_KEY_FILE``; without either, a random
    key: tokens then work on this instance only, until it restarts — logged as a WARNING).
    ``callback_verify``: how events to recipients check their certificates (httpx ``verify``).
    ``recipient_credentials``: per recipient origin (``https://host:port``), the client
    credentials to authenticate there; ``recipient_endpoints``: per client id, its events URL
    for PublishedEvent notifications. ``public_url``: this API's base URL as recipients know
    it (the ``source`` of PublishedEvents). Raises ConfigError for an unusable secret hash.
    """
    problems = [
        f"api.clients[{index}].secret_hash: {problem}"
        for index, client in enumerate(api.clients)
        if (problem := secret_hash_problem(client.secret_hash)) is not None
    ]
    if problems:
        raise ConfigError(problems)
    key = token_key if token_key is not None else token_key_from_environment()
    if key is None:
        log.warning(
            "API tokens: no key configured (%s): a random one is used, so tokens are valid on "
            "this hub instance only and until it restarts; give every instance behind one "
            "load balancer the same key",
            TOKEN_KEY_ENV,
        )
        key = uuid.uuid4().bytes + uuid.uuid4().bytes
    sender = EventSender(verify=callback_verify, retry=retry, credentials=recipient_credentials)
    hub = HubApi(
        api,
        store,
        clock=clock or SystemClock(),
        token_key=key,
        sender=sender,
        recipient_endpoints=recipient_endpoints or {},
        public_url=public_url or f"https://{api.host}:{api.port}",
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await sender.close()

    app = FastAPI(
        title="edge-agent hub: PACT 3.0 API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.hub_api = hub
    install_error_handlers(app)

    @app.middleware("http")
    async def https_only(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.scheme != "https":
            return JSONResponse(
                {"code": "BadRequest", "message": "this API is served over HTTPS only"},
                status_code=400,
            )
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.post("/auth/token")
    async def authenticate(request: Request) -> JSONResponse:
        header = request.headers.get("authorization")
        basic = {"WWW-Authenticate": f"Basic {_REALM}"}
        if _media_type(request) != "application/x-www-form-urlencoded":
            raise OAuthError(
                "invalid_request", "the body must be application/x-www-form-urlencoded"
            )
        try:
            body = (await _read_capped(request, MAX_FORM_BYTES)).decode("utf-8")
        except (ApiError, UnicodeDecodeError):
            raise OAuthError("invalid_request", "the body is not a small UTF-8 form") from None
        form: dict[str, str] = {}
        for name, value in parse_qsl(body, keep_blank_values=False):
            if name in form:
                raise OAuthError("invalid_request", f"parameter {name!r} given more than once")
            form[name] = value
        grant = form.get("grant_type")
        if grant is None:
            raise OAuthError("invalid_request", "grant_type is missing")
        if grant != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type", f"grant_type {grant!r}: only client_credentials"
            )
        if header and "client_secret" in form:
            raise OAuthError(
                "invalid_request", "credentials in both the Authorization header and the body"
            )
        if header:
            try:
                client_id, secret = _basic_credentials(header)
            except ValueError as exc:
                raise OAuthError("invalid_client", str(exc), status=401, headers=basic) from None
            if form.get("client_id", client_id) != client_id:
                raise OAuthError("invalid_request", "client_id differs from the Basic user name")
        elif "client_id" in form:
            client_id, secret = form["client_id"], form.get("client_secret", "")
        else:
            raise OAuthError(
                "invalid_client",
                "client authentication required (HTTP Basic)",
                status=401,
                headers=basic,
            )
        client = await hub.verify(client_id, secret)
        if client is None and header and ("%" in client_id + secret or "+" in client_id + secret):
            # RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            client = await hub.verify(unquote_plus(client_id), unquote_plus(secret))
        if client is None:
            log.info("token refused for client id %r", client_id[:128])
            raise OAuthError(
                "invalid_client",
                "Authentication failed",
                status=401,
                headers=basic if header else None,
            )
        issued = hub.tokens.issue(client)
        body_out = TokenResponse(access_token=issued.access_token, expires_in=issued.expires_in)
        return JSONResponse(body_out.model_dump(mode="json"), headers=NO_STORE)

    @app.get("/3/footprints")
    async def list_footprints(request: Request) -> JSONResponse:
        client = hub.bearer(request)
        visible = hub.visible(client)
        query = parse_list_query(request.query_params.multi_items())
        host = _host(request)
        rows, following = await fetch_page(store, visible, query)
        headers: dict[str, str] = {}
        if following is not None:
            base = f"https://{host}{request.scope.get('root_path', '')}/3/footprints"
            headers["Link"] = f'<{query.next_link(base, following)}>; rel="next"'
        body = FootprintListResponse(data=[served_footprint(row) for row in rows])
        return JSONResponse(body.model_dump(mode="json"), headers=headers)

    @app.get("/3/footprints/{pf_id}")
    async def get_footprint(pf_id: str, request: Request) -> JSONResponse:
        client = hub.bearer(request)
        visible = hub.visible(client)
        try:
            wanted = str(uuid.UUID(pf_id))
        except ValueError:
            raise ApiError("BadRequest", f"id {pf_id!r} is not a UUID") from None
        row = await store.footprint(wanted)
        if row is None or row.product_id not in visible:
            raise ApiError("NotFound", f"The specified footprint {wanted} does not exist")
        body = FootprintResponse(data=served_footprint(row))
        return JSONResponse(body.model_dump(mode="json"))

    @app.post("/3/events")
    async def events(request: Request) -> Response:
        client = hub.bearer(request)
        if any(name.lower() == "ce-specversion" for name in request.headers):
            raise ApiError(
                "NotImplemented",
                "CloudEvents binary content mode is not supported: send structured mode "
                "(application/cloudevents+json)",
            )
        media = _media_type(request)
        if media == "application/cloudevents-batch+json":
            raise ApiError("NotImplemented", "CloudEvents batch mode is not supported")
        if media not in ("application/cloudevents+json", "application/json"):
            raise ApiError(
                "BadRequest", "content-type must be application/cloudevents+json (structured mode)"
            )
        raw = await _read_capped(request, MAX_EVENT_BYTES)
        try:
            document = json.loads(raw)
        except ValueError:
            raise ApiError("BadRequest", "the body is not JSON") from None
        if not isinstance(document, dict):
            raise ApiError("BadRequest", "the body is not a CloudEvent (a JSON object)")
        event_type = document.get("type")
        model = EVENT_MODELS.get(event_type) if isinstance(event_type, str) else None
        if model is None:
            raise ApiError(
                "NotImplemented" if isinstance(event_type, str) else "BadRequest",
                f"event type {event_type!r} is not one of PACT 3.0's: {', '.join(EVENT_MODELS)}",
            )
        try:
            event = model.model_validate(document)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(event)'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ApiError("BadRequest", f"invalid {event_type}: {details}") from None
        if isinstance(event, RequestCreatedEvent):
            hub.visible(client)
            try:
                url = callback_url(event.source)
            except ValueError as exc:
                raise ApiError("BadRequest", str(exc)) from None
            if hub.sender.first_time(client.id, event.source, event.id):
                source = f"//{_host(request)}{request.scope.get('root_path', '')}/3/events"
                log.info("request event %r of client %s: answering to %s", event.id, client.id, url)
                hub.sender.spawn(
                    hub.answer_request(client, event, url, source), f"answer {event.id}"
                )
            else:
                log.info("request event %r of client %s again: answered once", event.id, client.id)
        elif isinstance(event, PublishedEvent):
            log.info(
                "client %s notified %d published footprints (this hub only serves its own)",
                client.id,
                len(event.data.pfIds),
            )
        else:
            log.warning(
                "client %s sent %s for request %r: this hub sends no requests",
                client.id,
                event.type,
                getattr(event.data, "requestEventId", None),
            )
        return Response(status_code=200)

    return app
