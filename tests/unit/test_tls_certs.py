"""The appliance CA and server certificate, checked with real TLS handshakes in memory."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.tls.certs import (
    CertPaths,
    ensure_certificates,
    load_user_certificate,
    normalise_domain,
)
from gateway.tls.context import client_context, server_context

DOMAIN = "sbx.localhost"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[object]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*ext.get_values_for_type(x509.DNSName), *ext.get_values_for_type(x509.IPAddress)}


def _snapshot(tls_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(tls_dir.iterdir())}


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake between two in-memory endpoints; return (client, server)."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        client_in.write(server_out.read())
        if client_done and server_done:
            return client, server
    raise AssertionError("handshake did not complete")


@pytest.fixture
def paths(tmp_path: Path) -> CertPaths:
    return ensure_certificates(tmp_path / "tls", DOMAIN)


def test_creates_ca_and_wildcard_leaf(paths: CertPaths, tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    assert paths == CertPaths(
        ca_cert=tls_dir / "ca.pem", cert=tls_dir / "server.pem", key=tls_dir / "server-key.pem"
    )
    assert sorted(p.name for p in tls_dir.iterdir()) == [
        "ca-key.pem",
        "ca.pem",
        "server-key.pem",
        "server.pem",
    ]

    ca = _cert(paths.ca_cert)
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str) and cn.startswith("ScaleBox appliance CA ")
    assert ca.issuer == ca.subject
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey) and ca_key.curve.name == "secp256r1"
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > timedelta(days=3649)

    leaf = _cert(paths.cert)
    leaf.verify_directly_issued_by(ca)
    assert _sans(leaf) == {
        DOMAIN,
        f"*.{DOMAIN}",
        "localhost",
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=397) <= lifetime <= timedelta(days=398)


def test_file_modes(paths: CertPaths, tmp_path: Path) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / "tls") == 0o700
    assert mode(paths.key) == 0o600
    assert mode(tmp_path / "tls" / "ca-key.pem") == 0o600
    assert mode(paths.cert) == 0o644
    assert mode(paths.ca_cert) == 0o644


def test_second_call_changes_nothing(paths: CertPaths, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "tls")
    assert ensure_certificates(tmp_path / "tls", DOMAIN) == paths
    # The same domain spelled differently is still the same domain.
    assert ensure_certificates(tmp_path / "tls", "SBX.Localhost.") == paths
    assert _snapshot(tmp_path / "tls") == before


def test_new_domain_reissues_leaf_and_keeps_ca(paths: CertPaths, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "tls")
    ensure_certificates(tmp_path / "tls", "sandboxes.example.com")
    after = _snapshot(tmp_path / "tls")
    assert after["ca.pem"] == before["ca.pem"] and after["ca-key.pem"] == before["ca-key.pem"]
    assert after["server.pem"] != before["server.pem"]
    assert after["server-key.pem"] != before["server-key.pem"]
    assert "*.sandboxes.example.com" in _sans(_cert(paths.cert))


def test_leaf_reissued_when_close_to_expiry(paths: CertPaths, tmp_path: Path) -> None:
    old_leaf = paths.cert.read_bytes()
    ca = paths.ca_cert.read_bytes()
    ensure_certificates(tmp_path / "tls", DOMAIN, now=datetime.now(UTC) + timedelta(days=300))
    assert paths.cert.read_bytes() == old_leaf
    ensure_certificates(tmp_path / "tls", DOMAIN, now=datetime.now(UTC) + timedelta(days=370))
    assert paths.cert.read_bytes() != old_leaf
    assert paths.ca_cert.read_bytes() == ca


@pytest.mark.parametrize("damage", ["garbage_cert", "missing_key", "foreign_key", "foreign_ca"])
def test_damaged_leaf_is_reissued(paths: CertPaths, tmp_path: Path, damage: str) -> None:
    other = ensure_certificates(tmp_path / "other", DOMAIN)
    if damage == "garbage_cert":
        paths.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    elif damage == "missing_key":
        paths.key.unlink()
    elif damage == "foreign_key":
        paths.key.write_bytes(other.key.read_bytes())
    else:
        paths.cert.write_bytes(other.cert.read_bytes())
        paths.key.write_bytes(other.key.read_bytes())

    ensure_certificates(tmp_path / "tls", DOMAIN)
    load_user_certificate(paths.cert, paths.key)
    _cert(paths.cert).verify_directly_issued_by(_cert(paths.ca_cert))


def test_damaged_ca_is_an_error_not_replaced(paths: CertPaths, tmp_path: Path) -> None:
    paths.ca_cert.write_bytes(b"not a certificate")
    with pytest.raises(ValueError, match=r"ca\.pem"):
        ensure_certificates(tmp_path / "tls", DOMAIN)
    assert paths.ca_cert.read_bytes() == b"not a certificate"


def test_no_temporary_files_left(paths: CertPaths, tmp_path: Path) -> None:
    ensure_certificates(tmp_path / "tls", "other.example.com")
    assert not [p for p in (tmp_path / "tls").iterdir() if p.name.startswith(".")]


def test_long_domain_gets_no_common_name(tmp_path: Path) -> None:
    domain = ("a" * 60) + ".example.com"
    paths = ensure_certificates(tmp_path / "tls", domain)
    leaf = _cert(paths.cert)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert f"*.{domain}" in _sans(leaf)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sbx.localhost", "sbx.localhost"),
        (" Sbx.Example.COM. ", "sbx.example.com"),
        ("a-1.b", "a-1.b"),
    ],
)
def test_normalise_domain(given: str, expected: str) -> None:
    assert normalise_domain(given) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "empty"),
        (".", "empty"),
        ("*.sbx.localhost", "without the wildcard"),
        ("sbx..localhost", "invalid label"),
        ("-sbx.localhost", "invalid label"),
        ("sbx-.localhost", "invalid label"),
        ("sb_x.localhost", "invalid label"),
        ("sbx local.host", "invalid label"),
        ("bücher.example", "punycode"),
        ("127.0.0.1", "IP address"),
        ("localhost", "two labels"),
        (("a" * 64) + ".example", "invalid label"),
        (".".join(["abcdefghi"] * 26), "253"),
    ],
)
def test_invalid_domain_rejected(tmp_path: Path, bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ensure_certificates(tmp_path / "tls", bad)
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize(
    "hostname",
    ["x.sbx.localhost", "8080-x.sbx.localhost", "sbx.localhost", "localhost", "127.0.0.1", "::1"],
)
def test_handshake_succeeds_for_covered_names(paths: CertPaths, hostname: str) -> None:
    client_ctx = client_context(paths.ca_cert)
    # Python 3.13 turns this on by default; our certificates must already pass it.
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client, server = _handshake(server_context(paths.cert, paths.key), client_ctx, hostname)
    assert client.selected_alpn_protocol() == "http/1.1"
    assert server.selected_alpn_protocol() == "http/1.1"
    assert client.version() in {"TLSv1.2", "TLSv1.3"}


@pytest.mark.parametrize("hostname", ["other.example", "a.b.sbx.localhost"])
def test_handshake_fails_for_other_names(paths: CertPaths, hostname: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(server_context(paths.cert, paths.key), client_context(paths.ca_cert), hostname)


def test_handshake_fails_against_another_ca(paths: CertPaths, tmp_path: Path) -> None:
    other = ensure_certificates(tmp_path / "other", DOMAIN)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(
            server_context(paths.cert, paths.key), client_context(other.ca_cert), "x.sbx.localhost"
        )


def test_context_settings(paths: CertPaths) -> None:
    server = server_context(paths.cert, paths.key)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.options & ssl.OP_NO_RENEGOTIATION
    client = client_context(paths.ca_cert)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


def test_tls_1_2_uses_only_aead_suites(paths: CertPaths) -> None:
    client_ctx = client_context(paths.ca_cert)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client, _ = _handshake(server_context(paths.cert, paths.key), client_ctx, "x.sbx.localhost")
    assert client.version() == "TLSv1.2"
    cipher = client.cipher()
    assert cipher is not None
    assert cipher[0].startswith("ECDHE-ECDSA-") and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])

    client_ctx = client_context(paths.ca_cert)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
    with pytest.raises(ssl.SSLError):
        _handshake(server_context(paths.cert, paths.key), client_ctx, "x.sbx.localhost")


def test_load_user_certificate_accepts_matching_pair(paths: CertPaths) -> None:
    load_user_certificate(paths.cert, paths.key)


def test_load_user_certificate_accepts_chain_file(paths: CertPaths, tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(paths.cert.read_bytes() + paths.ca_cert.read_bytes())
    load_user_certificate(chain, paths.key)


def test_load_user_certificate_rejects_bad_pairs(paths: CertPaths, tmp_path: Path) -> None:
    other = ensure_certificates(tmp_path / "other", DOMAIN)
    with pytest.raises(ValueError, match="does not match"):
        load_user_certificate(paths.cert, other.key)
    with pytest.raises(ValueError, match="cannot read"):
        load_user_certificate(tmp_path / "missing.pem", paths.key)
    with pytest.raises(ValueError, match="no readable PEM certificate"):
        load_user_certificate(paths.key, paths.key)
    with pytest.raises(ValueError, match="not a readable PEM private key"):
        load_user_certificate(paths.cert, paths.cert)

    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="encrypted"):
        load_user_certificate(paths.cert, encrypted)


def test_contexts_report_unloadable_files_as_value_error(paths: CertPaths, tmp_path: Path) -> None:
    other = ensure_certificates(tmp_path / "other", DOMAIN)
    with pytest.raises(ValueError, match="cannot load TLS certificate"):
        server_context(paths.cert, other.key)
    with pytest.raises(ValueError, match="cannot load CA certificate"):
        client_context(tmp_path / "missing.pem")
