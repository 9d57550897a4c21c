"""End to end, adversarial: code in a sandbox attacks the host it runs on, and fails.

Each test runs an attack from inside a real sandbox, through the agent's exec API
(`POST /v1/sandboxes/{id}/exec`) or `podman exec`, checks that it failed, then that
the host is still healthy: the appliance answers and a witness sandbox, created
before any attack, still runs commands. The bombs also create a fresh sandbox
while (or right after) they go off. Every attack is bounded in time, and the
sandboxes that carry one are deleted by the test; the module's appliance removes
whatever is left. See docs/security.md for what each layer is meant to stop.

The network half of the acceptance (control plane, Podman socket, host services,
other sandboxes) is in the network suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.appliance import Appliance, podman, stop_and_clean
from tests.e2e.helpers import container_name, create, wait_for

pytestmark = pytest.mark.podman

# The capabilities a sandbox keeps (controlplane/runtime/podman_runtime.py), by number:
# CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, NET_BIND_SERVICE 10.
EXPECTED_CAPS = sum(1 << bit for bit in (0, 1, 3, 4, 5, 6, 7, 10))
PIDS_LIMIT = 1024
# What a sandbox's /dev holds: Podman's minimal set, no host device.
ALLOWED_DEV = {"console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
               "stderr", "stdin", "stdout", "tty", "urandom", "zero"}  # fmt: skip


@pytest.fixture(scope="module")
def app() -> Iterator[Appliance]:
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    appliance = Appliance(data_dir=data_dir)
    try:
        appliance.start()
        yield appliance
    finally:
        stop_and_clean(appliance)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(app: Appliance) -> Iterator[httpx.Client]:
    with app.client(timeout=180) as client:
        yield client


@pytest.fixture(scope="module")
def witness(app: Appliance, api: httpx.Client) -> str:
    """A bystander sandbox: it must keep working whatever its neighbours do."""
    return str(create(app, api)["sandbox_id"])


@pytest.fixture(scope="module")
def probe(app: Appliance, api: httpx.Client) -> str:
    """The sandbox the attacks that harm nobody but themselves run in."""
    return str(create(app, api)["sandbox_id"])


def run(app: Appliance, api: httpx.Client, sid: str, command: str, *, user: str = "root", timeout: int = 60) -> Any:
    """A shell line through the agent; the exec API's data (exit_code, stdout, stderr, timed_out)."""
    reply = api.post(f"{app.api_url}/sandboxes/{sid}/exec", json={"command": command, "user": user, "timeout": timeout})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def ok(app: Appliance, api: httpx.Client, sid: str, command: str, *, user: str = "root", timeout: int = 60) -> str:
    result = run(app, api, sid, command, user=user, timeout=timeout)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


def python(app: Appliance, api: httpx.Client, sid: str, code: str, *, user: str = "root") -> Any:
    """Run a Python program inside that prints one JSON value; return it."""
    script = code.replace("'", "'\"'\"'")
    return json.loads(ok(app, api, sid, f"python3 -c '{script}'", user=user))


def assert_host_healthy(app: Appliance, api: httpx.Client, witness: str) -> None:
    assert app.process is not None and app.process.poll() is None, "the appliance died"
    assert api.get(f"{app.api_url}/sandboxes/{witness}").json()["data"]["status"] == "running"
    assert ok(app, api, witness, "echo alive") == "alive\n"


def assert_new_sandbox_works(app: Appliance, api: httpx.Client) -> None:
    sid = create(app, api)["sandbox_id"]
    try:
        assert ok(app, api, sid, "echo fresh") == "fresh\n"
    finally:
        assert api.delete(f"{app.api_url}/sandboxes/{sid}").status_code == 202


def delete(app: Appliance, api: httpx.Client, sid: str) -> None:
    started = time.monotonic()
    reply = api.delete(f"{app.api_url}/sandboxes/{sid}")
    assert reply.status_code == 202, reply.text
    assert time.monotonic() - started < 60
    assert not [c for c in app.containers() if c["Labels"].get("io.scalebox.sandbox-id") == sid]


def inspect(sid: str, template: str) -> str:
    return podman("inspect", "--format", template, container_name(sid)).strip()


def cgroup_file(sid: str, controller: str, name: str) -> Path:
    # cgroupfs manager, cgroup v1 (MACHINE.md): /sys/fs/cgroup/<controller>/libpod_parent/libpod-<id>/.
    return Path("/sys/fs/cgroup", controller, inspect(sid, "{{.State.CgroupPath}}").lstrip("/"), name)


