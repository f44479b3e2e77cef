"""Security checks made before an OPC UA session is activated (no network)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.ua.uaerrors import BadSecurityChecksFailed, BadTimeout, BadUserAccessDenied
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from edge_agent.errors import SourceSecurityError, SourceUnavailable
from edge_agent.sources.opcua.security import (
    POLICIES,
    classify_session_error,
    first_certificate,
    load_trusted_certificates,
    select_endpoint,
    thumbprint,
    verify_server_certificate,
)


def certificate(name: str) -> x509.Certificate:
    # An EC key: generated in microseconds, and trust checks only compare certificates.
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def certs() -> dict[str, x509.Certificate]:
    return {name: certificate(name) for name in ("plc-a", "plc-b", "plc-c", "other")}


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def test_trusted_folder_mixes_der_and_pem_bundles(
    tmp_path: Path, certs: dict[str, x509.Certificate]
) -> None:
    (tmp_path / "plc-a.der").write_bytes(der(certs["plc-a"]))
    bundle = certs["plc-b"].public_bytes(Encoding.PEM) + certs["plc-c"].public_bytes(Encoding.PEM)
    (tmp_path / "bundle.pem").write_bytes(bundle)
    trusted = load_trusted_certificates(tmp_path)
    assert trusted == {der(certs["plc-a"]), der(certs["plc-b"]), der(certs["plc-c"])}
    verify_server_certificate(der(certs["plc-b"]), trusted)
    with pytest.raises(SourceSecurityError) as caught:
        verify_server_certificate(der(certs["other"]), trusted)
    message = str(caught.value)
    assert message.startswith("server certificate not trusted (SHA-1 thumbprint ")
    assert thumbprint(der(certs["other"])) in message
    assert "add it to trusted_server_certificates" in message


def test_trusted_single_file(tmp_path: Path, certs: dict[str, x509.Certificate]) -> None:
    path = tmp_path / "server.pem"
    path.write_bytes(certs["plc-a"].public_bytes(Encoding.PEM))
    assert load_trusted_certificates(path) == {der(certs["plc-a"])}


def test_a_stray_file_in_the_trusted_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("put the server certificates here")
    with pytest.raises(SourceSecurityError, match=r"README\.txt .* is not a certificate"):
        load_trusted_certificates(tmp_path)


def test_thumbprint_is_the_sha1_that_servers_display(certs: dict[str, x509.Certificate]) -> None:
    expected = certs["plc-a"].fingerprint(hashes.SHA1()).hex().upper()
    assert thumbprint(der(certs["plc-a"])) == expected


def test_first_certificate_of_a_chain(certs: dict[str, x509.Certificate]) -> None:
    own, issuer = der(certs["plc-a"]), der(certs["plc-b"])
    assert first_certificate(own) == own
    assert first_certificate(own + issuer) == own
    with pytest.raises(SourceSecurityError, match="no readable certificate"):
        first_certificate(b"\x00\x01")


def endpoint(policy_uri: str, mode: ua.MessageSecurityMode) -> ua.EndpointDescription:
    return ua.EndpointDescription(SecurityPolicyUri=policy_uri, SecurityMode=mode)


NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"


def test_select_endpoint_matches_policy_and_mode() -> None:
    offered = [
        endpoint(NONE_URI, ua.MessageSecurityMode.None_),
        endpoint(POLICIES["Basic256Sha256"].URI, ua.MessageSecurityMode.Sign),
        endpoint(POLICIES["Basic256Sha256"].URI, ua.MessageSecurityMode.SignAndEncrypt),
    ]
    assert select_endpoint(offered, "Basic256Sha256", "SignAndEncrypt") is offered[2]
    assert select_endpoint(offered, "Basic256Sha256", "Sign") is offered[1]
    assert select_endpoint(offered, "None", "None") is offered[0]


def test_policy_not_offered_lists_what_is() -> None:
    offered = [
        endpoint(NONE_URI, ua.MessageSecurityMode.None_),
        endpoint(POLICIES["Basic256Sha256"].URI, ua.MessageSecurityMode.Sign),
    ]
    with pytest.raises(SourceSecurityError) as caught:
        select_endpoint(offered, "Aes128_Sha256_RsaOaep", "SignAndEncrypt")
    assert str(caught.value) == (
        "security policy Aes128_Sha256_RsaOaep/SignAndEncrypt not offered by the server "
        "(offers: Basic256Sha256/Sign, None/None)"
    )


def test_session_errors_are_classified() -> None:
    url = "opc.tcp://127.0.0.1:4840"
    user = classify_session_error(BadUserAccessDenied(), url, "edge")
    assert isinstance(user, SourceSecurityError)
    assert str(user) == "user 'edge' rejected (BadUserAccessDenied)"
    checks = classify_session_error(BadSecurityChecksFailed(), url, None)
    assert isinstance(checks, SourceSecurityError)
    assert "BadSecurityChecksFailed" in str(checks)
    timeout = classify_session_error(BadTimeout(), url, "edge")
    assert type(timeout) is SourceUnavailable
    refused = classify_session_error(ConnectionRefusedError(111, "refused"), url, None)
    assert type(refused) is SourceUnavailable
    assert url in str(refused)
