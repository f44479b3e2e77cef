"""OPC UA node references from the configuration (pure).

``nsu=<namespace URI>;s=<id>`` is preferred to ``ns=<index>;s=<id>``: a server may assign
namespace indexes in a different order after a restart or an update, and a stored index then
silently points at another node. The URI is looked up in the server's NamespaceArray after
every (re)connect. Browse paths (``/Objects/2:Plant/2:Laser``) are resolved once per session.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.errors import ConfigError

_NSU = re.compile(r"^nsu=(?P<uri>[^;]+);(?P<kind>[isgb])=(?P<id>.+)$")
_NS = re.compile(r"^ns=(?P<index>\d+);(?P<kind>[isgb])=(?P<id>.+)$")
_PLAIN = re.compile(r"^(?P<kind>[isgb])=(?P<id>.+)$")


@dataclass(frozen=True, slots=True)
class NodeRef:
    """Either an id (namespace by URI or index) or a browse path."""

    kind: str = "s"  # i numeric, s string, g guid, b opaque
    identifier: str = ""
    namespace_uri: str | None = None
    namespace_index: int | None = None
    browse_path: tuple[str, ...] = ()

    def node_id_string(self, namespace_array: Sequence[str]) -> str:
        """The ``ns=<index>;<kind>=<id>`` form for this session's namespace array."""
        if self.namespace_uri is not None:
            try:
                index = list(namespace_array).index(self.namespace_uri)
            except ValueError:
                raise LookupError(
                    f"namespace {self.namespace_uri!r} is not on the server "
                    f"(it has: {', '.join(namespace_array)})"
                ) from None
        else:
            index = self.namespace_index or 0
        return f"ns={index};{self.kind}={self.identifier}"


def parse_node(text: str) -> NodeRef:
    text = text.strip()
    if text.startswith("/"):
        parts = tuple(part for part in text.split("/") if part)
        if not parts:
            raise ConfigError([f"node {text!r}: an empty browse path"])
        return NodeRef(browse_path=parts)
    for pattern in (_NSU, _NS, _PLAIN):
        match = pattern.match(text)
        if match:
            groups = match.groupdict()
            return NodeRef(
                kind=groups["kind"],
                identifier=groups["id"],
                namespace_uri=groups.get("uri"),
                namespace_index=int(groups["index"]) if groups.get("index") else None,
            )
    raise ConfigError(
        [
            f"node {text!r} is not a node id: expected 'nsu=<uri>;s=<id>', 'ns=<index>;i=<id>' "
            "or a browse path '/Objects/2:Folder/2:Variable'"
        ]
    )


# A server clock this far ahead of ours is wrong, not early.
MAX_CLOCK_AHEAD_NS = 1_000_000_000


def reading_timestamp_ns(
    source_ns: int | None,
    *,
    now_ns: int,
    asof_ns: int,
    fresh_ns: int,
    last_emitted_ns: int | None,
) -> int | None:
    """The timestamp of a reading, or ``None`` when it adds nothing since the last one.

    ``asof_ns`` is the latest instant at which the value is known to be current: the Read
    response time, or in subscribe mode ``now_ns`` minus the notification delay. A fresh
    SourceTimestamp (at most ``fresh_ns`` before ``asof_ns``, not ahead of ``now_ns``) is the
    most precise time of the value and is used. An old one means "unchanged since" — or a server
    clock that is off, as a PLC's often is — so the value is stamped ``asof_ns`` instead: a quiet
    counter keeps producing regular readings and a skewed server clock never moves a reading.
    Timestamps of one point only increase, so no reading is emitted twice.
    """
    candidates = []
    if source_ns is not None and asof_ns - fresh_ns <= source_ns <= now_ns + MAX_CLOCK_AHEAD_NS:
        candidates.append(min(source_ns, now_ns))
    candidates.append(asof_ns)
    for ts in candidates:
        if last_emitted_ns is None or ts > last_emitted_ns:
            return ts
    return None
