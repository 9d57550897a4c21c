"""Which host names a server certificate covers, and whether a request's Host may use a
TLS connection. Pure: PEM bytes and names in, answers out.

The rule a request over TLS must pass (otherwise 421 Misdirected Request):

- with SNI, the Host must be the SNI name: the client checked the certificate
  against that name and no other, and the gateway chose what to do with the
  connection by it (later, TLS passthrough and TCP routes are chosen by SNI
  alone, before any HTTP);
- without SNI (curl to an IP address, some health checkers), the Host must be a
  name the certificate the client was shown covers. Such a client could have
  named that host in SNI and been shown the same certificate, so leaving SNI out
  reaches nothing a client with SNI could not; a Host outside the certificate
  gets 421, so dropping SNI never gets around the name check.

Plain HTTP has no certificate and no SNI: any Host is served.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["certificate_names", "covers", "misdirected"]


def certificate_names(cert_pem: bytes) -> tuple[str, ...]:
    """The lowercase DNS names and IP addresses the first certificate in `cert_pem` is for.

    Wildcards stay as written (``*.example.com``). The subject's commonName counts
    only when the certificate has no subjectAltName, as clients judge it.
    Raises ``ValueError`` when there is no readable certificate.
    """
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except (ValueError, IndexError) as exc:
        raise ValueError("no readable PEM certificate") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower().rstrip(".") for a in common)
    dns = [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def covers(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate for `names` is valid for the (normalised) `host`.

    A wildcard stands for exactly one whole leftmost label (RFC 6125 section 6.4.3).
    """
    if host in names:
        return True
    _, dot, parent = host.partition(".")
    return bool(dot) and f"*.{parent}" in names


def misdirected(host: str, sni: str | None, names: tuple[str, ...]) -> str | None:
    """Why a request for `host` must not be served on a TLS connection opened with
    `sni` and shown a certificate for `names`; None when it may be."""
    if sni is not None:
        if host == sni:
            return None
        return f"this connection was opened for {sni} (TLS SNI), not for {host}; open a new connection to {host}"
    if covers(names, host):
        return None
    return f"the certificate of this connection does not cover {host}; connect to {host} by name (with SNI)"
