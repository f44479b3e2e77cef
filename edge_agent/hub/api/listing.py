"""ListFootprints: its query string, and pages that stay put while footprints arrive.

Filters (PACT 3.0 ``components.parameters``): ``productId``, ``companyId``, ``geography``,
``classification`` (each repeatable: any value matches), ``validOn``, ``validAfter``,
``validBefore``, ``status``; different filters must all match. Parameter names are matched
without regard to case (the spec's own example writes ``productid`` and ``validon``). A
``status`` other than Active/Deprecated matches nothing (the Conformance Tool expects an empty
list, not an error). Unknown parameters are refused: ignoring one would answer with more than
was asked for — ``$filter`` (the OData filter of 2.x, deprecated in 3.0) and ``x-…`` criteria
as NotImplemented, anything else as BadRequest.

Pagination: the ``Link: <…>; rel="next"`` target carries the request's own filters and limit
and a ``cursor``: the position after the last footprint served (its id and ``created`` time)
with the offset where it was. Footprints are listed newest first; a footprint stored between
two page requests, or one deprecated under a ``status`` filter, shifts offsets, so the next page
starts *after that footprint* wherever it now is (found by bisection on ``created``), not at a
stale offset: no footprint is skipped or served twice. A cursor never expires (the spec asks
for 180 s at least) and reveals nothing: the visibility of the client is applied on each call.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from edge_agent.domain import ns_from_datetime
from edge_agent.hub.api.errors import ApiError
from edge_agent.hub.api.models import parse_pact_time
from edge_agent.hub.model import FootprintFilter, FootprintRow, FootprintStatus, HubStore

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "ListQuery", "Position", "fetch_page", "parse_list_query"]

DEFAULT_PAGE = 100  # footprints per page when no limit is given
MAX_PAGE = 1000  # the most served in one page, whatever the limit (PACT: MAY return fewer)
_SCAN_TIES = 1000  # footprints with the same created time searched for a cursor's anchor

_LISTS = {
    "productid": "productId",
    "companyid": "companyId",
    "geography": "geography",
    "classification": "classification",
}
_TIMES = {"validon": "validOn", "validafter": "validAfter", "validbefore": "validBefore"}
_SINGLE = {"status": "status", "limit": "limit", "cursor": "cursor", "offset": "offset"}
STATUSES: dict[str, FootprintStatus] = {"active": "Active", "deprecated": "Deprecated"}


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    anchor_id: str | None = None  # the last footprint of the previous page
    anchor_created_ns: int = 0


@dataclass(frozen=True, slots=True)
class ListQuery:
    filters: FootprintFilter
    matches_nothing: bool  # a status no footprint can have
    limit: int | None
    position: Position
    # the filter parameters as given, in order (repeated in the next-page link)
    params: tuple[tuple[str, str], ...]

    def next_link(self, base_url: str, position: Position) -> str:
        pairs = list(self.params)
        if self.limit is not None:
            pairs.append(("limit", str(self.limit)))
        pairs.append(("cursor", encode_cursor(position)))
        return f"{base_url}?{urlencode(pairs, safe=':')}"


def encode_cursor(position: Position) -> str:
    value = [position.offset, position.anchor_id, position.anchor_created_ns]
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        offset, anchor, created = json.loads(raw)
        if not isinstance(anchor, str) or isinstance(offset, bool) or offset < 0:
            raise ValueError
        return Position(int(offset), anchor, int(created))
    except (binascii.Error, ValueError, TypeError):
        raise ApiError("BadRequest", "cursor: not a pagination cursor of this host") from None


def _positive(name: str, text: str, *, allow_zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < (0 if allow_zero else 1):
        what = "a non-negative" if allow_zero else "a positive"
        raise ApiError("BadRequest", f"{name}: {text!r} is not {what} integer")
    return value


def parse_list_query(items: Sequence[tuple[str, str]]) -> ListQuery:
    """The query string's (name, value) pairs, in order; raises ApiError naming the parameter."""
    lists: dict[str, list[str]] = {}
    times: dict[str, int] = {}
    single: dict[str, str] = {}
    params: list[tuple[str, str]] = []
    for raw_name, value in items:
        name = raw_name.lower()
        if name == "$filter":
            raise ApiError(
                "NotImplemented", "$filter (OData, PACT 2.x) is not supported: use the 3.0 filters"
            )
        if name.startswith("x-"):
            raise ApiError("NotImplemented", f"{raw_name}: this host offers no extra criteria")
        canonical = _LISTS.get(name) or _TIMES.get(name) or _SINGLE.get(name)
        if canonical is None:
            raise ApiError(
                "BadRequest",
                f"{raw_name}: unknown parameter (filters: productId, companyId, geography, "
                "classification, validOn, validAfter, validBefore, status; and limit)",
            )
        if not value.strip():
            raise ApiError("BadRequest", f"{canonical}: empty value")
        if name in _LISTS:
            # Not checked for the URN syntax: a value no footprint has matches nothing (the
            # Conformance Tool's test 29 mixes a real companyId with random non-URN ones).
            lists.setdefault(canonical, []).append(value)
            params.append((canonical, value))
            continue
        if canonical in times or canonical in single:
            raise ApiError("BadRequest", f"{canonical}: given more than once")
        if name in _TIMES:
            try:
                times[canonical] = ns_from_datetime(parse_pact_time(value))
            except ValueError as exc:
                raise ApiError("BadRequest", f"{canonical}: {exc}") from None
            params.append((canonical, value))
            continue
        single[canonical] = value
        if canonical == "status":
            params.append((canonical, value))
    status = single.get("status")
    known_status = STATUSES.get(status.lower()) if status is not None else None
    limit = _positive("limit", single["limit"]) if "limit" in single else None
    if "cursor" in single and "offset" in single:
        raise ApiError("BadRequest", "give cursor or offset, not both")
    if "cursor" in single:
        position = decode_cursor(single["cursor"])
    elif "offset" in single:
        position = Position(_positive("offset", single["offset"], allow_zero=True))
    else:
        position = Position(0)
    filters = FootprintFilter(
        product_ids=tuple(lists.get("productId", ())),
        company_ids=tuple(lists.get("companyId", ())),
        geography=tuple(lists.get("geography", ())),
        classifications=tuple(lists.get("classification", ())),
        valid_on_ns=times.get("validOn"),
        valid_after_ns=times.get("validAfter"),
        valid_before_ns=times.get("validBefore"),
        status=known_status,
    )
    return ListQuery(
        filters=filters,
        matches_nothing=status is not None and known_status is None,
        limit=limit,
        position=position,
        params=tuple(params),
    )


