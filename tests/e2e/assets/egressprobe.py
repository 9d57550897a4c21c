"""Run inside a sandbox by test_egress.py: one attempt, one JSON line.

    python3 egressprobe.py tcp HOST PORT                connect, read what the server says first
    python3 egressprobe.py http HOST PORT HOSTNAME      GET / with that Host header
    python3 egressprobe.py tls HOST PORT SNI            TLS handshake (no verification), then read
    python3 egressprobe.py udp HOST PORT                one datagram, wait for the echo
    python3 egressprobe.py dns NAME                     getaddrinfo through the sandbox's resolver

HOST may be a name (resolved through the sandbox's resolver) or an address. The
outcome is "open" (the far end answered: its first bytes are in "data"), "reset"
(connected, then cut before any answer: what the egress proxy does), "refused",
"unreachable", "timeout" or "error", with the seconds it took.
"""

import errno
import json
import socket
import ssl
import sys
import time

TIMEOUT = 5.0


def failure(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError)):
        return "reset"
    if getattr(exc, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return "unreachable"
    return "error"


def stream(host, port, send=None, sni=None):
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    try:
        if sni is not None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=sni)
        if send:
            sock.sendall(send)
        data = sock.recv(300)
    finally:
        sock.close()
    if not data:
        return {"outcome": "reset", "data": ""}
    return {"outcome": "open", "data": data.decode("latin-1")}


def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((host, int(port)))
        sock.send(b"ping")
        return {"outcome": "open", "data": sock.recv(300).decode("latin-1")}


def dns(name):
    addresses = sorted({i[4][0] for i in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
    return {"outcome": "open", "addresses": addresses}


def main(mode, *args):
    started = time.monotonic()
    try:
        if mode == "tcp":
            out = stream(*args)
        elif mode == "http":
            host, port, hostname = args
            out = stream(host, port, f"GET / HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
        elif mode == "tls":
            host, port, sni = args
            out = stream(host, port, b"hello\n", sni=sni)
        elif mode == "udp":
            out = udp(*args)
        elif mode == "dns":
            out = dns(*args)
        else:
            raise SystemExit(f"unknown mode {mode}")
    except (OSError, ssl.SSLError) as exc:
        out = {"outcome": failure(exc), "error": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.monotonic() - started, 4)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
