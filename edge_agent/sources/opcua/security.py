"""OPC UA security checks done before a session is activated: which endpoint matches the
configured policy and mode, whether the server's certificate is one we trust, and how a
refused session is explained to the plant engineer.

asyncua's client checks the server certificate only if a ``certificate_validator`` is set, and
only after CreateSession; pinning is done here instead, against ``trusted_server_certificates``
(a file or a folder), from GetEndpoints — before our signature or any password is sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from asyncua import ua
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge_agent.errors import SourceError, SourceSecurityError, SourceUnavailable

__all__ = [
    "POLICIES",
    "SECURITY_MODES",
    "classify_session_error",
    "first_certificate",
    "load_trusted_certificates",
    "select_endpoint",
    "thumbprint",
    "verify_server_certificate",
]

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
SECURITY_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_NO_SECURITY_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"
# Status codes a server answers ActivateSession with when it refuses the user identity.
_USER_REJECTED = frozenset(
    {"BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected"}
)


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint, the form OPC UA servers and their configuration tools display."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def load_trusted_certificates(path: Path) -> set[bytes]:
    """DER bytes of every certificate in a file or a folder (DER or PEM, several per PEM file)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    trusted: set[bytes] = set()
    for file in files:
        data = file.read_bytes()
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                trusted.update(
                    cert.public_bytes(Encoding.DER)
                    for cert in x509.load_pem_x509_certificates(data)
                )
            else:
                trusted.add(x509.load_der_x509_certificate(data).public_bytes(Encoding.DER))
        except ValueError as exc:
            raise SourceSecurityError(
                f"{file} in trusted_server_certificates is not a certificate ({exc})"
            ) from exc
    return trusted


def first_certificate(chain: bytes) -> bytes:
    """The server's own certificate from what it sends (a certificate, or a chain of
    concatenated DER certificates with the server's own first)."""
    try:
        return x509.load_der_x509_certificate(chain).public_bytes(Encoding.DER)
    except ValueError:
        # DER: SEQUENCE tag 0x30, then a long-form length 0x82 + two bytes for any RSA cert.
        if len(chain) < 4 or chain[0] != 0x30 or chain[1] != 0x82:
            raise SourceSecurityError("the server sent no readable certificate") from None
        length = int.from_bytes(chain[2:4], "big") + 4
        return chain[:length]


def _describe(endpoint: ua.EndpointDescription) -> str:
    policy = endpoint.SecurityPolicyUri.rsplit("#", 1)[-1]
    return f"{policy}/{endpoint.SecurityMode.name.rstrip('_')}"


def select_endpoint(
    endpoints: Sequence[ua.EndpointDescription], policy: str, mode: str
) -> ua.EndpointDescription:
    """The server endpoint offering ``policy``/``mode``, or a SECURITY error listing what the
    server does offer (the usual commissioning mistake is a policy the controller disabled)."""
    uri = POLICIES[policy].URI if policy != "None" else _NO_SECURITY_URI
    wanted = SECURITY_MODES[mode]
    for endpoint in endpoints:
        if endpoint.SecurityPolicyUri == uri and endpoint.SecurityMode == wanted:
            return endpoint
    offered = sorted({_describe(e) for e in endpoints})
    raise SourceSecurityError(
        f"security policy {policy}/{mode} not offered by the server "
        f"(offers: {', '.join(offered) or 'nothing'})"
    )


def verify_server_certificate(server_der: bytes, trusted: set[bytes]) -> None:
    if server_der not in trusted:
        raise SourceSecurityError(
            f"server certificate not trusted (SHA-1 thumbprint {thumbprint(server_der)}; "
            "add it to trusted_server_certificates)"
        )


def classify_session_error(exc: BaseException, url: str, username: str | None) -> SourceError:
    """Our error for a failed CreateSession/ActivateSession: security problems as such."""
    if isinstance(exc, ua.UaStatusCodeError):
        name = type(exc).__name__
        if name in _USER_REJECTED:
            return SourceSecurityError(f"user {username!r} rejected ({name})")
        if "Security" in name or "Certificate" in name:
            # e.g. BadSecurityChecksFailed: the server does not trust our client certificate
            return SourceSecurityError(
                f"security check failed ({name}); is the agent's certificate trusted by the server?"
            )
        return SourceUnavailable(f"{url} refused the session ({name})")
    return SourceUnavailable(f"cannot connect to {url} ({exc!r})")
