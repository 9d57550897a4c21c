"""End to end, with real Podman and nftables: per-sandbox egress policies.

The "internet" is a network namespace the test makes itself, holding four hosts
(documentation-range addresses routed from the host through a veth pair), each
with HTTP on 80, TLS on 443, a banner on 8080 and a UDP echo on 7. Its name
server is a small one in this process, given to the appliance as its upstream
(--dns-upstream); it records every query that reached it, so a name the resolver
refused can be shown never to have left the host.

    allowed.test    -> ALLOWED     cdn.allowed.test -> ALLOWED
    denied.test     -> DENIED      other.test       -> OTHER
    (no name)          BARE

Probes run inside sandboxes (podman exec of assets/egressprobe.py). Every refusal
must come fast: a reset, a refusal or an ICMP error within a second, never a hang.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme

from tests.e2e.appliance import Appliance, free_port, podman, stop_and_clean
from tests.e2e.helpers import ASSETS, container_name, copy_into, create

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="needs nftables and root"),
]

FAST = 1.0
PROBE = "/tmp/egressprobe.py"
NET = "198.18.77"
ALLOWED, DENIED, OTHER, BARE = (f"{NET}.{n}" for n in (10, 20, 30, 40))
ZONE = {
    "allowed.test": ALLOWED,
    "cdn.allowed.test": ALLOWED,
    "denied.test": DENIED,
    "other.test": OTHER,
}


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout


# -- the internet ---------------------------------------------------------------------------------


@dataclass
class NameServer:
    port: int
    queries: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def name_server() -> Iterator[NameServer]:
    """Authoritative for *.test (ZONE), NXDOMAIN for the rest; on loopback, for the appliance."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    # A thread blocked in recvfrom is not woken by close(): it would read from whatever
    # reuses the descriptor later (another test's socket). So it polls a stop flag.
    sock.settimeout(0.2)
    stop = threading.Event()
    server = NameServer(port=sock.getsockname()[1])

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue  # not a DNS query: nothing to answer
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            server.queries.append(name)
            response = dns.message.make_response(query)
            address = ZONE.get(name)
            if address is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(question.name, 30, "IN", "A", address))
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        sock.close()


