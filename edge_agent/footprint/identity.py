"""Footprint ids and product URNs.

A footprint's ``id`` is derived from what identifies it (format, site, lot or product and
period, version), never drawn at random: exporting the same records again gives the same id, so
a recipient sees a repeat, not a new footprint. PACT's PfId is a UUID version 4 (random); ours
has that layout — version 4, RFC 9562 variant — over the first 128 bits of a SHA-256 of those
parts, which a validator cannot tell from a random one and which never collides with another
footprint's in practice.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from urllib.parse import quote

__all__ = ["URN_PATTERN", "batch_urn", "derived_uuid", "supplier_product_urn", "urn_part"]

# RFC 8141: "urn:" NID ":" NSS, NSS = pchar *(pchar / "/"), without the optional r/q/f parts.
URN_PATTERN = re.compile(
    r"^[uU][rR][nN]:[A-Za-z0-9][A-Za-z0-9-]{0,30}[A-Za-z0-9]:"
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$"
)
# pchar of RFC 3986 without ":" (the separator of urn:pact parts) — everything else is
# percent-encoded as UTF-8, so an MES id with spaces or "#" still gives a valid URN.
_URN_SAFE = "-._~!$&'()*+,;=@"

_ID_SEED = "edge-agent footprint"


def derived_uuid(*parts: str) -> str:
    """A UUID (version 4 layout) that depends only on ``parts``."""
    seed = "\x1f".join((_ID_SEED, *parts)).encode("utf-8")
    return str(uuid.UUID(bytes=hashlib.sha256(seed).digest()[:16], version=4))


def urn_part(text: str) -> str:
    """``text`` as one part of a URN's namespace-specific string."""
    return quote(text, safe=_URN_SAFE)


def supplier_product_urn(domain: str, product_id: str) -> str:
    """PACT 3.0's URN for an id the supplier itself assigned: urn:pact:<domain>:supplier-id:<id>."""
    return f"urn:pact:{domain}:supplier-id:{urn_part(product_id)}"


def batch_urn(domain: str, site_id: str, lot_id: str) -> str:
    """The lot as a batch of the product: urn:pact:<domain>:batch-id:<site>:<lot>."""
    return f"urn:pact:{domain}:batch-id:{urn_part(site_id)}:{urn_part(lot_id)}"
