"""How a sandbox's disk use is bounded: `storage_gb`, and nothing it can grow on the host.

Two parts, both done by the Podman driver around create and start:

- the sandbox's writable layer gets a filesystem of its own, of `storage_gb`
  (`attach`, `ensure_mounted`);
- the files Podman bind-mounts into every container from the host's disk
  (/etc/hosts, /etc/resolv.conf, /etc/hostname, /run/.containerenv) are handed
  to the host's root before the container's first process runs (`seal`).

The writable layer
------------------

Podman's own per-container limit (`--storage-opt size=`) needs overlay over XFS or
ext4 with project quotas, and the kernel on these machines has neither
(no CONFIG_XFS_QUOTA, no CONFIG_QFMT_V2). The btrfs driver's qgroup limit works
but counts the image too, and with a user namespace per sandbox it copies the
whole image once per container (about 2 s for the base image). So instead:

Right after Podman creates a container, and before it first starts, its overlay
layer directory (`<graphroot>/overlay/<layer>/`, holding `diff/` and `work/`, which
overlayfs requires on one filesystem) is put on a sparse ext4 image of exactly the
sandbox's size, loop-mounted in its place. A write past the size fails with
ENOSPC inside that sandbox only, and `df /` there shows the size. The image is
created empty and copied into by `mkfs.ext4 -d` (the directory holds only empty
folders and two small files at that point); the sandbox never sees the raw image,
only files through overlayfs, so the host kernel never parses a filesystem the
sandbox wrote block by block.

The image file lives in the container's own Podman directory (`StaticDir`, the
`userdata` folder), so `podman rm` deletes it with the container; Podman's
removal unmounts the layer itself (its recursive remove unmounts on EBUSY and
retries), and the loop device, attached by `mount -o loop` with autoclear,
detaches itself. Nothing is left behind when something other than the appliance
removes the container.

The appliance must see the paths Podman uses: a rootful Podman service on the
same host, in the same mount namespace (which is how the appliance runs it).
A host reboot drops the mount but keeps the image: `ensure_mounted` puts it back
before such a container starts again.

Podman's per-container files
----------------------------
Podman writes /etc/hosts and the others into the container's run folder on the
host (`<runroot>/overlay-containers/<id>/userdata/`) and, with a user namespace,
gives them to the sandbox's root: `cat /dev/zero >> /etc/hosts` would then fill the
host's disk past any limit. Between Podman's init (which writes them) and start,
`seal` makes them the host root's: the sandbox's root is not that uid and holds
no capability over files of uids outside its namespace, so they are read-only
inside (a sandbox cannot add names to its /etc/hosts; that is the price).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.runtime.base import RuntimeFailure

_GIB = 1 << 30
IMAGE_NAME = "scalebox-layer.ext4"
_COMMAND_TIMEOUT = 30.0


# Podman's files in a container's run folder that are bind-mounted into it.
PODMAN_FILES = ("hosts", "resolv.conf", "hostname", ".containerenv")


@dataclass(frozen=True)
class LayerPaths:
    # The overlay layer directory that the image is mounted on.
    layer_dir: Path
    # The sparse image file, in the container's own Podman directory.
    image: Path


def layer_paths(attrs: Mapping[str, Any]) -> LayerPaths:
    """Where a container's writable layer and its image go, from `GET /containers/{id}/json`."""
    driver = attrs.get("GraphDriver") or {}
    upper = str((driver.get("Data") or {}).get("UpperDir") or "")
    static_dir = str(attrs.get("StaticDir") or "")
    if driver.get("Name") != "overlay" or not upper.endswith("/diff") or not static_dir:
        raise RuntimeFailure(
            "storage limits need Podman's overlay driver (GraphDriver overlay with an UpperDir and a StaticDir);"
            f" got {driver.get('Name')!r}, UpperDir {upper!r}, StaticDir {static_dir!r}"
        )
    return LayerPaths(layer_dir=Path(upper).parent, image=Path(static_dir) / IMAGE_NAME)


def run_dir(attrs: Mapping[str, Any]) -> Path:
    """A container's run folder (where Podman writes /etc/hosts and the others), from its inspect."""
    # Set from create on; the folder also holds conmon's pid file.
    pid_file = str(attrs.get("ConmonPidFile") or "")
    if not pid_file.startswith("/"):
        raise RuntimeFailure(f"cannot find the container's run folder: ConmonPidFile is {pid_file!r}")
    return Path(pid_file).parent


