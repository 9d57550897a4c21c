"""Egress through the appliance's proxy against direct egress, from inside two sandboxes on one appliance.

The "internet" is a network namespace of the bench's own with one host, `bench.test`
(198.18.88.10, routed from the host through a veth pair): HTTP on 80 (`GET /` a small
answer, `GET /big?n=N` N zero bytes, `POST /sink` read and discarded; keep-alive) and a
TCP echo on 8080 (the client speaks first). Its name server is a small one in this
process, the appliance's upstream (SCALEBOX_DNS_UPSTREAM). Two sandboxes:

    proxied   network: {allow_out: [bench.test]}: every TCP connection goes through the
              appliance's egress proxy (nftables REDIRECT, SNI / Host sniffed, spliced)
    direct    no lists: out through the kernel (NAT)

A client script (stdlib only, copied in) runs inside each with `podman exec`; every part
visits the two in rotation, round by round, so noise on the shared machine lands on
both. A ratio is proxied / direct, the median over rounds of the two rounds' values.

    connect     new connection + `GET /` + the first byte of the answer (p50, p90)
    download    N MiB over one kept connection (warmed by a small GET first): MB/s
    upload      N MiB POSTed likewise: MB/s
    round trip  a 64-byte message echoed on one kept connection, in blocks (p50, p99)
    dns         getaddrinfo(bench.test) and a bare UDP query to the nameserver of
                /etc/resolv.conf: both sandboxes ask the appliance's resolver (every
                sandbox is given it), which forwards to the upstream; the baseline is
                the same bare query from the host straight to the upstream
    CPU         the appliance's processes' CPU (utime + stime) over each `podman exec`:
                per GB moved, per connection; the direct column is the appliance's
                background (nothing of its own is on that path)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.env import BenchAppliance, podman, running_appliance
from bench.stats import median, paired, percentile, ratio

NAME = "bench.test"
NET = "198.18.88"
SERVER = f"{NET}.10"
HTTP_PORT, ECHO_PORT = 80, 8080
TTL = 3600
SANDBOXES = ("proxied", "direct")
NETWORKS: dict[str, dict[str, Any]] = {"proxied": {"allow_out": [NAME]}, "direct": {}}
CLIENT_PATH = "/tmp/egressbench.py"
MESSAGE_BYTES = 64


@dataclass(frozen=True)
class EgressPlan:
    connect_rounds: int = 4
    connect_per_round: int = 50
    transfer_rounds: int = 3
    transfer_mib: int = 64
    echo_warmup: int = 50
    echo_rounds: int = 5
    echo_per_round: int = 200
    dns_rounds: int = 4
    dns_per_round: int = 50

    @classmethod
    def quick(cls) -> EgressPlan:
        return cls(connect_rounds=2, connect_per_round=25, transfer_rounds=3, transfer_mib=32, echo_warmup=20,
                   echo_rounds=2, echo_per_round=100, dns_rounds=2, dns_per_round=25)  # fmt: skip


@dataclass
class EgressResult:
    plan: EgressPlan = field(default_factory=EgressPlan)
    connect_ms: dict[str, list[list[float]]] = field(default_factory=dict)  # per round, every try
    download_mb_s: dict[str, list[float]] = field(default_factory=dict)  # one per round
    upload_mb_s: dict[str, list[float]] = field(default_factory=dict)
    echo_ms: dict[str, list[list[float]]] = field(default_factory=dict)  # per round, every round trip
    getaddrinfo_ms: dict[str, list[list[float]]] = field(default_factory=dict)
    dns_query_ms: dict[str, list[list[float]]] = field(default_factory=dict)  # + "host to upstream"
    # The appliance's CPU seconds over each exec, and what the exec did (bytes moved, connections).
    cpu: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    # The appliance's CPU seconds per wall second of each timed transfer (its exec's CPU: a little high).
    transfer_busy: dict[str, list[float]] = field(default_factory=dict)
    appliance_pids: int = 0
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def blocks(samples: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
            return {k: [[round(x, 4) for x in b] for b in v] for k, v in samples.items()}

        def flat(samples: dict[str, list[float]]) -> dict[str, list[float]]:
            return {k: [round(x, 2) for x in v] for k, v in samples.items()}

        return {
            "plan": vars(self.plan),
            "connect_ms": blocks(self.connect_ms),
            "download_mb_s": flat(self.download_mb_s),
            "upload_mb_s": flat(self.upload_mb_s),
            "echo_ms": blocks(self.echo_ms),
            "getaddrinfo_ms": blocks(self.getaddrinfo_ms),
            "dns_query_ms": blocks(self.dns_query_ms),
            "cpu": {
                part: {k: [[round(c, 3), u] for c, u in v] for k, v in by.items()} for part, by in self.cpu.items()
            },
            "transfer_busy": flat(self.transfer_busy),
            "appliance_pids": self.appliance_pids,
            "notes": self.notes,
            "failed": self.failed,
            "summary": summarize(self),
        }


def _block_medians(blocks: list[list[float]]) -> list[float]:
    return [median(b) for b in blocks if b]


def _flatten(blocks: list[list[float]]) -> list[float]:
    return [x for b in blocks for x in b]


def _cpu_per(samples: list[tuple[float, float]], scale: float) -> list[float]:
    """CPU seconds per unit (times scale), one value per exec."""
    return [cpu / units * scale for cpu, units in samples if units]


def summarize(result: EgressResult) -> dict[str, Any]:
    """Rows of (metric, direct, proxied, ratio proxied/direct: the median of per-round ratios where
    the metric is per round, else the ratio of the two values; none for the appliance's CPU, whose
    direct value is its background: the proxy's cost is the difference). Time: > 1 is worse; MB/s: < 1."""
    rows: list[dict[str, Any]] = []

    def row(key: str, label: str, direct: float | None, proxied: float | None, r: float | None) -> None:
        rows.append({"key": key, "label": label, "direct": direct, "proxied": proxied, "ratio": r})

    def by_blocks(key: str, label: str, samples: dict[str, list[list[float]]], p: float | None = None) -> None:
        d, x = samples.get("direct", []), samples.get("proxied", [])
        if p is None:
            row(key, label, median(_flatten(d)), median(_flatten(x)),
                paired(_block_medians(x), _block_medians(d), ratio))  # fmt: skip
        else:
            dp, xp = percentile(_flatten(d), p), percentile(_flatten(x), p)
            row(key, label, dp, xp, ratio(xp, dp))

    def by_round(key: str, label: str, samples: dict[str, list[float]]) -> None:
        d, x = samples.get("direct", []), samples.get("proxied", [])
        row(key, label, median(d), median(x), paired(x, d, ratio))

    by_blocks("connect_p50_ms", "new connection + GET + first byte p50 ms", result.connect_ms)
    by_blocks("connect_p90_ms", "new connection + GET + first byte p90 ms", result.connect_ms, 90)
    by_round("download_mb_s", f"download MB/s ({result.plan.transfer_mib} MiB)", result.download_mb_s)
    by_round("upload_mb_s", f"upload MB/s ({result.plan.transfer_mib} MiB)", result.upload_mb_s)
    by_blocks("echo_p50_ms", f"{MESSAGE_BYTES}-byte round trip p50 ms", result.echo_ms)
    by_blocks("echo_p99_ms", f"{MESSAGE_BYTES}-byte round trip p99 ms", result.echo_ms, 99)
    by_blocks("getaddrinfo_p50_ms", "getaddrinfo p50 ms (appliance resolver)", result.getaddrinfo_ms)
    by_blocks("dns_query_p50_ms", "UDP DNS query p50 ms (appliance resolver)", result.dns_query_ms)
    for part, label, scale in (
        ("transfer", "appliance CPU s per GB moved", 1e9),
        ("connect", "appliance CPU ms per new connection", 1e3),
    ):
        per = result.cpu.get(part, {})
        d, x = _cpu_per(per.get("direct", []), scale), _cpu_per(per.get("proxied", []), scale)
        # No ratio: direct's is the appliance's background (nothing of it is on that path), near 0.
        row(f"cpu_{part}", label, median(d), median(x), None)
    busy = result.transfer_busy
    row("cpu_busy", "appliance CPU s per wall s, transfers", median(busy.get("direct", [])),
        median(busy.get("proxied", [])), None)  # fmt: skip
    out: dict[str, Any] = {"rows": rows}
    # The resolver's hop: in a sandbox through the appliance's resolver, against the host straight to the upstream.
    host = median(_flatten(result.dns_query_ms.get("host to upstream", [])))
    through = median(_flatten(result.dns_query_ms.get("proxied", [])))
    out["dns_host_to_upstream_p50_ms"] = host
    out["dns_resolver_vs_upstream"] = ratio(through, host)
    cpu = {r["key"]: r for r in rows if r["key"].startswith("cpu_")}
    out["proxy_cpu_s_per_gb"] = _minus(cpu["cpu_transfer"]["proxied"], cpu["cpu_transfer"]["direct"])
    out["proxy_cpu_ms_per_connection"] = _minus(cpu["cpu_connect"]["proxied"], cpu["cpu_connect"]["direct"])
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a != a or b != b:  # NaN
        return None
    return a - b


# -- runs inside the sandboxes (and on the host for the DNS baseline): Python 3.9+, stdlib only --
# The script is made of these functions' source (`client_script`): nothing else of this module is there.


def _c_resolve(name: str) -> str:
    return str(socket.getaddrinfo(name, HTTP_PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])


def _c_connect(address: str, port: int) -> socket.socket:
    sock = socket.create_connection((address, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _c_head(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send a request; read the answer's head: (Content-Length, the body bytes read with it)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed before the answer's head")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("answer: " + head[:200].decode("latin-1"))
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return int(value), rest
    raise RuntimeError("no Content-Length")


def _c_drain(sock: socket.socket, left: int) -> None:
    view = memoryview(bytearray(1 << 20))
    while left > 0:
        n = sock.recv_into(view, min(left, 1 << 20))
        if not n:
            raise ConnectionError(f"closed with {left} bytes to come")
        left -= n


def _c_get(sock: socket.socket, path: str) -> None:
    """A keep-alive GET, its body read and dropped."""
    size, rest = _c_head(sock, b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), HTTP_NAME.encode()))
    _c_drain(sock, size - len(rest))


def _c_post(sock: socket.socket, size: int) -> None:
    head = b"POST /sink HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (HTTP_NAME.encode(), size)
    sock.sendall(head)
    block = memoryview(bytes(1 << 20))
    left = size
    while left > 0:
        n = min(left, len(block))
        sock.sendall(block[:n])
        left -= n
    length, rest = _c_head(sock, b"")
    _c_drain(sock, length - len(rest))


def _c_first_byte(address: str) -> float:
    """Seconds from connect to the first byte of a small GET's answer; the rest is read untimed."""
    request = b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HTTP_NAME.encode()
    t0 = time.perf_counter()
    sock = _c_connect(address, HTTP_PORT)
    try:
        sock.sendall(request)
        if not sock.recv(65536):
            raise ConnectionError("closed before answering")
        elapsed = time.perf_counter() - t0
        while sock.recv(65536):
            pass
    finally:
        sock.close()
    return elapsed


def _c_read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ConnectionError("closed mid-message")
        data += more
    return data


def _c_dns_query(server: tuple[str, int], name: str) -> float:
    """Seconds for one bare A query over UDP to come back with an address."""
    qid = random.randrange(1 << 16)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(5)
        sock.connect(server)
        t0 = time.perf_counter()
        sock.send(query)
        while True:
            reply = sock.recv(4096)
            if len(reply) >= 12 and struct.unpack(">H", reply[:2])[0] == qid:
                break
        elapsed = time.perf_counter() - t0
    finally:
        sock.close()
    rcode, answers = reply[3] & 15, struct.unpack(">H", reply[6:8])[0]
    if rcode or not answers:
        raise RuntimeError(f"DNS {name}: rcode {rcode}, {answers} answers")
    return elapsed


def _c_nameserver() -> tuple[str, int]:
    with open("/etc/resolv.conf") as f:
        for line in f:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                return words[1], 53
    raise RuntimeError("no nameserver in /etc/resolv.conf")


def _c_main(argv: list[str]) -> dict[str, Any]:
    mode, count = argv[0], int(argv[1])
    if mode == "dns-host":  # the baseline: on the host, straight to the upstream
        server = (argv[2], int(argv[3]))
        return {"query_ms": [_c_dns_query(server, HTTP_NAME) * 1000 for _ in range(count)]}
    address = _c_resolve(HTTP_NAME)  # also what lets a proxied sandbox reach the address
    if mode == "connect":
        _c_first_byte(address)  # not timed: the first after a pause
        return {"ms": [_c_first_byte(address) * 1000 for _ in range(count)]}
    if mode in ("download", "upload"):
        sock = _c_connect(address, HTTP_PORT)
        try:
            _c_get(sock, "/")
            if mode == "download":  # windows open
                _c_get(sock, f"/big?n={1 << 20}")
            else:
                _c_post(sock, 1 << 20)
            t0 = time.perf_counter()
            if mode == "download":
                _c_get(sock, f"/big?n={count}")
            else:
                _c_post(sock, count)
            elapsed = time.perf_counter() - t0
        finally:
            sock.close()
        return {"mb_s": count / 1e6 / elapsed, "seconds": elapsed}
    if mode == "echo":
        warmup = int(argv[2])
        message = bytes(range(MESSAGE_BYTES))  # neither TLS nor HTTP: decided by address
        sock = _c_connect(address, ECHO_PORT)
        samples = []
        try:
            for i in range(warmup + count):
                t0 = time.perf_counter()
                sock.sendall(message)
                got = _c_read(sock, len(message))
                if i >= warmup:
                    samples.append((time.perf_counter() - t0) * 1000)
                if got != message:
                    raise RuntimeError("echo: got other bytes back")
        finally:
            sock.close()
        return {"ms": samples}
    if mode == "dns":
        nameserver = _c_nameserver()
        lookups, queries = [], []
        for _ in range(count):
            t0 = time.perf_counter()
            _c_resolve(HTTP_NAME)
            lookups.append((time.perf_counter() - t0) * 1000)
            queries.append(_c_dns_query(nameserver, HTTP_NAME) * 1000)
        return {"getaddrinfo_ms": lookups, "query_ms": queries, "nameserver": nameserver[0]}
    raise SystemExit(f"unknown mode {mode}")


_CLIENT_FUNCTIONS = (_c_resolve, _c_connect, _c_head, _c_drain, _c_get, _c_post, _c_first_byte, _c_read,
                     _c_dns_query, _c_nameserver, _c_main)  # fmt: skip


def client_script() -> str:
    """The sandboxes' client: these functions' source, the constants they use, a main."""
    head = [
        "from __future__ import annotations",
        "import json, random, socket, struct, sys, time",
        "from typing import Any",
        f"HTTP_NAME = {NAME!r}",
        f"HTTP_PORT = {HTTP_PORT}",
        f"ECHO_PORT = {ECHO_PORT}",
        f"MESSAGE_BYTES = {MESSAGE_BYTES}",
    ]
    body = [inspect.getsource(f) for f in _CLIENT_FUNCTIONS]
    return "\n".join(head) + "\n\n\n" + "\n\n".join(body) + "\n\nprint(json.dumps(_c_main(sys.argv[1:])))\n"


HTTP_NAME = NAME  # the client's name for it, inlined in its script


# -- the server, in the namespace (same scheme: `server_script`) ---------------------------------------


def _s_http(conn: socket.socket) -> None:
    """Keep-alive HTTP/1.1: `GET /big?n=N` N zero bytes, `POST /sink` read and dropped, else a small answer."""
    block = memoryview(bytes(1 << 20))
    sink = memoryview(bytearray(1 << 20))
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return
            data += more
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        method, target = lines[0].split()[:2]
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        if method == b"POST":
            total = int(headers.get(b"content-length", b"0"))
            taken = min(total, len(data))
            data, left = data[taken:], total - taken
            while left > 0:
                n = conn.recv_into(sink, min(left, len(sink)))
                if not n:
                    return
                left -= n
            body = b"received %d\n" % total
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif target.startswith(b"/big"):
            left = int(target.partition(b"n=")[2] or b"0")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % left)
            while left > 0:
                n = min(left, len(block))
                conn.sendall(block[:n])
                left -= n
        else:
            body = b"hello from bench.test\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if headers.get(b"connection", b"").lower() == b"close":
            return


def _s_echo(conn: socket.socket) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def _s_guarded(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        with conn:
            conn.settimeout(120)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handle(conn)
    except OSError:
        pass


def _s_listen(address: str, port: int, handle: Callable[[socket.socket], None]) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(256)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_s_guarded, args=(handle, conn), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _s_main(address: str) -> None:
    _s_listen(address, HTTP_PORT, _s_http)
    _s_listen(address, ECHO_PORT, _s_echo)
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes it (or dies)


def server_script(address: str) -> str:
    head = "from __future__ import annotations\nimport socket, sys, threading\nfrom collections.abc import Callable\n"
    consts = f"HTTP_PORT = {HTTP_PORT}\nECHO_PORT = {ECHO_PORT}\n"
    body = "\n\n".join(inspect.getsource(f) for f in (_s_http, _s_echo, _s_guarded, _s_listen, _s_main))
    return f"{head}{consts}\n\n{body}\n\n_s_main({address!r})\n"


# -- the rig: the namespace, the name server, the appliance, two sandboxes ---------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def internet(log: Callable[[str], None]) -> Iterator[None]:
    """A namespace holding SERVER (HTTP and echo), routed from the host through a veth pair."""
    tag = secrets.token_hex(3)
    netns, host_if, ns_if = f"sbxbench-{tag}", f"sbxbh{tag}", f"sbxbn{tag}"
    base = 4 * random.randrange(64)
    host_side, ns_side = f"198.18.201.{base + 1}", f"198.18.201.{base + 2}"
    server: subprocess.Popen[str] | None = None
    route = False
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", netns)
        _ip("addr", "add", f"{host_side}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{ns_side}/30", "dev", ns_if)
        _ip("-n", netns, "link", "set", ns_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{SERVER}/32", "dev", "lo")
        _ip("-n", netns, "route", "add", "default", "via", host_side)
        _ip("route", "add", f"{NET}.0/24", "via", ns_side)
        route = True
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", server_script(SERVER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the namespace's server did not start")
        with socket.create_connection((SERVER, ECHO_PORT), timeout=5) as sock:
            sock.sendall(b"ping")
            if sock.recv(10) != b"ping":
                raise RuntimeError("the namespace's echo server does not answer")
        log(f"egress: internet up: namespace {netns}, {SERVER} via {host_if}")
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        if route:
            subprocess.run(["ip", "route", "del", f"{NET}.0/24", "via", ns_side], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)


@contextlib.contextmanager
def name_server() -> Iterator[int]:
    """On loopback: bench.test -> SERVER (A), no AAAA, NXDOMAIN for the rest. Yields its port."""
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                wire, peer = sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
                question = query.question[0]
                response = dns.message.make_response(query)
                name = question.name.to_text(omit_final_dot=True).lower()
                if name != NAME:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                elif question.rdtype == dns.rdatatype.A:
                    response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "A", SERVER))
                sock.sendto(response.to_wire(), peer)
            except Exception:  # a bad query is dropped; the server carries on
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()
        thread.join(5)


