"""Host normalisation, the route table and the access decision: pure functions, no I/O."""

from __future__ import annotations

import pytest

from controlplane.tokens import mint_access_token, verify_access_token
from gateway.access import AGENT_PORT, Forward, Refuse, SandboxView, decide
from gateway.proxy import bypasses_token
from gateway.routing.hosts import InvalidHost, normalise_host, split_host_port
from gateway.routing.table import AgentRoute, ApiRoute, NoRoute, PortRoute, Route, route
from gateway.upstream import TcpAddress, UnixAddress

D = "sbx.localhost"
SBX = "sbx-abcd1234"

# -- split_host_port ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("example.com:8443", ("example.com", 8443)),
        ("example.com:1", ("example.com", 1)),
        ("example.com:65535", ("example.com", 65535)),
        # RFC 3986 allows leading zeros in a port.
        ("example.com:0080", ("example.com", 80)),
        ("[::1]", ("::1", None)),
        ("[::1]:8443", ("::1", 8443)),
        ("  example.com:80  ", ("example.com", 80)),
        # Two colons without brackets: an unbracketed IPv6 literal, no port split off.
        ("::1", ("::1", None)),
    ],
)
def test_split_host_port_accepts(value: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "example.com:0",
        "example.com:65536",
        "example.com:99999",
        "example.com:",
        "example.com:-1",
        "example.com:+80",
        "example.com: 80",
        "example.com:http",
        "example.com:8o",
        "example.com:" + "9" * 5000,  # int() refuses more than 4300 digits with ValueError
        "example.com:²",  # isdigit() but not int()-able
        "example.com:٨٠",  # Arabic-Indic digits that int() would read as 80
        "[::1",
        "[::1]8443",
        "[::1]:",
        "[::1]:0",
        "[::1]:65536",
    ],
)
def test_split_host_port_refuses_with_invalid_host(value: str) -> None:
    with pytest.raises(InvalidHost):
        split_host_port(value)


def test_invalid_host_is_a_value_error() -> None:
    assert issubclass(InvalidHost, ValueError)


# -- normalise_host ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api.sbx.localhost", "api.sbx.localhost"),
        ("API.SBX.LOCALHOST", "api.sbx.localhost"),
        ("Api.Sbx.Localhost:8443", "api.sbx.localhost"),
        ("api.sbx.localhost.", "api.sbx.localhost"),
        ("api.sbx.localhost.:8443", "api.sbx.localhost"),
        (b"SBX-ABCD1234.sbx.localhost:443", "sbx-abcd1234.sbx.localhost"),
        (b"3000-sbx-abcd1234.sbx.localhost", "3000-sbx-abcd1234.sbx.localhost"),
        ("localhost", "localhost"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        # A numeric label is a legal name here; it matches no route later.
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:65535", "127.0.0.1"),
    ],
)
def test_normalise_host_canonical_form(value: str | bytes, expected: str) -> None:
    assert normalise_host(value) == expected


def test_normalise_host_bytes_and_str_agree() -> None:
    assert normalise_host(b"Api.Sbx.Localhost.:8443") == normalise_host("Api.Sbx.Localhost.:8443")


@pytest.mark.parametrize(
    "value",
    [
        "",
        b"",
        "   ",
        ".",
        ":80",
        "api.sbx.localhost..",
        "..",
        "a..b",
        ".a",
        "-a.com",
        "a-.com",
        "a_b.com",
        "a b.com",
        "a/b.com",
        "a@b.com",
        "a\x00.com",
        "a\n.example.com",  # `$` in a regex matches before a final newline
        "a.example.com\nX",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4) + ".com",  # 252+ characters
        "api.sbx.localhost:0",
        "api.sbx.localhost:65536",
        "api.sbx.localhost:abc",
        "api.sbx.localhost:" + "1" * 5000,
        "[::1]",
        "[::1]:8443",
        "[fe80::1%eth0]:80",
        "::1",
        "a:b:c",
        b"\xff\xfe\x00garbage",
        b"api.sbx.localhost\x80",
        "bücher.example",
        "\u212a.example",  # KELVIN SIGN lowers to ASCII "k"
        "sbx-abcd1234.sbx.localhost:²",
        "\uff41\uff50\uff49.sbx.localhost",  # fullwidth letters
    ],
)
def test_normalise_host_refuses(value: str | bytes) -> None:
    with pytest.raises(InvalidHost):
        normalise_host(value)


