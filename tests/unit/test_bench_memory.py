"""bench.memory: a container's memory read from its cgroup (v1 as on this machine, or v2)."""

from __future__ import annotations

from pathlib import Path

from bench.memory import cgroup_memory, mem_available_bytes, parse_memory_stat


def test_cgroup_v1_working_set(tmp_path: Path) -> None:
    group = tmp_path / "memory" / "libpod_parent" / "libpod-abc"
    group.mkdir(parents=True)
    (group / "memory.usage_in_bytes").write_text("30000000\n")
    (group / "memory.stat").write_text("cache 100\nrss 5\ntotal_rss 20000000\ntotal_inactive_file 4000000\n")
    assert cgroup_memory("/libpod_parent/libpod-abc", tmp_path) == ("v1", 26_000_000, 20_000_000)


def test_cgroup_v2_working_set(tmp_path: Path) -> None:
    group = tmp_path / "machine.slice" / "libpod-abc.scope"
    group.mkdir(parents=True)
    (group / "memory.current").write_text("10000\n")
    (group / "memory.stat").write_text("anon 7000\ninactive_file 1000\n")
    assert cgroup_memory("/machine.slice/libpod-abc.scope", tmp_path) == ("v2", 9000, 7000)
    assert cgroup_memory("/nowhere", tmp_path) is None


def test_parsers() -> None:
    assert parse_memory_stat("rss 1\nhierarchical_memory_limit 9\nbad line\n") == {
        "rss": 1,
        "hierarchical_memory_limit": 9,
    }
    assert mem_available_bytes("MemTotal: 10 kB\nMemAvailable:    2048 kB\n") == 2048 * 1024
