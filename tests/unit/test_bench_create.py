"""bench.create: the raw Podman baseline is a container like the appliance's own."""

from __future__ import annotations

from bench.create import raw_create_args


def test_raw_container_mirrors_the_sandbox() -> None:
    inspect = {
        "ImageName": "localhost/scalebox/base:latest",
        "Config": {"Cmd": ["python3", "/opt/scalebox/agent"]},
        "HostConfig": {"CpuPeriod": 100000, "CpuQuota": 100000, "Memory": 536870912, "MemorySwap": 536870912},
        "Mounts": [{"Type": "bind", "Source": "/src/agent", "Destination": "/opt/scalebox/agent", "RW": False}],
    }
    args = raw_create_args(inspect, "bench-1")
    assert args[0] == "create"
    assert args[-3:] == ["localhost/scalebox/base:latest", "python3", "/opt/scalebox/agent"]
    assert "io.scalebox.instance=bench-1" in args
    assert "type=bind,source=/src/agent,target=/opt/scalebox/agent,ro" in args
    assert args[args.index("--memory") + 1] == "536870912b"
    assert args[args.index("--cpu-quota") + 1] == "100000"