@pytest.fixture(scope="module")
def internet() -> Iterator[None]:
    tag = secrets.token_hex(3)
    netns, host_if, ns_if = f"sbxegr-{tag}", f"sbxeh{tag}", f"sbxen{tag}"
    base = 4 * random.randrange(64)
    host_side, ns_side = f"198.18.200.{base + 1}", f"198.18.200.{base + 2}"
    folder = Path(tempfile.mkdtemp(prefix="sbx-egress-", dir="/tmp"))
    ca = trustme.CA()
    leaf = ca.issue_cert("allowed.test", "denied.test", "other.test")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    server: subprocess.Popen[str] | None = None
    try:
        run("ip", "netns", "add", netns)
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", netns)
        run("ip", "addr", "add", f"{host_side}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "-n", netns, "addr", "add", f"{ns_side}/30", "dev", ns_if)
        run("ip", "-n", netns, "link", "set", ns_if, "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        for address in (ALLOWED, DENIED, OTHER, BARE):
            run("ip", "-n", netns, "addr", "add", f"{address}/32", "dev", "lo")
        run("ip", "-n", netns, "route", "add", "default", "via", host_side)
        run("ip", "route", "add", f"{NET}.0/24", "via", ns_side)
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, "python3", str(ASSETS / "internet.py"),
             str(folder / "cert.pem"), str(folder / "key.pem"), ALLOWED, DENIED, OTHER, BARE],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with socket.create_connection((DENIED, 8080), timeout=5) as sock:
            assert sock.recv(100).startswith(b"banner")
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# -- the appliance and its sandboxes ----------------------------------------------------------------


@dataclass
class Sandboxes:
    app: Appliance
    # allow_out: names and a CIDR
    allowlist: str
    # deny_out only
    denylist: str
    # no lists
    open: str
    # allow_internet_access false
    offline: str


@pytest.fixture(scope="module")
def sandboxes(name_server: NameServer, internet: None) -> Iterator[Sandboxes]:
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    app = Appliance(data_dir=data_dir, port=free_port(), extra_args=("--dns-upstream", f"127.0.0.1:{name_server.port}"))
    try:
        app.start()
        with app.client() as api:
            allowlist = create(app, api, network={"allow_out": ["allowed.test", "*.allowed.test", f"{BARE}/32"]})
            denylist = create(app, api, network={"deny_out": ["denied.test", f"{OTHER}/32"]})
            opened = create(app, api)
            offline = create(app, api, allow_internet_access=False, network={"allow_out": ["allowed.test"]})
        ids = [s["sandbox_id"] for s in (allowlist, denylist, opened, offline)]
        for sid in ids:
            copy_into(sid, "egressprobe.py", PROBE)
        yield Sandboxes(app, *ids)
    finally:
        stop_and_clean(app)
        shutil.rmtree(data_dir, ignore_errors=True)


def probe(sandbox_id: str, mode: str, *args: str) -> dict[str, Any]:
    out = podman("exec", container_name(sandbox_id), "python3", PROBE, mode, *args)
    result: dict[str, Any] = json.loads(out)
    return result


def assert_open(result: dict[str, Any], data: str) -> None:
    assert result["outcome"] == "open", result
    assert data in result.get("data", "") or data in result.get("addresses", []), result


def assert_refused(result: dict[str, Any]) -> None:
    assert result["outcome"] in ("reset", "refused", "unreachable"), result
    assert result["seconds"] < FAST, result


def assert_forbidden(result: dict[str, Any], why: str) -> None:
    """The egress proxy's answer to an HTTP request it refuses."""
    assert result["outcome"] == "open", result
    assert result["data"].startswith("HTTP/1.1 403"), result
    assert why in result["data"], result
    assert result["seconds"] < FAST, result


# -- an allow list ----------------------------------------------------------------------------------


def test_the_create_answer_and_get_network_show_the_policy(sandboxes: Sandboxes) -> None:
    app = sandboxes.app
    with app.client() as api:
        got = api.get(f"{app.api_url}/sandboxes/{sandboxes.allowlist}/network")
        sandbox = api.get(f"{app.api_url}/sandboxes/{sandboxes.allowlist}")
    assert got.status_code == 200, got.text
    expected = {
        "allow_internet_access": True,
        "allow_out": [f"{BARE}/32", "allowed.test", "*.allowed.test"],
        "deny_out": [],
    }
    assert {k: got.json()["data"][k] for k in expected} == expected
    assert sandbox.json()["data"]["network"] == expected


def test_allowed_names_resolve_and_connect(sandboxes: Sandboxes) -> None:
    sid = sandboxes.allowlist
    assert_open(probe(sid, "dns", "allowed.test"), ALLOWED)
    assert_open(probe(sid, "dns", "cdn.allowed.test"), ALLOWED)
    assert_open(probe(sid, "http", "allowed.test", "80", "allowed.test"), f"host=allowed.test addr={ALLOWED}")
    assert_open(probe(sid, "tls", "allowed.test", "443", "allowed.test"), f"tls-hello addr={ALLOWED}")
    # A server that speaks first: nothing to sniff, decided by the address the name gave.
    assert_open(probe(sid, "tcp", "cdn.allowed.test", "8080"), f"banner addr={ALLOWED}")


def test_denied_names_are_not_resolved_and_never_leave_the_host(sandboxes: Sandboxes, name_server: NameServer) -> None:
    sid = sandboxes.allowlist
    secret = f"{secrets.token_hex(8)}.exfil.denied.test"
    for name in ("denied.test", "other.test", secret):
        result = probe(sid, "dns", name)
        assert result["outcome"] == "error", result
        assert result["seconds"] < 2 * FAST, result
    # The refused names were answered by the appliance; its upstream never heard of them.
    assert "allowed.test" in name_server.queries
    assert not {"denied.test", "other.test", secret} & set(name_server.queries)
    refused = [e for e in sandboxes.app.events("egress.dns") if e.get("decision") == "refused"]
    assert {e["query"] for e in refused if e.get("sandbox") == sid} >= {"denied.test", "other.test", secret}


def test_a_bare_address_counts_only_if_it_is_allowed(sandboxes: Sandboxes) -> None:
    sid = sandboxes.allowlist
    # Never resolved and named by no CIDR: every protocol is refused, at once.
    assert_refused(probe(sid, "tcp", DENIED, "8080"))
    assert_refused(probe(sid, "tls", DENIED, "443", "allowed.test"))
    assert_forbidden(probe(sid, "http", DENIED, "80", "allowed.test"), f"address {DENIED} is not allowed")
    assert_refused(probe(sid, "udp", DENIED, "7"))
    # Named by a CIDR of the allow list: TCP and UDP both pass.
    assert_open(probe(sid, "tcp", BARE, "8080"), f"banner addr={BARE}")
    assert_open(probe(sid, "udp", BARE, "7"), "pong ping")


def test_sni_and_host_must_name_an_allowed_name(sandboxes: Sandboxes) -> None:
    """Domain fronting: an allowed address, a name the policy denies."""
    sid = sandboxes.allowlist
    assert_open(probe(sid, "dns", "allowed.test"), ALLOWED)
    assert_refused(probe(sid, "tls", ALLOWED, "443", "denied.test"))
    assert_forbidden(probe(sid, "http", ALLOWED, "80", "denied.test"), "denied.test is not allowed")
    # The same address and an allowed name pass.
    assert_open(probe(sid, "tls", ALLOWED, "443", "cdn.allowed.test"), "tls-hello")


def test_every_connection_decision_is_logged(sandboxes: Sandboxes) -> None:
    sid = sandboxes.allowlist
    probe(sid, "tls", ALLOWED, "443", "denied.test")
    events = [e for e in sandboxes.app.events("egress.connection") if e.get("sandbox") == sid]
    assert any(e["decision"] == "allowed" for e in events), events
    refused = [e for e in events if e["decision"] == "refused" and e.get("destination") == f"{ALLOWED}:443"]
    assert refused and "denied.test" in refused[-1]["why"], events


# -- a deny list, no lists, no internet ------------------------------------------------------------------


def test_a_deny_list_refuses_what_it_names_and_lets_the_rest_out(sandboxes: Sandboxes) -> None:
    sid = sandboxes.denylist
    assert_open(probe(sid, "http", "allowed.test", "80", "allowed.test"), "host=allowed.test")
    assert_open(probe(sid, "tcp", BARE, "8080"), "banner")
    assert probe(sid, "dns", "denied.test")["outcome"] == "error"
    # By address (its CIDR) whatever the protocol, and by name on a shared address.
    assert_refused(probe(sid, "tcp", OTHER, "8080"))
    assert_refused(probe(sid, "udp", OTHER, "7"))
    assert_refused(probe(sid, "tls", ALLOWED, "443", "denied.test"))
    assert_forbidden(probe(sid, "http", ALLOWED, "80", "denied.test"), "denied.test is not allowed")


def test_dns_goes_to_the_appliance_whichever_server_is_asked(sandboxes: Sandboxes, name_server: NameServer) -> None:
    """A sandbox with lists cannot get round the resolver by asking another server."""
    sid = sandboxes.denylist
    code = (
        "import socket,sys\n"
        "q=bytes.fromhex('abcd01000001000000000000')+b'\\x06denied\\x04test\\x00\\x00\\x01\\x00\\x01'\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3)\n"
        f"s.sendto(q,('{OTHER}',53));r=s.recv(512);print(r[3]&15)\n"
    )
    before = name_server.queries.count("denied.test")
    rcode = podman("exec", container_name(sid), "python3", "-c", code).strip()
    assert rcode == str(dns.rcode.REFUSED), rcode
    assert name_server.queries.count("denied.test") == before


def test_a_sandbox_without_lists_goes_anywhere_directly(sandboxes: Sandboxes) -> None:
    sid = sandboxes.open
    assert_open(probe(sid, "tls", DENIED, "443", "anything.example"), f"tls-hello addr={DENIED}")
    assert_open(probe(sid, "dns", "denied.test"), DENIED)
    # Not through the proxy: it logged nothing for this sandbox.
    assert not [e for e in sandboxes.app.events("egress.connection") if e.get("sandbox") == sid]


def test_no_internet_access_blocks_everything(sandboxes: Sandboxes) -> None:
    sid = sandboxes.offline
    for attempt in (("tcp", ALLOWED, "8080"), ("tcp", BARE, "8080"), ("udp", ALLOWED, "7")):
        assert_refused(probe(sid, *attempt))
    result = probe(sid, "dns", "allowed.test")
    assert result["outcome"] == "error" and result["seconds"] < 2 * FAST, result


# -- changing a policy -----------------------------------------------------------------------------------


def test_put_network_replaces_the_policy_and_takes_effect_at_once(sandboxes: Sandboxes) -> None:
    app, sid = sandboxes.app, sandboxes.open
    with app.client() as api:
        url = f"{app.api_url}/sandboxes/{sid}/network"
        bad = api.put(url, json={"allow_out": ["not a name!"]})
        assert bad.status_code == 400, bad.text
        assert "allow_out" in bad.json()["message"]
        unknown = api.put(url, json={"allow": ["x.test"]})
        assert unknown.status_code == 400 and "allow_out" in unknown.json()["message"]
        resp = api.put(url, json={"allow_out": ["allowed.test"]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"]["allow_out"] == ["allowed.test"]
    assert_refused(probe(sid, "tcp", DENIED, "8080"))
    assert_open(probe(sid, "http", "allowed.test", "80", "allowed.test"), "host=allowed.test")
    with app.client() as api:
        resp = api.put(url, json={"allow_internet_access": False})
        assert resp.status_code == 200 and resp.json()["data"]["allow_internet_access"] is False
    assert_refused(probe(sid, "tcp", ALLOWED, "80"))
    with app.client() as api:
        resp = api.put(url, json={"allow_internet_access": True, "allow_out": [], "deny_out": []})
        assert resp.status_code == 200, resp.text
    assert_open(probe(sid, "tcp", DENIED, "8080"), "banner")
    with app.client() as api:
        missing = api.put(f"{app.api_url}/sandboxes/sbx-nope/network", json={})
    assert missing.status_code == 404