def test_normalise_host_length_limit_is_253() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalise_host(name) == name
    with pytest.raises(InvalidHost):
        normalise_host(name + "d")


# -- route ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (f"api.{D}", ApiRoute()),
        (f"{SBX}.{D}", AgentRoute(SBX)),
        (f"sbx-{'a' * 40}.{D}", AgentRoute(f"sbx-{'a' * 40}")),
        (f"3000-{SBX}.{D}", PortRoute(SBX, 3000)),
        (f"1-{SBX}.{D}", PortRoute(SBX, 1)),
        (f"8888-{SBX}.{D}", PortRoute(SBX, 8888)),
        (f"65535-{SBX}.{D}", PortRoute(SBX, 65535)),
    ],
)
def test_route_matches(host: str, expected: Route) -> None:
    assert route(host, D) == expected


@pytest.mark.parametrize(
    "host",
    [
        D,
        f"x{D}",
        f"api.{D}.evil.com",
        f"{SBX}.{D}.evil.com",
        f"api.x.{D}",
        f"www.{SBX}.{D}",
        f"{SBX}.example.com",
        f"sbx-abc.{D}",  # id too short
        f"sbx-{'a' * 41}.{D}",  # id too long
        f"sbx-ab_cd.{D}",
        f"box-abcd1234.{D}",
        f"0-{SBX}.{D}",
        f"00-{SBX}.{D}",
        f"03000-{SBX}.{D}",  # leading zero: only the canonical spelling routes
        f"65536-{SBX}.{D}",
        f"99999-{SBX}.{D}",
        f"100000-{SBX}.{D}",
        f"-3000-{SBX}.{D}",
        f"3000-.{D}",
        f"3000-api.{D}",
        f"http-{SBX}.{D}",
        f"3000-3000-{SBX}.{D}",
        f"{SBX}\n.{D}",
        f"3000-{SBX}\n.{D}",
    ],
)
def test_route_refuses(host: str) -> None:
    result = route(host, D)
    assert isinstance(result, NoRoute)
    assert result.reason


def test_route_reason_names_port_out_of_range() -> None:
    result = route(f"65536-{SBX}.{D}", D)
    assert isinstance(result, NoRoute)
    assert "65536" in result.reason


def test_route_after_normalisation_ignores_case_port_and_trailing_dot() -> None:
    assert route(normalise_host(b"3000-SBX-ABCD1234.Sbx.Localhost.:8443"), D) == PortRoute(SBX, 3000)
    assert route(normalise_host("API.sbx.localhost:443"), D) == ApiRoute()


def test_route_other_domain() -> None:
    assert route("api.example.org", "example.org") == ApiRoute()
    assert route(f"{SBX}.example.org", "example.org") == AgentRoute(SBX)
    assert isinstance(route(f"{SBX}.{D}", "example.org"), NoRoute)


# -- decide -------------------------------------------------------------------------------

SECRET = b"k" * 32
API = UnixAddress("/run/scalebox/api.sock")


def _decide(r: Route, sandboxes: dict[str, SandboxView], token: str | None) -> Forward | Refuse:
    return decide(
        r,
        lookup=sandboxes.get,
        access_token=token,
        verify=lambda sid, tok: verify_access_token(SECRET, sid, tok),
        api_address=API,
    )


RUNNING = {SBX: SandboxView(state="running", ip="10.99.0.2")}
GOOD = mint_access_token(SECRET, SBX)