def _create(app: BenchAppliance, network: dict[str, Any]) -> str:
    body: dict[str, Any] = {"network": network} if network else {}
    with app.client() as api:
        resp = api.post(f"{app.api_url}/sandboxes", json=body)
    if resp.status_code != 201:
        raise RuntimeError(f"create {body}: {resp.status_code} {resp.text[:300]}")
    return str(resp.json()["data"]["sandbox_id"])


def _delete(app: BenchAppliance, sandbox_id: str) -> None:
    with contextlib.suppress(Exception), app.client() as api:
        api.delete(f"{app.api_url}/sandboxes/{sandbox_id}")


def _rotated(names: tuple[str, ...], i: int) -> list[str]:
    k = i % len(names)
    return [*names[k:], *names[:k]]


@dataclass
class _Rig:
    app: BenchAppliance
    containers: dict[str, str]  # proxied/direct -> container name
    pids: list[int]
    dns_port: int
    script: Path

    def exec(self, who: str, *args: str) -> tuple[dict[str, Any], float]:
        """Run the client in a sandbox: (its JSON, the appliance's CPU seconds meanwhile)."""
        meter = procs.CpuMeter(self.pids)
        meter.start()
        out = podman("exec", self.containers[who], "python3", CLIENT_PATH, *args)
        cpu = meter.stop()
        data: dict[str, Any] = json.loads(out)
        return data, cpu

    def host(self, *args: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, str(self.script), *args], check=True, capture_output=True, text=True,
                             timeout=120).stdout  # fmt: skip
        data: dict[str, Any] = json.loads(out)
        return data


