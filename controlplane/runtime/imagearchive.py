"""What an image archive says about itself, read before Podman loads it.

`podman load` gives a loaded image every name its archive carries (docker-archive's
RepoTags, oci-archive's ref.name annotations). A user's archive naming, say,
localhost/scalebox/base:latest would take that name from the built-in image. So the
driver reads the names and the image id first and refuses an archive whose names
already belong to another image (see PodmanRuntime.load).

Only the small metadata members are read: manifest.json (docker-archive), or
index.json and the manifest blob it points to (oci-archive).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.runtime.base import RuntimeFailure

# Metadata members are a few KiB; anything far larger is not what it claims to be.
_MAX_METADATA = 1 << 20


@dataclass(frozen=True, kw_only=True)
class ArchiveImage:
    # "docker-archive" or "oci-archive".
    format: str
    names: tuple[str, ...]
    # The image id Podman will give it: its config's sha256, hex.
    image_id: str


def inspect_archive(path: Path) -> ArchiveImage:
    """The one image in a docker-archive or oci-archive (optionally gzipped); RuntimeFailure says what is wrong."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {_clean(m.name): m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> Any:
                member = members.get(name)
                if member is None or member.size > _MAX_METADATA:
                    raise RuntimeFailure(f"the archive has no usable {name}")
                extracted = tar.extractfile(member)
                assert extracted is not None
                try:
                    return json.loads(extracted.read())
                except ValueError:
                    raise RuntimeFailure(f"the archive's {name} is not JSON") from None

            if "manifest.json" in members:
                return _docker(read("manifest.json"))
            if "index.json" in members:
                return _oci(read("index.json"), read)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise RuntimeFailure(f"not a readable tar archive: {exc}") from None
    raise RuntimeFailure(
        "not an image archive: it has neither manifest.json (docker-archive) nor index.json (oci-archive); "
        "make one with `podman save` (--format docker-archive or oci-archive)"
    )


def _clean(name: str) -> str:
    return name.removeprefix("./")


def _one(items: Any, what: str) -> dict[str, Any]:
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise RuntimeFailure(f"the archive's {what} lists no image")
    if len(items) > 1:
        raise RuntimeFailure(f"the archive holds {len(items)} images; save exactly one")
    return items[0]


def _docker(manifest: Any) -> ArchiveImage:
    entry = _one(manifest, "manifest.json")
    config = str(entry.get("Config") or "")
    # "<hex>.json" (classic) or "blobs/sha256/<hex>" (newer writers).
    image_id = config.rsplit("/", 1)[-1].removesuffix(".json")
    tags = entry.get("RepoTags") or []
    return ArchiveImage(format="docker-archive", names=tuple(str(t) for t in tags), image_id=_hex(image_id))


def _oci(index: Any, read: Any) -> ArchiveImage:
    entry = _one(index.get("manifests") if isinstance(index, dict) else None, "index.json")
    name = (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name")
    digest = str(entry.get("digest") or "")
    manifest = read("blobs/" + digest.replace(":", "/", 1))
    config = manifest.get("config") if isinstance(manifest, dict) else None
    config_digest = str((config or {}).get("digest") or "")
    names = (str(name),) if name else ()
    return ArchiveImage(format="oci-archive", names=names, image_id=_hex(config_digest.removeprefix("sha256:")))


def _hex(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise RuntimeFailure(f"the archive names no valid image config ({value[:80]!r})")
    return value
