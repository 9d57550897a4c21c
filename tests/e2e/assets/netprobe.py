"""Run inside a sandbox by test_isolation_network.py: try each target, print one JSON line each.

    python3 netprobe.py tcp HOST:PORT ...            connect, then read what the server says first
    python3 netprobe.py http HOST:PORT HOSTNAME      GET / with that Host header: the status line
    python3 netprobe.py dns NAME ...                 getaddrinfo
    python3 netprobe.py path PATH ...                whether the path exists in the sandbox

HOST may be IPv6, link-local with its zone: [fe80::1%eth0]:80. Each line says how the
attempt ended ("open", "refused", "unreachable", "timeout", "error") and how long it took.
"""

import errno
import json
import os
import socket
import sys
import time

TIMEOUT = 5.0


def split(target):
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def failure(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "refused"
    if getattr(exc, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return "unreachable"
    return "error"


def tcp(target, request=None):
    started = time.monotonic()
    out = {"target": target}
    try:
        host, port = split(target)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(info[4])
            out["outcome"] = "open"
            if request:
                sock.sendall(request)
            sock.settimeout(1.0)
            try:
                out["data"] = sock.recv(200).decode("latin-1")
            except OSError:
                out["data"] = ""
    except OSError as exc:
        out.update(outcome=failure(exc), error=str(exc))
    out["seconds"] = round(time.monotonic() - started, 4)
    return out


def dns(name):
    started = time.monotonic()
    out = {"target": name}
    try:
        out["addresses"] = sorted({i[4][0] for i in socket.getaddrinfo(name, 80, socket.AF_INET)})
        out["outcome"] = "open"
    except OSError as exc:
        out.update(outcome="error", error=str(exc))
    out["seconds"] = round(time.monotonic() - started, 4)
    return out


def main(argv):
    mode, args = argv[0], argv[1:]
    if mode == "tcp":
        results = [tcp(t) for t in args]
    elif mode == "http":
        target, hostname = args
        request = f"GET / HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode()
        results = [tcp(target, request)]
    elif mode == "dns":
        results = [dns(n) for n in args]
    elif mode == "path":
        results = [{"target": p, "exists": os.path.exists(p)} for p in args]
    else:
        raise SystemExit(f"unknown mode {mode}")
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