def test_decide_api_route_forwards_without_token_or_lookup() -> None:
    def lookup(_: str) -> SandboxView | None:
        raise AssertionError("the API route needs no sandbox")

    verdict = decide(ApiRoute(), lookup=lookup, access_token=None, verify=lambda *_: False, api_address=API)
    assert verdict == Forward(API, "the control plane")


def test_decide_no_route_is_404_with_reason() -> None:
    verdict = _decide(NoRoute("nothing here"), RUNNING, GOOD)
    assert verdict == Refuse(404, "unknown_host", "nothing here")


def test_decide_agent_forwards_with_valid_token() -> None:
    verdict = _decide(AgentRoute(SBX), RUNNING, GOOD)
    assert isinstance(verdict, Forward)
    assert verdict.address == TcpAddress("10.99.0.2", AGENT_PORT)
    assert AGENT_PORT == 8888
    assert verdict.sandbox_id == SBX
    assert verdict.port == 8888
    assert SBX in verdict.target


def test_decide_port_route_forwards_without_token() -> None:
    verdict = _decide(PortRoute(SBX, 3000), RUNNING, None)
    assert isinstance(verdict, Forward)
    assert verdict.address == TcpAddress("10.99.0.2", 3000)
    assert (verdict.sandbox_id, verdict.port) == (SBX, 3000)
    assert "3000" in verdict.target


def test_decide_port_route_ignores_a_wrong_token() -> None:
    assert isinstance(_decide(PortRoute(SBX, 3000), RUNNING, "garbage"), Forward)


@pytest.mark.parametrize("r", [AgentRoute("sbx-unknown1"), PortRoute("sbx-unknown1", 80)])
def test_decide_unknown_sandbox_is_404(r: Route) -> None:
    verdict = _decide(r, RUNNING, mint_access_token(SECRET, "sbx-unknown1"))
    assert isinstance(verdict, Refuse)
    assert verdict.status == 404
    assert verdict.error == "sandbox_not_found"
    assert "sbx-unknown1" in verdict.message


def test_decide_unknown_sandbox_is_404_before_token_check() -> None:
    verdict = _decide(AgentRoute("sbx-unknown1"), RUNNING, None)
    assert isinstance(verdict, Refuse)
    assert verdict.status == 404


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sbt_wrong", "invalid"),
        (mint_access_token(SECRET, "sbx-other0000"), "invalid"),
        (mint_access_token(b"x" * 32, SBX), "invalid"),
    ],
)
def test_decide_agent_without_valid_token_is_401(token: str | None, why: str) -> None:
    verdict = _decide(AgentRoute(SBX), RUNNING, token)
    assert isinstance(verdict, Refuse)
    assert verdict.status == 401
    assert verdict.error == "unauthorized"
    assert why in verdict.message


def test_decide_token_checked_before_state() -> None:
    # An unauthenticated caller must not learn the state of the sandbox.
    verdict = _decide(AgentRoute(SBX), {SBX: SandboxView(state="paused", ip=None)}, None)
    assert isinstance(verdict, Refuse)
    assert verdict.status == 401


@pytest.mark.parametrize("state", ["paused", "starting", "pausing", "resuming", "terminating", "terminated", "failed"])
@pytest.mark.parametrize("agent", [True, False])
def test_decide_not_running_is_409_naming_the_state(state: str, agent: bool) -> None:
    r: Route = AgentRoute(SBX) if agent else PortRoute(SBX, 3000)
    verdict = _decide(r, {SBX: SandboxView(state=state, ip="10.99.0.2")}, GOOD)
    assert isinstance(verdict, Refuse)
    assert verdict.status == 409
    assert verdict.error == "sandbox_not_running"
    assert f"is {state}" in verdict.message
    assert ("resume" in verdict.message) == (state == "paused")


@pytest.mark.parametrize("ip", [None, ""])
def test_decide_running_without_address_is_409(ip: str | None) -> None:
    verdict = _decide(AgentRoute(SBX), {SBX: SandboxView(state="running", ip=ip)}, GOOD)
    assert isinstance(verdict, Refuse)
    assert verdict.status == 409


