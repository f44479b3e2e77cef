"""Access tokens: self-contained, HMAC-SHA256 signed, verifiable by every hub instance.

    eah1.<payload>.<signature>       payload = base64url(JSON {c, i, e, f, n})

``c`` is the client id, ``i``/``e`` issue and expiry time (epoch seconds), ``f`` a fingerprint
of the client's current ``secret_hash`` and ``n`` a random nonce. Why signed rather than
stored: several hub instances may serve one database behind a load balancer, and a token one
instance issued must work on the next request, whichever instance gets it. A signed token needs
no database write per token and no shared session table, only the same key on every instance
(:func:`token_key_from_environment`). Revocation without a token table: removing a client from
the configuration, or giving it a new secret (a new ``secret_hash``, so a new fingerprint),
invalidates its tokens at once on every instance that has the new configuration; changing the
key invalidates all tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_agent.clock import Clock
from edge_agent.domain import NS_PER_S
from edge_agent.errors import ConfigError
from edge_agent.hub.config import ApiClient

__all__ = [
    "TOKEN_KEY_ENV",
    "TOKEN_KEY_FILE_ENV",
    "InvalidToken",
    "TokenExpired",
    "TokenService",
    "derive_token_key",
    "token_key_from_environment",
]

log = logging.getLogger(__name__)

PREFIX = "eah1"
TOKEN_KEY_ENV = "EDGE_HUB_TOKEN_KEY"
TOKEN_KEY_FILE_ENV = "EDGE_HUB_TOKEN_KEY_FILE"
_KEY_CONTEXT = b"edge-agent hub: PACT API access tokens, v1"
_MIN_SECRET = 16  # bytes of configured key material


class InvalidToken(Exception):
    """Not a token this hub issued (or for a client that is gone or has a new secret)."""


class TokenExpired(Exception):
    """A valid token past its expiry."""


def derive_token_key(secret: bytes) -> bytes:
    """The signing key from configured key material (any length of 16 bytes or more)."""
    if len(secret) < _MIN_SECRET:
        raise ValueError(f"the token key needs at least {_MIN_SECRET} bytes")
    return hmac.new(secret, _KEY_CONTEXT, hashlib.sha256).digest()


def token_key_from_environment(environ: Mapping[str, str] | None = None) -> bytes | None:
    """Key material from ``$EDGE_HUB_TOKEN_KEY`` or the file named by
    ``$EDGE_HUB_TOKEN_KEY_FILE`` (None when neither is set). Every instance behind one load
    balancer needs the same value."""
    env = os.environ if environ is None else environ
    value = env.get(TOKEN_KEY_ENV)
    path = env.get(TOKEN_KEY_FILE_ENV)
    if value and path:
        raise ConfigError([f"set {TOKEN_KEY_ENV} or {TOKEN_KEY_FILE_ENV}, not both"])
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                [f"{TOKEN_KEY_FILE_ENV}: cannot read {path} ({exc.strerror})"]
            ) from exc
    if not value:
        return None
    if len(value.encode()) < _MIN_SECRET:
        raise ConfigError(
            [f"{TOKEN_KEY_ENV}: the token key needs at least {_MIN_SECRET} characters"]
        )
    return value.encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret_fingerprint(client: ApiClient) -> str:
    return _b64(hashlib.sha256(client.secret_hash.encode("utf-8")).digest()[:9])


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int


class TokenService:
    def __init__(self, key: bytes, clock: Clock, ttl_s: int) -> None:
        self._key = key
        self._clock = clock
        self.ttl_s = ttl_s

    def _now_s(self) -> int:
        return self._clock.now_ns() // NS_PER_S

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, f"{PREFIX}.{payload}".encode("ascii"), hashlib.sha256)
        return _b64(digest.digest())

    def issue(self, client: ApiClient) -> IssuedToken:
        now = self._now_s()
        claims = {
            "c": client.id,
            "i": now,
            "e": now + self.ttl_s,
            "f": secret_fingerprint(client),
            "n": secrets.token_urlsafe(9),
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        return IssuedToken(f"{PREFIX}.{payload}.{self._sign(payload)}", self.ttl_s)

    def check(self, token: str, clients: Mapping[str, ApiClient]) -> ApiClient:
        """The client the token was issued to; raises InvalidToken or TokenExpired."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise InvalidToken("not an access token of this host")
        payload, signature = parts[1], parts[2]
        if not hmac.compare_digest(self._sign(payload), signature):
            raise InvalidToken("bad signature")
        try:
            claims = json.loads(_unb64(payload))
            client_id, expiry, fingerprint = str(claims["c"]), int(claims["e"]), claims["f"]
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise InvalidToken("unreadable claims") from None
        if self._now_s() >= expiry:
            raise TokenExpired
        client = clients.get(client_id)
        if client is None or not hmac.compare_digest(str(fingerprint), secret_fingerprint(client)):
            raise InvalidToken("client removed or given a new secret")
        return client