async def _created_at(
    store: HubStore, visible: frozenset[str], filters: FootprintFilter, index: int
) -> int:
    page = await store.list_footprints(visible, filters, index, 1)
    return page.items[0].created_ns if page.items else -1


async def _first_index(
    store: HubStore,
    visible: frozenset[str],
    filters: FootprintFilter,
    total: int,
    older: int,
    *,
    strictly: bool,
) -> int:
    """The first index whose created time is below ``older`` (``strictly``) or at most it
    (the list is sorted newest first, so both are monotone)."""
    low, high = 0, total
    while low < high:
        middle = (low + high) // 2
        created = await _created_at(store, visible, filters, middle)
        below = created < older if strictly else created <= older
        if below:
            high = middle
        else:
            low = middle + 1
    return low


async def _locate(
    store: HubStore,
    visible: frozenset[str],
    filters: FootprintFilter,
    position: Position,
    total: int,
) -> int:
    """Where the page after ``position``'s anchor starts in the list as it is now."""
    created = position.anchor_created_ns
    ties_start = await _first_index(store, visible, filters, total, created, strictly=False)
    ties_end = await _first_index(store, visible, filters, total, created, strictly=True)
    if ties_end > ties_start:
        ties = await store.list_footprints(
            visible, filters, ties_start, min(ties_end - ties_start, _SCAN_TIES)
        )
        for index, row in enumerate(ties.items):
            if row.id == position.anchor_id:
                return ties_start + index + 1
    # The anchor is gone from this list (deprecated under a status filter): continue with the
    # footprints of its created time, serving one again rather than skipping one.
    return ties_start


async def fetch_page(
    store: HubStore, visible: frozenset[str], query: ListQuery
) -> tuple[list[FootprintRow], Position | None]:
    """One page of the client's footprints and the position of the next (None: last page)."""
    if query.matches_nothing:
        return [], None
    size = min(query.limit or DEFAULT_PAGE, MAX_PAGE)
    position = query.position
    start = position.offset
    if position.anchor_id is None or start == 0:
        page = await store.list_footprints(visible, query.filters, start, size)
        rows = list(page.items)
    else:
        # Usually nothing moved: the anchor is still just before the offset.
        page = await store.list_footprints(visible, query.filters, start - 1, size + 1)
        rows = list(page.items)
        if rows and rows[0].id == position.anchor_id:
            rows = rows[1:]
        else:
            start = await _locate(store, visible, query.filters, position, page.total)
            page = await store.list_footprints(visible, query.filters, start, size)
            rows = list(page.items)
    rows = rows[:size]
    end = start + len(rows)
    if not rows or end >= page.total:
        return rows, None
    last = rows[-1]
    return rows, Position(end, last.id, last.created_ns)