def mkfs_command(image: Path, source: Path) -> list[str]:
    return [
        "mkfs.ext4", "-q", "-F",
        # No blocks reserved for root: the sandbox's root may use all of its size.
        "-m", "0",
        # One inode per 8 KiB (ext4's default is 16): trees of small files (node_modules,
        # site-packages) must not run out of inodes long before bytes.
        "-i", "8192",
        # 16 MiB of journal instead of up to 256: it is written, so it costs real disk.
        "-J", "size=16",
        # Nothing to zero on a fresh sparse file: its holes read as zeros already, so
        # inode tables and the journal stay unwritten (about 4 MB on disk for 10 GiB).
        "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        # The layer directory's contents (empty diff/, work/, merged/ and two small files).
        "-d", str(source),
        str(image),
    ]  # fmt: skip


def mount_command(image: Path, target: Path) -> list[str]:
    # noinit_itable: no background thread zeroing inode tables the sparse file already
    # reads as zeros (it would write about 2% of the size for nothing).
    return ["mount", "-t", "ext4", "-o", "loop,noinit_itable", str(image), str(target)]


def attach(paths: LayerPaths, storage_gb: int) -> None:
    """Move a just-created container's empty layer onto an image of `storage_gb` GiB."""
    if storage_gb <= 0:
        raise ValueError(f"storage_gb must be positive: {storage_gb}")
    if os.path.ismount(paths.layer_dir):
        return
    mode = paths.layer_dir.stat()
    try:
        # O_EXCL: an image already there belongs to a container we did not just create.
        fd = os.open(paths.image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, storage_gb * _GIB)
        finally:
            os.close(fd)
        _run(mkfs_command(paths.image, paths.layer_dir))
        _run(mount_command(paths.image, paths.layer_dir))
    except BaseException:
        paths.image.unlink(missing_ok=True)
        raise
    # mkfs gives the root folder its own mode; the layer folder's was 0700.
    os.chmod(paths.layer_dir, mode.st_mode & 0o7777)
    os.chown(paths.layer_dir, mode.st_uid, mode.st_gid)


def ensure_mounted(paths: LayerPaths) -> None:
    """Before a container starts: its image mounted on its layer folder, if it has an image.

    After a host reboot nothing is mounted. A Podman that bind-mounts its overlay
    home over itself (c/storage does unless `skip_mount_home`, see scripts/setup.sh)
    can also detach the mount or cover it. Never a second loop device on the same
    image: two filesystems writing one file would corrupt it. When a loop device
    still holds the image, its filesystem is mounted again (the same superblock).
    """
    if os.path.ismount(paths.layer_dir) or not paths.image.exists():
        return
    device = attached_loop_device(paths.image)
    if device is None:
        _run(mount_command(paths.image, paths.layer_dir))
    else:
        _run(["mount", "-t", "ext4", device, str(paths.layer_dir)])


def attached_loop_device(image: Path) -> str | None:
    """The loop device backed by `image`, if any (`losetup -j`)."""
    output = _run(["losetup", "--list", "--noheadings", "--output", "NAME", "--associated", str(image)])
    names = output.split()
    return names[0] if names else None


def seal(run_folder: Path) -> None:
    """Give Podman's bind-mounted files to the host's root, read-only to the sandbox (after init)."""
    if not (run_folder / "hosts").is_file():
        raise RuntimeFailure(f"Podman wrote no hosts file in {run_folder}: is the container initialised?")
    for name in PODMAN_FILES:
        try:
            fd = os.open(run_folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)


def release_shm(attrs: Mapping[str, Any]) -> None:
    """Lazily unmount a stopped container's /dev/shm if Podman left it mounted (see remove)."""
    static_dir = str(attrs.get("StaticDir") or "")
    shm = Path(static_dir) / "shm"
    if static_dir.startswith("/") and os.path.ismount(shm):
        _run(["umount", "--lazy", str(shm)])


def _run(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"{argv[0]} is not installed (e2fsprogs, util-linux); run `make setup`") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeFailure(f"{argv[0]} took longer than {_COMMAND_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-500:]
        raise RuntimeFailure(f"{argv[0]} failed with status {result.returncode}: {detail}")
    return result.stdout