# -- parts ------------------------------------------------------------------------------------


def _connects(rig: _Rig, plan: EgressPlan, result: EgressResult) -> None:
    for i in range(plan.connect_rounds):
        for who in _rotated(SANDBOXES, i):
            data, cpu = rig.exec(who, "connect", str(plan.connect_per_round))
            result.connect_ms.setdefault(who, []).append(data["ms"])
            # The untimed first connection counts for the CPU too.
            result.cpu.setdefault("connect", {}).setdefault(who, []).append((cpu, plan.connect_per_round + 1))


def _transfers(rig: _Rig, plan: EgressPlan, result: EgressResult) -> None:
    size = plan.transfer_mib << 20
    warm = 1 << 20
    for i in range(plan.transfer_rounds):
        for who in _rotated(SANDBOXES, i):
            for way, samples in (("download", result.download_mb_s), ("upload", result.upload_mb_s)):
                data, cpu = rig.exec(who, way, str(size))
                samples.setdefault(who, []).append(data["mb_s"])
                result.transfer_busy.setdefault(who, []).append(cpu / data["seconds"])
                result.cpu.setdefault("transfer", {}).setdefault(who, []).append((cpu, size + warm))


def _echoes(rig: _Rig, plan: EgressPlan, result: EgressResult) -> None:
    for i in range(plan.echo_rounds):
        for who in _rotated(SANDBOXES, i):
            data, _ = rig.exec(who, "echo", str(plan.echo_per_round), str(plan.echo_warmup))
            result.echo_ms.setdefault(who, []).append(data["ms"])