@pytest.mark.parametrize("token", [None, "", "sbt_wrong"])
def test_decide_port_route_to_the_agent_port_needs_the_token(token: str | None) -> None:
    # The agent checks no token itself: `8888-<id>.D` must not be a way around the check.
    verdict = _decide(PortRoute(SBX, AGENT_PORT), RUNNING, token)
    assert isinstance(verdict, Refuse)
    assert verdict.status == 401


def test_decide_port_route_to_the_agent_port_with_token_forwards() -> None:
    verdict = _decide(PortRoute(SBX, AGENT_PORT), RUNNING, GOOD)
    assert isinstance(verdict, Forward)
    assert verdict.address == TcpAddress("10.99.0.2", AGENT_PORT)


# -- signed file URLs ---------------------------------------------------------------------


def test_decide_signed_file_url_reaches_the_agent_without_a_header_token() -> None:
    verdict = decide(
        AgentRoute(SBX),
        lookup=RUNNING.get,
        access_token=None,
        verify=lambda *_: False,
        api_address=API,
        agent_authorises=True,
    )
    assert isinstance(verdict, Forward) and verdict.port == AGENT_PORT


def test_decide_signed_file_url_still_needs_a_known_running_sandbox() -> None:
    paused = {SBX: SandboxView(state="paused", ip="10.99.0.2")}
    for sandboxes, status in (({}, 404), (paused, 409)):
        verdict = decide(
            AgentRoute(SBX), lookup=sandboxes.get, access_token=None, verify=lambda *_: False, api_address=API,
            agent_authorises=True,
        )  # fmt: skip
        assert isinstance(verdict, Refuse) and verdict.status == status


@pytest.mark.parametrize(
    ("method", "target", "signed"),
    [
        (b"GET", b"/download/home/user/a.txt?username=user&signature=v1_abc", True),
        (b"HEAD", b"/download/a?signature=v1_abc&signature_expiration=5", True),
        (b"POST", b"/upload?path=/tmp/x&signature=v1_abc", True),
        (b"PUT", b"/upload?signature=v1_abc", True),
        (b"GET", b"/download/a", False),  # no signature
        (b"GET", b"/download/a?xsignature=v1", False),
        (b"GET", b"/health?signature=v1_abc", False),  # not a file route
        (b"POST", b"/download/a?signature=v1_abc", False),  # wrong method for downloads
        (b"GET", b"/upload?signature=v1_abc", False),
        (b"POST", b"/sandboxagent.Process/Start?signature=v1_abc", False),
        (b"POST", b"/uploads?signature=v1_abc", False),
        (b"POST", b"/sandboxagent.Filesystem/GetWatcherEvents", True),
        (b"POST", b"/sandboxagent.Filesystem/RemoveWatcher", True),
        (b"GET", b"/sandboxagent.Filesystem/GetWatcherEvents", False),
        (b"POST", b"/sandboxagent.Filesystem/CreateWatcher", False),
        (b"POST", b"/sandboxagent.Filesystem/GetWatcherEventsX", False),
    ],
)
def test_bypasses_token(method: bytes, target: bytes, signed: bool) -> None:
    assert bypasses_token(method, target) is signed


def test_verdicts_are_remembered_until_the_table_changes() -> None:
    from gateway.routing.cache import VersionedCache

    version = [0]
    computed: list[str] = []

    def compute(key: str) -> str:
        computed.append(key)
        return f"{key}@{version[0]}"

    cache = VersionedCache(lambda: version[0], compute, max_entries=2)
    assert cache.get("a") == "a@0" and cache.get("a") == "a@0"
    assert computed == ["a"]
    version[0] += 1  # a sandbox row was written: the next request sees it
    assert cache.get("a") == "a@1"
    assert cache.get("b") == "b@1" and cache.get("c") == "c@1"  # full: starts over, stays bounded
    assert cache.get("a") == "a@1"
    assert computed == ["a", "a", "b", "c", "a"]
