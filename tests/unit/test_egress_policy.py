"""controlplane.egress: parsing allow/deny lists and deciding names and addresses. Pure."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controlplane.egress import EgressPolicy, parse_network, parse_rules, policy_of
from controlplane.errors import BadRequest


def policy(allow: list[str] | None = None, deny: list[str] | None = None, internet: bool = True) -> EgressPolicy:
    return policy_of(internet, {"allow_out": allow or [], "deny_out": deny or []})


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_no_rules_is_unrestricted_and_no_internet_allows_nothing() -> None:
    assert policy().unrestricted and policy().name_allowed("example.com")
    closed = policy(internet=False)
    assert not closed.unrestricted
    assert not closed.name_allowed("example.com")
    assert not closed.address_allowed(ip("1.1.1.1"))


def test_an_allow_list_lets_out_only_what_it_names() -> None:
    p = policy(allow=["pypi.org", "*.pythonhosted.org", "10.20.0.0/16"])
    assert p.name_allowed("pypi.org") and p.name_allowed("files.pythonhosted.org")
    assert p.name_allowed("a.b.pythonhosted.org")
    assert not p.name_allowed("pythonhosted.org")  # the wildcard is for names below it
    assert not p.name_allowed("evil.com") and not p.name_allowed("pypi.org.evil.com")
    assert p.address_allowed(ip("10.20.3.4"))
    assert not p.address_allowed(ip("10.21.0.1"))  # a bare IP counts only if a CIDR allows it
    # ...or the resolver handed it out for an allowed name.
    assert p.address_allowed(ip("151.101.0.223"), resolved_for=["pypi.org"])
    assert not p.address_allowed(ip("151.101.0.223"), resolved_for=["evil.com"])


def test_deny_wins_over_allow_and_over_the_default() -> None:
    p = policy(deny=["*.evil.com", "203.0.113.0/24"])
    assert p.name_allowed("good.com") and not p.name_allowed("x.evil.com")
    assert p.address_allowed(ip("198.51.100.1")) and not p.address_allowed(ip("203.0.113.9"))
    p = policy(allow=["*.example.com"], deny=["secret.example.com"])
    assert p.name_allowed("www.example.com") and not p.name_allowed("secret.example.com")
    assert not p.address_allowed(ip("192.0.2.1"), resolved_for=["secret.example.com"])


def test_entries_round_trip_and_ipv6() -> None:
    rules = parse_rules(["2001:db8::/32", "Example.COM.", "*.x.org", "192.0.2.7"], "k")
    assert rules.entries() == ["2001:db8::/32", "192.0.2.7/32", "example.com", "*.x.org"]
    assert rules.matches_address(ip("2001:db8::1"))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("pypi.org", "list"),
        ([1], "list"),
        (["not a name"], "neither a CIDR"),
        (["*."], "neither"),
        (["10.0.0.0/33"], "neither"),
        (["a" * 64 + ".com"], "neither"),
        (["1.2.3"], "neither"),
        (["x.com"] * 257, "at most"),
    ],
)
def test_bad_rules_say_what_to_fix(value: Any, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_rules(value, "network.allow_out")
    assert words in caught.value.message and "network.allow_out" in caught.value.message


def test_the_network_object_is_checked() -> None:
    assert parse_network(None) == parse_network({})
    for bad in ([], "x", {"allow": []}):
        with pytest.raises(BadRequest):
            parse_network(bad)
