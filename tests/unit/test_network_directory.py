"""The resolver's and egress proxy's shared views: sandboxes by address, names by address."""

from __future__ import annotations

from controlplane.lifecycle.states import State
from controlplane.network.directory import Directory
from controlplane.network.grants import AddressNames
from controlplane.records import SandboxRecord
from tests.unit.test_network_ruleset import record


def test_directory_maps_live_addresses_and_rereads_only_on_a_new_version() -> None:
    rows = [
        record(2, egress={"allow_out": ["a.example"]}),
        record(3, allow_internet_access=False),
        record(4, state=State.TERMINATED),
        record(5, ip=None),
    ]
    reads = []
    version = [1]

    def sandboxes() -> list[SandboxRecord]:
        reads.append(1)
        return rows

    directory = Directory(sandboxes=sandboxes, version=lambda: version[0])
    found = directory.lookup("10.89.7.2")
    assert found is not None
    sid, policy = found
    assert sid == "sbx-2" and policy.name_allowed("a.example") and not policy.name_allowed("b.example")
    offline = directory.lookup("10.89.7.3")
    assert offline is not None and not offline[1].internet
    assert directory.lookup("10.89.7.4") is None and directory.lookup("10.89.7.1") is None
    assert len(reads) == 1
    rows[0] = record(2, egress={"allow_out": ["b.example"]})
    assert directory.lookup("10.89.7.2")[1].name_allowed("a.example")  # type: ignore[index]
    version[0] = 2
    assert directory.lookup("10.89.7.2")[1].name_allowed("b.example")  # type: ignore[index]
    assert len(reads) == 2


def test_address_names_expire_and_merge() -> None:
    now = [100.0]
    names = AddressNames(clock=lambda: now[0])
    names.add("a.example", ["203.0.113.1", "203.0.113.2"], 60)
    names.add("b.example", ["203.0.113.1"], 10)
    assert names.names_for("203.0.113.1") == ["a.example", "b.example"]
    assert names.names_for("203.0.113.9") == []
    now[0] = 115.0
    assert names.names_for("203.0.113.1") == ["a.example"]
    # A shorter answer later does not cut a longer grant short.
    names.add("a.example", ["203.0.113.1"], 1)
    now[0] = 150.0
    assert names.names_for("203.0.113.1") == ["a.example"]
    now[0] = 161.0
    assert names.names_for("203.0.113.1") == [] and names.names_for("203.0.113.2") == []
    assert len(names) == 0


def test_address_names_are_bounded_oldest_first() -> None:
    names = AddressNames(clock=lambda: 0.0, capacity=2)
    names.add("a.example", ["203.0.113.1"], 60)
    names.add("b.example", ["203.0.113.2"], 60)
    names.add("c.example", ["203.0.113.3"], 60)
    assert len(names) == 2
    assert names.names_for("203.0.113.1") == []
    assert names.names_for("203.0.113.3") == ["c.example"]
