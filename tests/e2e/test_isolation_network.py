"""End to end, with real Podman and nftables: what a sandbox can and cannot reach.

Probes run inside sandboxes (podman exec of assets/netprobe.py). Each refused
attempt must fail fast, within a second, as a reset or an ICMP error, not a
timeout. Each "unreachable" target is first shown to be reachable from the host,
so the refusal is the firewall's, not a closed port's.

Traffic goes only to this host's own addresses, the appliance's containers and a
network namespace the test makes itself: its "internet", an address outside every
private range, routed from the host through a veth pair.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.network.ruleset import network_name, table_name
from tests.e2e.appliance import DOMAIN, Appliance, free_port, podman, stop_and_clean
from tests.e2e.helpers import container_name, copy_into, create, start_in_sandbox, wait_for

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="needs nftables and root"),
]

FAST = 1.0
PROBE = "/tmp/netprobe.py"
SANDBOX_PORT = 9000


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout


def probe(sandbox_id: str, mode: str, *args: str) -> list[dict[str, Any]]:
    out = podman("exec", container_name(sandbox_id), "python3", PROBE, mode, *args)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def host_can_connect(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def assert_refused_fast(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert result["outcome"] in ("refused", "unreachable"), result
        assert result["seconds"] < FAST, result


# -- what the tests stand on --------------------------------------------------------------------


@dataclass
class Bridge:
    name: str
    interface: str
    subnet: str
    gateway: str
    link_local: str


@dataclass
class Setup:
    app: Appliance
    bridge: Bridge
    # Two sandboxes with internet access (`other` runs a service) and one without.
    online: str
    other: str
    offline: str

    def ip(self, sandbox_id: str) -> str:
        return sandbox_ip(sandbox_id)

    def link_local(self, sandbox_id: str) -> str:
        """The sandbox's own fe80:: address on its eth0."""
        text = podman("exec", container_name(sandbox_id), "cat", "/proc/net/if_inet6")
        for line in text.splitlines():
            fields = line.split()
            if fields[-1] == "eth0" and fields[0].startswith("fe80"):
                raw = fields[0]
                return ":".join(raw[i : i + 4] for i in range(0, 32, 4))
        raise AssertionError(f"no link-local address in {sandbox_id}: {text}")


def link_local_settled(sandbox_id: str) -> bool:
    """Whether eth0's fe80:: address in the sandbox is past DAD (not IFA_F_TENTATIVE, 0x40)."""
    text = podman("exec", container_name(sandbox_id), "cat", "/proc/net/if_inet6")
    for line in text.splitlines():
        fields = line.split()
        if fields[-1] == "eth0" and fields[0].startswith("fe80"):
            return not int(fields[4], 16) & 0x40
    return False


def sandbox_ip(sandbox_id: str) -> str:
    inspected = json.loads(podman("inspect", container_name(sandbox_id)))[0]
    (network,) = inspected["NetworkSettings"]["Networks"].values()
    return str(network["IPAddress"])