# -- the hardening is in place ---------------------------------------------------------------


def test_every_sandbox_is_hardened(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    status = ok(app, api, probe, "cat /proc/self/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == EXPECTED_CAPS
    assert int(fields["CapBnd"], 16) == EXPECTED_CAPS
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a filter: Podman's default profile
    # As the unprivileged user, nothing at all.
    as_user = ok(app, api, probe, "grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status", user="user")
    assert {line.split()[1] for line in as_user.splitlines()} == {"0000000000000000"}

    # Root inside is not root on the host: a range of uids of its own, different per sandbox.
    probe_map = ok(app, api, probe, "cat /proc/self/uid_map").split()
    witness_map = ok(app, api, witness, "cat /proc/self/uid_map").split()
    assert probe_map[0] == "0" and int(probe_map[1]) > 0 and probe_map[2] == "65536"
    assert probe_map[1] != witness_map[1]
    agent_pid = inspect(probe, "{{.State.Pid}}")
    host_uids = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{agent_pid}/status").read_text(), re.M)
    assert host_uids is not None and int(host_uids.group(1)) == int(probe_map[1])
    ok(app, api, probe, "echo mine > /root/owned-by-root")
    upper = Path(inspect(probe, "{{.GraphDriver.Data.UpperDir}}"))
    assert (upper / "root" / "owned-by-root").stat().st_uid == int(probe_map[1])

    # Limits: pids here, memory and CPU from the request, storage from storage_gb (default 10 GiB).
    assert cgroup_file(probe, "pids", "pids.max").read_text().strip() == str(PIDS_LIMIT)
    assert ok(app, api, probe, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes").strip() == str(512 << 20)
    size_kib = int(ok(app, api, probe, "df -k --output=size / | tail -1"))
    assert 9.5 * (1 << 20) < size_kib <= 10 * (1 << 20)

    # The agent's code is read-only; no host device is there.
    assert run(app, api, probe, "touch /opt/scalebox/agent/x")["exit_code"] != 0
    assert set(ok(app, api, probe, "ls /dev").split()) <= ALLOWED_DEV


# -- the attacks ---------------------------------------------------------------------------------


def test_fork_bomb_stops_at_the_pids_limit(app: Appliance, api: httpx.Client, witness: str) -> None:
    sid = create(app, api, memory_mb=512)["sandbox_id"]
    pids = cgroup_file(sid, "pids", "pids.current")
    host_pids_before = len([p for p in os.listdir("/proc") if p.isdigit()])
    try:
        started = api.post(
            f"{app.api_url}/sandboxes/{sid}/exec",
            json={"command": "bomb() { bomb | bomb & }; bomb", "background": True, "user": "user"},
        )
        assert started.status_code == 200, started.text

        def saturated() -> bool:
            try:
                return int(pids.read_text()) >= PIDS_LIMIT - 8
            except OSError:  # the sandbox died of it (OOM of its PID 1): also contained
                return True

        wait_for(saturated, 30, "the fork bomb to reach the pids limit")
        # While it goes on: it never passes the limit, and the host has pids to spare.
        for _ in range(10):
            try:
                assert int(pids.read_text()) <= PIDS_LIMIT
            except FileNotFoundError:
                break
            time.sleep(0.2)
        host_pids = len([p for p in os.listdir("/proc") if p.isdigit()])
        assert host_pids - host_pids_before <= PIDS_LIMIT + 64
        assert_host_healthy(app, api, witness)
        assert_new_sandbox_works(app, api)
    finally:
        delete(app, api, sid)
    assert_host_healthy(app, api, witness)


def test_memory_bomb_is_killed_inside_its_limit(app: Appliance, api: httpx.Client, witness: str) -> None:
    sid = create(app, api, memory_mb=256)["sandbox_id"]
    try:
        bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))"
        result = run(app, api, sid, f"python3 -c '{bomb}'", user="user", timeout=60)
        assert not result["timed_out"] and result["exit_code"] != 0, result
        # The kernel's OOM killer acted in the sandbox's memory cgroup, and picked the
        # bomb: the agent (PID 1) is still there.
        oom = dict(line.split() for line in cgroup_file(sid, "memory", "memory.oom_control").read_text().splitlines())
        assert int(oom["oom_kill"]) >= 1
        assert ok(app, api, sid, "echo survived") == "survived\n"
        assert_host_healthy(app, api, witness)
        assert_new_sandbox_works(app, api)
    finally:
        delete(app, api, sid)


def test_disk_fill_stops_at_the_storage_limit(app: Appliance, api: httpx.Client, witness: str) -> None:
    sid = create(app, api, storage_gb=1)["sandbox_id"]
    image = Path(inspect(sid, "{{.StaticDir}}")) / "scalebox-layer.ext4"
    try:
        size_kib = int(ok(app, api, sid, "df -k --output=size / | tail -1"))
        assert 0.9 * (1 << 20) < size_kib <= 1 << 20
        # 1.5 GiB into a 1 GiB sandbox, as the user and as root.
        fill = run(app, api, sid, "dd if=/dev/zero of=/home/user/fill bs=1M count=1536", user="user", timeout=180)
        assert fill["exit_code"] != 0 and "No space left on device" in fill["stderr"], fill
        more = run(app, api, sid, "dd if=/dev/zero of=/root/more bs=1M count=64", timeout=60)
        assert more["exit_code"] != 0 and "No space left on device" in more["stderr"], more
        # What reached the host's disk: at most the sandbox's size (the image is sparse).
        assert image.stat().st_blocks * 512 <= (1 << 30) + (64 << 20)
        # Podman's files bind-mounted from the host's disk cannot be grown instead.
        for target in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/run/.containerenv"):
            grown = run(app, api, sid, f"head -c 1048576 /dev/zero >> {target}")
            assert grown["exit_code"] != 0 and "Permission denied" in grown["stderr"], (target, grown)
        assert Path(inspect(sid, "{{.HostsPath}}")).stat().st_size < 4096
        # /dev/shm is memory, bounded by its own size.
        shm = run(app, api, sid, "head -c 200M /dev/zero > /dev/shm/fill", timeout=60)
        assert shm["exit_code"] != 0 and "No space left on device" in shm["stderr"], shm
        # The sandbox itself recovers once it frees space.
        ok(app, api, sid, "rm -f /home/user/fill /root/more /dev/shm/fill")
        assert ok(app, api, sid, "echo written > /home/user/after && cat /home/user/after", user="user") == "written\n"
        assert_host_healthy(app, api, witness)
    finally:
        delete(app, api, sid)
    # The image went with the container.
    assert not image.exists()


def test_mount_is_refused(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    for command in (
        "mount -t tmpfs x /mnt",
        "mount --bind /tmp /mnt",
        "mount -t proc proc /mnt",
        # A user namespace of its own inside, to be root enough to mount there.
        "unshare --user --map-root-user --mount mount -t tmpfs x /mnt",
    ):
        result = run(app, api, probe, command)
        assert result["exit_code"] != 0, (command, result)
    assert ok(app, api, probe, "grep -c ' /mnt ' /proc/self/mounts || true").strip() == "0"
    assert_host_healthy(app, api, witness)


def test_raw_sockets_are_refused(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    code = """
import json, socket
kinds = [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
         (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6), (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)]
out = []
for family, kind, proto in kinds:
    try:
        socket.socket(family, kind, proto).close()
        out.append("opened")
    except OSError as exc:
        out.append(exc.errno)
print(json.dumps(out))
"""
    for user in ("root", "user"):
        assert python(app, api, probe, code, user=user) == [1, 1, 1, 1]  # EPERM, every one
    assert_host_healthy(app, api, witness)


def test_kernel_modules_cannot_be_loaded(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    code = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
image = ctypes.create_string_buffer(b"\\x7fELF" + b"\\0" * 60)
calls = {"init_module": (175, image, ctypes.c_ulong(64), ctypes.c_char_p(b"")),
         "finit_module": (313, ctypes.c_int(0), ctypes.c_char_p(b""), ctypes.c_int(0)),
         "delete_module": (176, ctypes.c_char_p(b"loop"), ctypes.c_int(0x800))}
out = {}
for name, (number, *args) in calls.items():
    out[name] = [libc.syscall(number, *args), ctypes.get_errno()]
print(json.dumps(out))
"""
    # x86_64 syscall numbers; -1 with EPERM each.
    assert python(app, api, probe, code) == {name: [-1, 1] for name in ("init_module", "finit_module", "delete_module")}
    modprobe = run(app, api, probe, "modprobe dummy")
    assert modprobe["exit_code"] != 0
    assert_host_healthy(app, api, witness)


def test_proc_sys_and_sys_are_read_only(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    targets = {
        "/proc/sys/kernel/core_pattern": "|/tmp/escape",
        "/proc/sys/kernel/pid_max": "4096",
        "/proc/sys/vm/overcommit_memory": "1",
        "/proc/sys/net/ipv4/ip_forward": "0",
        "/sys/kernel/mm/ksm/run": "1",
        # Its own limits, from inside.
        "/sys/fs/cgroup/pids/pids.max": "max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "-1",
    }
    before = {path: Path(path).read_text() for path in targets if path.startswith("/proc/sys/kernel")}
    for path, value in targets.items():
        assert ok(app, api, probe, f"test -e {path} && echo there") == "there\n", path
        result = run(app, api, probe, f"echo '{value}' > {path}")
        assert result["exit_code"] != 0, (path, result)
        assert re.search(r"Read-only file system|Permission denied", result["stderr"]), (path, result)
    # The host's values are unchanged, and the sandbox's limits too.
    assert {path: Path(path).read_text() for path in before} == before
    assert cgroup_file(probe, "pids", "pids.max").read_text().strip() == str(PIDS_LIMIT)
    # Podman's masked paths stay masked (empty or absent).
    for path in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/sys/firmware"):
        assert ok(app, api, probe, f"cat {path} 2>/dev/null | wc -c; ls {path} 2>/dev/null | wc -l").split() in (
            ["0", "0"],
            ["0", "1"],
        ), path
    assert_host_healthy(app, api, witness)


def test_host_processes_are_invisible_and_unreachable(
    app: Appliance, api: httpx.Client, probe: str, witness: str
) -> None:
    assert app.process is not None
    host_pids = [os.getpid(), app.process.pid, 1, int(inspect(witness, "{{.State.Pid}}"))]
    listed = ok(app, api, probe, "ps -e -o pid=,args=")
    # The sandbox's own few: the agent as PID 1, what it runs for us.
    assert listed.splitlines()[0].split(None, 1) == ["1", "python3 /opt/scalebox/agent"]
    assert len(listed.splitlines()) < 10
    for pid in host_pids[:2] + host_pids[3:]:
        probe_result = run(app, api, probe, f"kill -0 {pid} || kill -9 {pid} || ls /proc/{pid}/root")
        assert probe_result["exit_code"] != 0, (pid, probe_result)
        assert Path(f"/proc/{pid}").exists(), pid  # still alive on the host
    # PID 1 inside is the sandbox's own agent, not the host's init.
    assert ok(app, api, probe, "cat /proc/1/cmdline | tr '\\0' ' '").strip() == "python3 /opt/scalebox/agent"
    assert_host_healthy(app, api, witness)


def test_setuid_binaries_grant_nothing(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    # A setuid-root copy of id, made by root inside; and the image's own setuid su.
    ok(app, api, probe, "cp /usr/bin/id /usr/local/bin/id-suid && chmod 4755 /usr/local/bin/id-suid")
    assert ok(app, api, probe, "stat -c '%U %A' /usr/local/bin/id-suid /usr/bin/su").split() == [
        "root", "-rwsr-xr-x", "root", "-rwsr-xr-x",
    ]  # fmt: skip
    assert ok(app, api, probe, "/usr/local/bin/id-suid -u; /usr/local/bin/id-suid -g", user="user").split() == [
        "1000",
        "1000",
    ]
    su = run(app, api, probe, "su -c id root < /dev/null", user="user", timeout=30)
    assert su["exit_code"] != 0 and "uid=0" not in su["stdout"], su
    setuid = run(app, api, probe, "python3 -c 'import os; os.setuid(0)'", user="user")
    assert setuid["exit_code"] != 0 and "Operation not permitted" in setuid["stderr"]
    assert_host_healthy(app, api, witness)


def test_device_nodes_cannot_be_made(app: Appliance, api: httpx.Client, probe: str, witness: str) -> None:
    # The host's disk, as a block device (8:0 and 254:0), and /dev/mem (1:1).
    for spec in ("b 8 0", "b 254 0", "c 1 1"):
        result = run(app, api, probe, f"mknod /tmp/node {spec}")
        assert result["exit_code"] != 0 and "Operation not permitted" in result["stderr"], (spec, result)
    assert run(app, api, probe, "test -e /dev/kvm || test -e /dev/vda || test -e /dev/loop0")["exit_code"] != 0
    assert_host_healthy(app, api, witness)
