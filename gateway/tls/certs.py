"""The appliance's own CA and wildcard server certificate, and checks on a user's pair.

A fresh install has no certificate, so ``ensure_certificates`` makes one: a
private CA (kept for ten years, so that people who trusted it once keep
trusting it) and a leaf for ``<domain>`` and ``*.<domain>`` signed by it. The
leaf follows browser rules (at most 397 days) and is re-issued on start when it
is missing, damaged, for another domain or close to expiry; the CA is reused.

Files in ``tls_dir``::

    ca.pem  ca-key.pem  server.pem  server-key.pem

Every file is replaced atomically, and a key is always written before its
certificate: a crash between the two leaves a key that does not match the
certificate, which the next start notices and repairs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPaths", "ensure_certificates", "load_user_certificate", "normalise_domain"]

CA_VALIDITY = timedelta(days=3650)
# Apple and the browsers refuse server certificates valid for longer.
LEAF_VALIDITY = timedelta(days=397)
RENEW_BEFORE = timedelta(days=30)
# Tolerates a client whose clock is a little behind ours.
BACKDATE = timedelta(hours=1)

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
LEAF_CERT_NAME = "server.pem"
LEAF_KEY_NAME = "server-key.pem"

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5280 upper bound on a commonName; cryptography refuses longer ones.
_MAX_COMMON_NAME = 64

_IssuerKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    cert: Path
    key: Path


def normalise_domain(domain: str) -> str:
    """Return ``domain`` lowercased without a trailing dot, or raise ``ValueError``."""
    name = domain.strip().lower().removesuffix(".")
    if not name:
        raise ValueError("the base domain is empty")
    if not name.isascii():
        raise ValueError(f"base domain {domain!r} is not ASCII; give its xn-- (punycode) form")
    if name.startswith("*."):
        raise ValueError(f"give the base domain without the wildcard, e.g. {name[2:]!r}")
    if len(name) > 253:
        raise ValueError(f"base domain {domain!r} is longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"base domain {domain!r} has an invalid label {label!r}: labels are 1-63 "
                "letters, digits or hyphens, not starting or ending with a hyphen"
            )
    if labels[-1].isdigit():
        raise ValueError(f"base domain {domain!r} looks like an IP address, not a DNS name")
    # TLS clients do not honour a wildcard directly under a top-level label
    # (*.localhost), so every sandbox name would fail verification.
    if len(labels) < 2:
        raise ValueError(
            f"base domain {domain!r} needs at least two labels (e.g. 'sbx.localhost') "
            "so that clients accept the wildcard certificate"
        )
    return name


def ensure_certificates(tls_dir: Path, domain: str, *, now: datetime | None = None) -> CertPaths:
    """Create or repair the appliance CA and server certificate for ``domain``.

    ``now`` is for tests; it defaults to the current time.
    """
    domain = normalise_domain(domain)
    now = now or datetime.now(UTC)
    try:
        tls_dir.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    else:
        # mkdir's mode is filtered through the umask.
        tls_dir.chmod(0o700)

    paths = CertPaths(
        ca_cert=tls_dir / CA_CERT_NAME,
        cert=tls_dir / LEAF_CERT_NAME,
        key=tls_dir / LEAF_KEY_NAME,
    )
    ca_key_path = tls_dir / CA_KEY_NAME

    ca = _load_ca(paths.ca_cert, ca_key_path, now=now)
    if ca is None:
        ca = _create_ca(now)
        _write_key(ca_key_path, ca[1])
        _write_cert(paths.ca_cert, ca[0])

    ca_cert, ca_key = ca
    if not _leaf_is_usable(paths.cert, paths.key, ca_cert, domain, now=now):
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _issue_leaf(ca_cert, ca_key, leaf_key, domain, now=now)
        _write_key(paths.key, leaf_key)
        _write_cert(paths.cert, leaf)
    return paths


def load_user_certificate(cert: Path, key: Path) -> None:
    """Check that a user-supplied PEM certificate (chain) and key belong together.

    Raises ``ValueError`` saying what is wrong; returns nothing when the pair is usable.
    """
    cert_pem = _read(cert, "certificate")
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except (ValueError, IndexError) as exc:
        raise ValueError(f"certificate file {cert} holds no readable PEM certificate") from exc
    private_key = _parse_private_key(_read(key, "key"), key)
    if not _same_public_key(leaf, private_key):
        raise ValueError(
            f"key {key} does not match certificate {cert} (the first certificate in the file must be the server's own)"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc


def _parse_private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ValueError(f"key {path} is encrypted; the appliance needs an unencrypted key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"key {path} is not a readable PEM private key") from exc


def _same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    except (ValueError, UnsupportedAlgorithm):
        return False


def _load_ca(cert_path: Path, key_path: Path, *, now: datetime) -> tuple[x509.Certificate, _IssuerKey] | None:
    """Return the existing CA, or None when there is none (or it has run out)."""
    if not cert_path.exists():
        return None
    # Clients may already trust this CA, so a damaged one is an error to fix by
    # hand rather than something to replace silently.
    ca_pem = _read(cert_path, "CA certificate")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ValueError(
            f"CA certificate {cert_path} is unreadable ({exc}); delete the TLS directory to create a new CA"
        ) from exc
    ca_key = _parse_private_key(_read(key_path, "CA key"), key_path)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"CA key {key_path} is a {type(ca_key).__name__}; use an EC or RSA key")
    if not _same_public_key(ca_cert, ca_key):
        raise ValueError(
            f"CA key {key_path} does not match CA certificate {cert_path}; delete the TLS directory to create a new CA"
        )
    # A CA about to expire would only sign leaves that die with it.
    if ca_cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return ca_cert, ca_key


def _create_ca(now: datetime) -> tuple[x509.Certificate, _IssuerKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # The random suffix tells apart the CAs of several appliances in a trust store.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ScaleBox"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ScaleBox appliance CA {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf_names(domain: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]
    if domain != "localhost":
        names.append(x509.DNSName("localhost"))
    names += [
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    return names


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: _IssuerKey,
    leaf_key: ec.EllipticCurvePrivateKey,
    domain: str,
    *,
    now: datetime,
) -> x509.Certificate:
    # Clients judge the name by the SANs; the commonName is only for people.
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ScaleBox")]
    if len(domain) <= _MAX_COMMON_NAME:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, domain))
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_leaf_names(domain)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _leaf_is_usable(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, domain: str, *, now: datetime) -> bool:
    try:
        leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        leaf.verify_directly_issued_by(ca_cert)
    except (
        OSError,
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        InvalidSignature,
        x509.ExtensionNotFound,
    ):
        return False
    return (
        _same_public_key(leaf, key)
        and set(sans) == set(_leaf_names(domain))
        and leaf.not_valid_before_utc <= now
        and leaf.not_valid_after_utc - now >= RENEW_BEFORE
    )


def _write_key(path: Path, key: _IssuerKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, data, mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # mkstemp creates the file 0600, so a key is never readable by others,
    # not even for the moment before it is renamed into place.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power cut.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