def bridge_of(app: Appliance) -> Bridge:
    name = network_name(app.instance_id)
    network = json.loads(podman("network", "inspect", name))[0]
    subnet = network["subnets"][0]
    interface = network["network_interface"]
    # The bridge's link-local address is "tentative" for a moment while the kernel checks
    # it is unique (DAD); nothing can connect to it until then.
    link_local = ""

    def settled() -> bool:
        nonlocal link_local
        addresses = json.loads(run("ip", "-j", "-6", "addr", "show", "dev", interface))
        found = [
            a["local"]
            for i in addresses
            for a in i["addr_info"]
            if a["local"].startswith("fe80") and not a.get("tentative")
        ]
        link_local = found[0] if found else ""
        return bool(found)

    wait_for(settled, 10, f"a settled link-local address on {interface}")
    return Bridge(name, interface, subnet["subnet"], subnet["gateway"], link_local)


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    port = free_port()
    # Every interface, as a real install listens, so sandboxes can find the public port
    # on the bridge gateway address.
    app = Appliance(data_dir=data_dir, port=port, extra_args=("--listen", str(port)))
    try:
        app.start()
        with app.client() as api:
            online = create(app, api)["sandbox_id"]
            other = create(app, api)["sandbox_id"]
            offline = create(app, api, allow_internet_access=False)["sandbox_id"]
        for sid in (online, other, offline):
            copy_into(sid, "netprobe.py", PROBE)
        # Dual-stack, so the IPv6 probe meets a listener too.
        start_in_sandbox(other, "python3", "-m", "http.server", "--bind", "::", str(SANDBOX_PORT))
        start_in_sandbox(offline, "python3", "-m", "http.server", "--bind", "::", str(SANDBOX_PORT))
        bridge = bridge_of(app)
        setup = Setup(app, bridge, online, other, offline)
        # Each sandbox's own link-local address must be past DAD too, or an IPv6 probe
        # from it fails with "cannot assign requested address" rather than a refusal.
        for sid in (online, other, offline):
            wait_for(lambda sid=sid: link_local_settled(sid), 10, f"a settled link-local address in {sid}")
        for sid in (other, offline):
            ip = setup.ip(sid)
            wait_for(lambda ip=ip: host_can_connect(ip, SANDBOX_PORT), 15, f"port {SANDBOX_PORT} in {sid}")
        yield setup
    finally:
        stop_and_clean(app)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A TCP service of the host on every address, IPv4 and IPv6, as careless ones are."""
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", 0))
    server.listen(16)
    # close() does not wake a thread blocked in accept(): it polls a stop flag instead,
    # so it never accepts on a descriptor some later test reuses.
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"host-secret\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


@dataclass
class Internet:
    address: str
    port: int


@pytest.fixture(scope="module")
def internet() -> Iterator[Internet]:
    """A host "on the internet": a TCP service in a network namespace of the test's own,
    at a documentation address (TEST-NET-3) routed from the host through a veth pair."""
    tag = secrets.token_hex(3)
    netns, host_if, ns_if = f"sbxinet-{tag}", f"sbxih{tag}", f"sbxin{tag}"
    base = 4 * random.randrange(64)
    host_side, ns_side = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
    address, port = f"203.0.113.{random.randrange(1, 255)}", 8080
    server: subprocess.Popen[str] | None = None
    try:
        run("ip", "netns", "add", netns)
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", netns)
        run("ip", "addr", "add", f"{host_side}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "-n", netns, "addr", "add", f"{ns_side}/30", "dev", ns_if)
        run("ip", "-n", netns, "link", "set", ns_if, "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        run("ip", "-n", netns, "addr", "add", f"{address}/32", "dev", "lo")
        run("ip", "-n", netns, "route", "add", "default", "via", host_side)
        run("ip", "route", "add", f"{address}/32", "via", ns_side)
        code = (
            "import socket,sys\n"
            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('{address}',{port}));s.listen(16);print('ready',flush=True)\n"
            "while True:\n c,_=s.accept();c.sendall(b'internet-hello\\n');c.close()\n"
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, "python3", "-c", code], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert host_can_connect(address, port)
        yield Internet(address, port)
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        # The veth pair and the route go with the namespace.
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)


def host_addresses(exclude: str) -> list[str]:
    """The host's own IPv4 addresses on interfaces other than loopback and the sandboxes' bridge."""
    out = []
    for interface in json.loads(run("ip", "-j", "-4", "addr")):
        if interface["ifname"] in ("lo", exclude):
            continue
        out += [a["local"] for a in interface["addr_info"]]
    return out


# -- the sandbox and the host -----------------------------------------------------------------------


def test_sandboxes_are_on_the_appliances_own_network(setup: Setup) -> None:
    app, bridge = setup.app, setup.bridge
    assert bridge.name == network_name(app.instance_id)
    for sid in (setup.online, setup.offline):
        networks = json.loads(podman("inspect", container_name(sid)))[0]["NetworkSettings"]["Networks"]
        assert list(networks) == [bridge.name]
    tables = run("nft", "list", "tables")
    assert f"table inet {table_name(app.instance_id)}" in tables
    assert f"table bridge {table_name(app.instance_id)}" in tables
    assert app.events("firewall.installed")


def test_host_services_are_refused_on_every_host_address(setup: Setup, host_service: int) -> None:
    addresses = [setup.bridge.gateway, *host_addresses(setup.bridge.interface)]
    for address in addresses:
        assert host_can_connect(address, host_service), address
    targets = [f"{a}:{host_service}" for a in addresses]
    # IPv6 too: the host's link-local address on the bridge.
    targets.append(f"[{setup.bridge.link_local}%eth0]:{host_service}")
    assert host_can_connect(f"{setup.bridge.link_local}%{setup.bridge.interface}", host_service)
    for sid in (setup.online, setup.offline):
        results = probe(sid, "tcp", *targets)
        assert len(results) == len(targets)
        assert_refused_fast(results)


def test_the_appliances_other_listeners_are_refused(setup: Setup) -> None:
    """A host port the gateway forwards (a listener of the appliance's own) is not the public port."""
    app = setup.app
    with app.client() as api:
        resp = api.post(
            f"{app.api_url}/sandboxes/{setup.other}/ports",
            json={"port": SANDBOX_PORT + 1, "name": "raw", "protocol": "tcp", "host_port": True},
        )
    assert resp.status_code in (200, 201), resp.text
    host_port = int(resp.json()["data"]["host_port"])
    # It listens on every address, as the gateway port does: the bridge gateway's too.
    wait_for(lambda: host_can_connect(setup.bridge.gateway, host_port), 10, "the host port listener")
    assert_refused_fast(probe(setup.online, "tcp", f"{setup.bridge.gateway}:{host_port}"))


def test_the_api_and_podman_sockets_are_not_in_the_sandbox(setup: Setup) -> None:
    data_dir = setup.app.data_dir
    sockets = [str(data_dir / "api.sock"), str(data_dir / "podman" / "podman.sock"), "/run/podman/podman.sock"]
    assert all(Path(s).exists() for s in sockets[:2])
    results = probe(setup.online, "path", str(data_dir), *sockets)
    assert [r["exists"] for r in results] == [False] * len(results)
    # Unix sockets belong to a network namespace: none of the host's is listed inside.
    listed = podman("exec", container_name(setup.online), "cat", "/proc/net/unix")
    assert "api.sock" not in listed and "podman.sock" not in listed


def test_the_public_gateway_port_is_reachable_as_from_the_internet(setup: Setup) -> None:
    app, gateway = setup.app, setup.bridge.gateway
    (api,) = probe(setup.online, "http", f"{gateway}:{app.port}", f"api.{DOMAIN}:{app.port}")
    assert api["outcome"] == "open", api
    # The control plane answers, as it would anyone without an API key.
    assert api["data"].startswith("HTTP/1.1 401"), api
    # Another sandbox's port, through the gateway (undeclared ports are public http).
    (port,) = probe(setup.online, "http", f"{gateway}:{app.port}", f"{SANDBOX_PORT}-{setup.other}.{DOMAIN}")
    assert port["data"].startswith("HTTP/1.1 200"), port


# -- sandbox to sandbox ---------------------------------------------------------------------------------


def test_sandboxes_cannot_reach_each_other(setup: Setup) -> None:
    other_ip = setup.ip(setup.other)
    other_ll = setup.link_local(setup.other)
    # The host reaches both (the gateway connects so), over IPv4 and IPv6.
    assert host_can_connect(other_ip, SANDBOX_PORT)
    assert host_can_connect(f"{other_ll}%{setup.bridge.interface}", SANDBOX_PORT)
    targets = [f"{other_ip}:{SANDBOX_PORT}", f"{other_ip}:8888", f"[{other_ll}%eth0]:{SANDBOX_PORT}"]
    assert_refused_fast(probe(setup.online, "tcp", *targets))
    assert_refused_fast(probe(setup.offline, "tcp", *targets))
    # Nor the other way round.
    assert_refused_fast(probe(setup.other, "tcp", f"{setup.ip(setup.offline)}:{SANDBOX_PORT}"))


# -- allow_internet_access ----------------------------------------------------------------------------------


def test_a_sandbox_with_internet_access_reaches_the_internet(setup: Setup, internet: Internet) -> None:
    (result,) = probe(setup.online, "tcp", f"{internet.address}:{internet.port}")
    assert result["outcome"] == "open", result
    assert result["data"] == "internet-hello\n"


def test_a_sandbox_without_internet_access_reaches_nothing(setup: Setup, internet: Internet) -> None:
    app, gateway = setup.app, setup.bridge.gateway
    assert_refused_fast(probe(setup.offline, "tcp", f"{internet.address}:{internet.port}", f"{gateway}:{app.port}"))
    # No DNS either: nothing leaves by a resolver. It fails at once too.
    (dns,) = probe(setup.offline, "dns", "example.com")
    assert dns["outcome"] == "error" and dns["seconds"] < 2 * FAST, dns
    # Every sandbox's only name server is the appliance's resolver on the bridge
    # (test_egress.py has what it answers).
    for sid in (setup.online, setup.offline):
        resolv = podman("exec", container_name(sid), "cat", "/etc/resolv.conf")
        assert [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")] == [gateway]


def test_a_sandbox_without_internet_access_is_still_served_through_the_gateway(setup: Setup) -> None:
    app = setup.app
    with app.client() as client:
        resp = client.get(app.url(f"{SANDBOX_PORT}-{setup.offline}"))
    assert resp.status_code == 200


# -- rules follow the sandboxes -------------------------------------------------------------------------------


def online_set(app: Appliance) -> set[str]:
    listed = json.loads(run("nft", "-j", "list", "set", "inet", table_name(app.instance_id), "online"))
    for entry in listed["nftables"]:
        if "set" in entry:
            return {e if isinstance(e, str) else json.dumps(e) for e in entry["set"].get("elem", [])}
    raise AssertionError(listed)


def test_rules_follow_sandboxes_and_survive_a_restart(new_appliance: Any) -> None:
    app: Appliance = new_appliance()
    table = table_name(app.instance_id)
    with app.client() as api:
        first, offline, second = (
            create(app, api, allow_internet_access=allowed)["sandbox_id"] for allowed in (True, False, True)
        )
    assert online_set(app) == {sandbox_ip(first), sandbox_ip(second)}

    with app.client() as api:
        deleted = api.delete(f"{app.api_url}/sandboxes/{first}")
        assert deleted.status_code == 202, deleted.text
    assert online_set(app) == {sandbox_ip(second)}

    # A clean stop leaves the rules while sandboxes live on (they stay isolated); the
    # next start rebuilds them from the database.
    assert app.stop() == 0
    assert app.events("firewall.kept")
    assert f"table inet {table}" in run("nft", "list", "tables")
    run("nft", "flush", "set", "inet", table, "online")
    app = new_appliance()
    assert online_set(app) == {sandbox_ip(second)}

    # Tables removed behind its back (a `flush ruleset`) are written whole on the next change.
    run("nft", "delete", "table", "inet", table)
    with app.client() as api:
        third = create(app, api)["sandbox_id"]
    assert online_set(app) == {sandbox_ip(second), sandbox_ip(third)}
    assert app.events("firewall.rewriting")

    # With nothing left, a clean stop removes them.
    with app.client() as api:
        for sid in (offline, second, third):
            deleted = api.delete(f"{app.api_url}/sandboxes/{sid}")
            assert deleted.status_code == 202, deleted.text
    assert app.stop() == 0
    assert app.events("firewall.removed")
    assert table not in run("nft", "list", "tables")


def test_rule_writes_are_logged_with_their_duration(setup: Setup) -> None:
    (installed,) = setup.app.events("firewall.installed")
    updates = [e["seconds"] for e in setup.app.events("firewall.updated")]
    # Two sandboxes with internet access were let out, one at a time (one without costs nothing).
    assert len(updates) >= 2
    assert installed["seconds"] < 1 and max(updates) < 1, (installed, updates)
    print(f"\nrules installed in {installed['seconds']} s; per-sandbox updates {sorted(updates)} s")
