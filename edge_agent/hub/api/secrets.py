"""Client secrets as the configuration stores them: ``scrypt$<n>$<r>$<p>$<salt>$<hash>``.

``edge-agent hub hash-secret`` prints :func:`hash_secret` of a secret read from stdin; the hub
keeps only the hash (``api.clients[].secret_hash``) and checks a presented secret with
:func:`verify_secret` (constant-time comparison). Salt and hash are standard base64 (RFC 4648
§4). The cost parameters travel with each hash, so they can be raised later without
invalidating the hashes already issued; :func:`secret_hash_problem` bounds them so that a
mistyped configuration cannot make every token request allocate gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = ["hash_secret", "secret_hash_problem", "verify_secret"]

SCHEME = "scrypt"
# 2^15 x 8 x 128 bytes = 32 MiB and about 0.1 s per check on a server core: the cost an
# attacker pays per guess of a leaked hash, while a client asks for a token once an hour.
DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32

_MIN_LOG2_N, _MAX_LOG2_N = 10, 20
_MAX_MEMORY = 256 * 1024 * 1024  # bytes scrypt may use for one check


@dataclass(frozen=True, slots=True)
class _Params:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.encode("ascii"), validate=True)


def _memory(n: int, r: int, p: int) -> int:
    # OpenSSL's EVP_PBE_scrypt needs 128 r (N + 2) bytes for V plus 128 r p for B.
    return 128 * r * (n + 2) + 128 * r * p


def _scrypt(secret: str, params: _Params) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=params.salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=_memory(params.n, params.r, params.p) + 1024 * 1024,
        dklen=len(params.digest),
    )


def _parse(stored: str) -> _Params:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("expected scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>")
    try:
        n, r, p = (int(part) for part in parts[1:4])
    except ValueError:
        raise ValueError("n, r and p must be integers") from None
    if n & (n - 1) or not 2**_MIN_LOG2_N <= n <= 2**_MAX_LOG2_N:
        raise ValueError(f"n {n} must be a power of 2 from 2^{_MIN_LOG2_N} to 2^{_MAX_LOG2_N}")
    if not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"r {r} must be 1..32 and p {p} 1..16")
    if _memory(n, r, p) > _MAX_MEMORY:
        raise ValueError(f"n x r needs more than {_MAX_MEMORY // 2**20} MiB per check")
    try:
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (binascii.Error, ValueError):
        raise ValueError("salt and hash must be base64") from None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("salt needs 8 bytes or more, the hash 16 to 64 bytes")
    return _Params(n, r, p, salt, digest)


def secret_hash_problem(stored: str) -> str | None:
    """Why ``stored`` is not a usable hash (None when it is): for configuration checks."""
    try:
        _parse(stored)
    except ValueError as exc:
        return str(exc)
    return None


def hash_secret(secret: str) -> str:
    """The configuration's form of a client secret, with a fresh random salt."""
    if not secret:
        raise ValueError("the client secret is empty")
    params = _Params(DEFAULT_N, DEFAULT_R, DEFAULT_P, os.urandom(SALT_BYTES), bytes(HASH_BYTES))
    digest = _scrypt(secret, params)
    return f"{SCHEME}${params.n}${params.r}${params.p}${_b64(params.salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` hashes to ``stored``; False for a wrong secret or an unusable
    hash (which :func:`secret_hash_problem` reports at start-up)."""
    try:
        params = _parse(stored)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(secret, params), params.digest)


# Checked against when the client id is unknown, so that the answer takes as long as for a
# known client with a wrong secret (no way to learn which client ids exist by timing).
DUMMY_HASH = f"{SCHEME}${DEFAULT_N}${DEFAULT_R}${DEFAULT_P}${_b64(bytes(SALT_BYTES))}${_b64(bytes(HASH_BYTES))}"