def _lookups(rig: _Rig, plan: EgressPlan, result: EgressResult) -> None:
    for i in range(plan.dns_rounds):
        for who in _rotated((*SANDBOXES, "host to upstream"), i):
            if who == "host to upstream":
                data = rig.host("dns-host", str(plan.dns_per_round), "127.0.0.1", str(rig.dns_port))
            else:
                data, _ = rig.exec(who, "dns", str(plan.dns_per_round))
                result.getaddrinfo_ms.setdefault(who, []).append(data["getaddrinfo_ms"])
                if i == 0:
                    result.notes.append(f"{who}: resolv.conf names {data['nameserver']}")
            result.dns_query_ms.setdefault(who, []).append(data["query_ms"])


def run(plan: EgressPlan, *, log: Callable[[str], None] = print) -> EgressResult:
    """The rig, then every part in turn; a part that fails is recorded in `failed` and the others still run."""
    result = EgressResult(plan=plan)
    folder = Path(tempfile.mkdtemp(prefix="sbx-egress-bench-", dir="/tmp"))
    try:
        script = folder / "egressbench.py"
        script.write_text(client_script())
        with internet(log), name_server() as dns_port:
            env = {"SCALEBOX_DNS_UPSTREAM": f"127.0.0.1:{dns_port}"}
            with running_appliance(env) as app:
                assert app.process is not None
                ids = {who: _create(app, NETWORKS[who]) for who in SANDBOXES}
                try:
                    containers = {who: f"scalebox-{sid}" for who, sid in ids.items()}
                    for name in containers.values():
                        podman("cp", str(script), f"{name}:{CLIENT_PATH}")
                    pids = procs.same_program(app.process.pid)
                    result.appliance_pids = len(pids)
                    rig = _Rig(app, containers, pids, dns_port, script)
                    log(f"egress: sandboxes {ids}; appliance processes {pids}")
                    _run_parts(rig, plan, result, log)
                    _check_paths(app, ids, result)
                finally:
                    for sid in ids.values():
                        _delete(app, sid)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _run_parts(rig: _Rig, plan: EgressPlan, result: EgressResult, log: Callable[[str], None]) -> None:
    def part(name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # keep the other parts' numbers; say what broke
            log(f"egress: {name} failed: {exc!r}")
            result.failed.append(f"{name}: {exc!r}"[:300])

    n = plan.connect_rounds * plan.connect_per_round
    log(f"egress: new connection + GET + first byte, {n} per sandbox")
    part("connect", lambda: _connects(rig, plan, result))
    log(f"egress: {plan.transfer_mib} MiB down and up, {plan.transfer_rounds} per sandbox")
    part("transfer", lambda: _transfers(rig, plan, result))
    log(f"egress: {MESSAGE_BYTES}-byte round trips, {plan.echo_rounds * plan.echo_per_round} per sandbox")
    part("echo", lambda: _echoes(rig, plan, result))
    log(f"egress: DNS lookups, {plan.dns_rounds * plan.dns_per_round} per sandbox and from the host")
    part("dns", lambda: _lookups(rig, plan, result))


def _check_paths(app: BenchAppliance, ids: dict[str, str], result: EgressResult) -> None:
    """The proxied sandbox's connections went through the proxy, the direct one's did not (its log)."""
    events = app.events("egress.connection")
    by = {who: sum(1 for e in events if e.get("sandbox") == sid) for who, sid in ids.items()}
    refused = sum(1 for e in events if e.get("sandbox") == ids["proxied"] and e.get("decision") != "allowed")
    result.notes.append(
        f"egress.connection log lines: proxied {by['proxied']} ({refused} not allowed), direct {by['direct']}"
    )
    if not by["proxied"] or by["direct"]:
        result.failed.append(f"paths: expected proxy log lines for proxied only, got {by}")
    result.notes.append(f"appliance CPU: {result.appliance_pids} process(es) (the appliance and its workers)")
    result.notes.append(f"host: {os.cpu_count()} CPUs")
