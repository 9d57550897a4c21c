"""The Podman driver's pure half: what a spec becomes in Podman's create call, and where
a sandbox's disk limit goes. The real thing is proven in tests/e2e/test_isolation_host.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from podman import api as podman_api
from podman.domain.containers_create import CreateMixin

from controlplane.runtime import disklimit
from controlplane.runtime.base import (
    AGENT_MOUNT,
    DEFAULT_PIDS_LIMIT,
    VENDOR_MOUNT,
    ContainerSpec,
    RuntimeFailure,
)
from controlplane.runtime.podman_runtime import SANDBOX_CAPABILITIES, create_arguments


def spec(**overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {"name": "scalebox-sbx-1", "image": "localhost/scalebox/base", "command": ["true"]}
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


def body(s: ContainerSpec) -> dict[str, object]:
    """The JSON podman-py sends to `POST /containers/create` for these arguments."""
    payload = CreateMixin._render_payload({"image": s.image, "command": s.command, **create_arguments(s)})
    rendered: dict[str, object] = json.loads(podman_api.prepare_body(payload))
    return rendered


def test_limits_from_the_spec() -> None:
    args = create_arguments(spec(cpu_count=0.5, memory_mb=300, pids_limit=64))
    assert (args["cpu_quota"], args["cpu_period"]) == (50_000, 100_000)
    assert args["mem_limit"] == args["memswap_limit"] == 300 * 1024 * 1024
    assert args["pids_limit"] == 64
    assert create_arguments(spec())["pids_limit"] == DEFAULT_PIDS_LIMIT


def test_capabilities_are_dropped_to_the_documented_set() -> None:
    args = create_arguments(spec())
    assert args["cap_drop"] == ["ALL"]
    assert args["cap_add"] == list(SANDBOX_CAPABILITIES)
    assert set(SANDBOX_CAPABILITIES) == {
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE",
    }  # fmt: skip
    # Among Podman's defaults, these are gone.
    for dropped in ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SETPCAP", "SYS_CHROOT", "SYS_ADMIN"):
        assert dropped not in args["cap_add"]


def test_no_new_privileges_and_a_user_namespace_of_its_own() -> None:
    sent = body(spec())
    assert sent["no_new_privileges"] is True
    # Podman's API needs both to give each container its own range ("auto").
    assert sent["userns"] == {"nsmode": "auto"}
    assert sent["idmappings"] == {"AutoUserNs": True, "AutoUserNsOpts": {"Size": 65536}}
    assert sent["resource_limits"]["pids"] == {"limit": DEFAULT_PIDS_LIMIT}  # type: ignore[index]


def test_nothing_loosens_podmans_defaults() -> None:
    sent = body(spec(agent_dir=Path("/srv/agent"), vendor_dir=Path("/srv/vendor")))
    # Podman's seccomp profile, masked paths and device list stay as they are.
    for key in ("privileged", "unmask", "seccomp_profile_path", "seccomp_policy", "apparmor_profile", "devices"):
        assert key not in sent, key
    assert "sysctl" not in sent and "cap_add" in sent
    assert sent["mounts"] == [
        {"destination": AGENT_MOUNT, "options": ["ro"], "source": "/srv/agent", "type": "bind"},
        {"destination": VENDOR_MOUNT, "options": ["ro"], "source": "/srv/vendor", "type": "bind"},
    ]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        create_arguments(spec(memory_mb=0))
    with pytest.raises(ValueError):
        disklimit.attach(disklimit.LayerPaths(layer_dir=Path("/nonexistent"), image=Path("/nonexistent.img")), 0)


# -- disklimit: where a container's layer and its image are ------------------------------

LAYER = "/var/lib/containers/storage/overlay/4a1d"
INSPECT = {
    "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": f"{LAYER}/diff", "WorkDir": f"{LAYER}/work"}},
    "StaticDir": "/var/lib/containers/storage/overlay-containers/c0ffee/userdata",
    "ConmonPidFile": "/run/containers/storage/overlay-containers/c0ffee/userdata/conmon.pid",
}


def test_layer_paths_from_an_inspect() -> None:
    paths = disklimit.layer_paths(INSPECT)
    assert paths.layer_dir == Path(LAYER)
    # Beside Podman's own files of the container: `podman rm` deletes it.
    assert paths.image == Path("/var/lib/containers/storage/overlay-containers/c0ffee/userdata/scalebox-layer.ext4")
    assert disklimit.run_dir(INSPECT) == Path("/run/containers/storage/overlay-containers/c0ffee/userdata")


@pytest.mark.parametrize(
    "attrs",
    [
        {**INSPECT, "GraphDriver": {"Name": "vfs", "Data": {}}},
        {**INSPECT, "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": f"{LAYER}/other"}}},
        {**INSPECT, "StaticDir": ""},
        {},
    ],
)
def test_layer_paths_refuse_what_they_cannot_limit(attrs: dict[str, object]) -> None:
    with pytest.raises(RuntimeFailure, match="overlay"):
        disklimit.layer_paths(attrs)


def test_run_dir_needs_conmons_pid_file() -> None:
    with pytest.raises(RuntimeFailure, match="run folder"):
        disklimit.run_dir({**INSPECT, "ConmonPidFile": ""})


def test_mkfs_and_mount_commands() -> None:
    image, layer = Path("/x/userdata/scalebox-layer.ext4"), Path(LAYER)
    mkfs = disklimit.mkfs_command(image, layer)
    assert mkfs[0] == "mkfs.ext4" and mkfs[-1] == str(image)
    # The layer's current contents go in at creation; nothing is reserved for root.
    assert mkfs[mkfs.index("-d") + 1] == LAYER and mkfs[mkfs.index("-m") + 1] == "0"
    assert "lazy_itable_init=1" in mkfs[mkfs.index("-E") + 1]
    mount = disklimit.mount_command(image, layer)
    assert mount[:3] == ["mount", "-t", "ext4"] and mount[-2:] == [str(image), LAYER]
    assert "loop" in mount[mount.index("-o") + 1].split(",")


def test_seal_refuses_a_folder_podman_has_not_written(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="no hosts file"):
        disklimit.seal(tmp_path)


def test_a_user_namespaced_commit_is_rebuilt_with_owners_inside() -> None:
    from controlplane.runtime.podman_runtime import IdMaps, id_maps, unshift_containerfile

    maps = id_maps({"UidMap": ["0:2147549183:65534"], "GidMap": ["0:2147549183:65534"]})
    assert maps == IdMaps(uids=((0, 2147549183, 65534),), gids=((0, 2147549183, 65534),))
    assert maps.shifted
    # No user namespace (gVisor), or an identity map: the commit stands as it is.
    assert not id_maps({}).shifted
    assert not id_maps({"UidMap": ["0:0:4294967295"]}).shifted
    text = unshift_containerfile("abc123", maps)
    first, run = text.splitlines()
    assert first == "FROM abc123"
    command = json.loads(run.removeprefix("RUN "))
    assert command[:2] == ["python3", "-c"] and json.loads(command[3]) == [[0, 2147549183, 65534]]
