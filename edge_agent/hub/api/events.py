"""Events out: the answers to RequestCreated events and PublishedEvent notifications, sent to
data recipients' ``/3/events`` endpoints in the background.

An event is POSTed as a structured-mode CloudEvent (``application/cloudevents+json``); a 2xx
answer delivers it. Anything else — refused connection, timeout, a non-2xx status — is retried
with randomised exponential back-off (PACT: "SHOULD retry ... using exponential backoff",
abandoned after 72 hours at most) up to :class:`RetryPolicy` ``attempts``, then given up with a
WARNING naming the event and the recipient. Nothing here ever blocks a request: the request that
caused an event has been answered before the first attempt. The queue is in memory: events not
yet delivered when the process stops are lost (the recipient can ask again, or list).

PACT wants the data owner to authenticate with the recipient's host (OAuth 2 client
credentials at the recipient's token endpoint). When :class:`RecipientCredentials` are given
for the recipient's origin, a token is fetched (OpenID discovery at
``/.well-known/openid-configuration``, else ``/auth/token``), cached until it expires and sent
as ``Authorization: Bearer``; otherwise the event is sent without one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel

__all__ = [
    "EventSender",
    "RecipientCredentials",
    "RetryPolicy",
    "callback_url",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 20  # in all, the first included
    first_delay_s: float = 2.0  # before the second attempt; doubled after each failure
    max_delay_s: float = 3600.0
    timeout_s: float = 15.0  # per attempt

    def delay_s(self, failures: int) -> float:
        """Delay after the ``failures``-th failed attempt: exponential, randomised by ±25 %
        so that recipients recovering from an outage are not hit in step."""
        base = min(self.first_delay_s * 2.0 ** (failures - 1), self.max_delay_s)
        return base * random.uniform(0.75, 1.25)


@dataclass(frozen=True, slots=True)
class RecipientCredentials:
    """OAuth 2 client credentials this hub uses at a recipient's host."""

    client_id: str
    client_secret: str


def callback_url(source: str) -> str:
    """The ``/3/events`` URL of the host named by an event's ``source``.

    PACT writes ``source`` as ``//<hostname>/<subpath>`` (the requester's events endpoint,
    e.g. ``//api.recipient.org/3/events``); an ``https://`` URL is read the same way. A source
    that does not end in ``/3/events`` is taken as the host's base URL and ``/3/events``
    appended (as the PACT Conformance Tool expects). HTTPS only, no user info: anything else
    is refused before the event is accepted (PACT: "MUST validate the value of source")."""
    text = source.strip()
    parts = urlsplit(text)
    if text.startswith("//") or parts.scheme.lower() == "https":
        scheme = "https"
    else:
        raise ValueError(
            f"source {source!r} is not an https URL or //host/path: events are answered over "
            "HTTPS only"
        )
    if not parts.hostname:
        raise ValueError(f"source {source!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"source {source!r}: user information is not accepted")
    if parts.fragment:
        raise ValueError(f"source {source!r}: a fragment is not accepted")
    try:
        parts.port  # noqa: B018 (validates it)
    except ValueError:
        raise ValueError(f"source {source!r}: bad port") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/3/events"):
        path += "/3/events"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class EventSender:
    """Background delivery of events (see the module's text)."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        retry: RetryPolicy | None = None,
        credentials: Mapping[str, RecipientCredentials] | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._verify = verify
        self._credentials = {origin.rstrip("/"): c for origin, c in (credentials or {}).items()}
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tokens: dict[str, tuple[str, float]] = {}  # origin -> (token, monotonic expiry)
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.delivered = 0
        self.abandoned = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify, timeout=self.retry.timeout_s, follow_redirects=False
            )
        return self._client

    def first_time(self, *key: str, remember: int = 10_000) -> bool:
        """False when this key was seen before (a re-sent request event): one answer each."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > remember:
            self._seen.popitem(last=False)
        return True

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event task %s failed", task.get_name(), exc_info=task.exception())

    def send(self, url: str, event: BaseModel, what: str) -> asyncio.Task[Any]:
        """Deliver ``event`` to ``url`` in the background (returns the task, for tests)."""
        return self.spawn(self.deliver(url, event, what), f"event {what} -> {url}")

    async def deliver(self, url: str, event: BaseModel, what: str) -> bool:
        """POST ``event`` until a 2xx answer or the attempts are spent (True: delivered)."""
        body = json.dumps(event.model_dump(mode="json", exclude_none=True)).encode("utf-8")
        policy = self.retry
        problem = ""
        for attempt in range(1, policy.attempts + 1):
            try:
                headers = {"Content-Type": CONTENT_TYPE}
                token = await self._token(_origin(url))
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                response = await self._http().post(url, content=body, headers=headers)
                if response.is_success:
                    self.delivered += 1
                    log.info("event %s delivered to %s (attempt %d)", what, url, attempt)
                    return True
                if response.status_code == 401:
                    self._tokens.pop(_origin(url), None)
                problem = f"HTTP {response.status_code} {response.text[:200]!r}"
            except (httpx.HTTPError, OSError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < policy.attempts:
                delay = policy.delay_s(attempt)
                log.info(
                    "event %s to %s: attempt %d failed (%s); next in %.1f s",
                    what, url, attempt, problem, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
        self.abandoned += 1
        log.warning(
            "event %s to %s abandoned after %d attempts: %s", what, url, policy.attempts, problem
        )
        return False

    async def _token(self, origin: str) -> str | None:
        credentials = self._credentials.get(origin)
        if credentials is None:
            return None
        cached = self._tokens.get(origin)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        endpoint = f"{origin}/auth/token"
        try:
            found = await self._http().get(f"{origin}/.well-known/openid-configuration")
            if found.is_success:
                endpoint = str(found.json().get("token_endpoint") or endpoint)
        except (httpx.HTTPError, ValueError):
            pass
        response = await self._http().post(
            endpoint,
            data={"grant_type": "client_credentials"},
            auth=(credentials.client_id, credentials.client_secret),
            headers={"Accept": "application/json"},
        )
        if not response.is_success:
            raise ValueError(f"token request at {endpoint}: HTTP {response.status_code}")
        answer = response.json()
        token = str(answer["access_token"])
        lifetime = float(answer.get("expires_in") or 300)
        self._tokens[origin] = (token, time.monotonic() + max(lifetime - 30, lifetime / 2))
        return token

    async def drain(self) -> None:
        """Wait until every event under way is delivered or abandoned."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
