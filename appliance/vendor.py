"""The agent's vendored packages: pure-Python libraries mounted read-only into sandboxes.

The agent runs on the container's own python3 and nothing is installed inside a
sandbox, so the few pure-Python packages it uses (h11) are copied from this venv
into `<data-dir>/agent-vendor/<digest>/` and mounted. The folder name is a digest
of the package versions, and a folder is never changed once written: sandboxes
that are running keep the exact files they were started with.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.metadata
import importlib.util
import shutil
import tempfile
from pathlib import Path

PACKAGES = ("h11",)


def prepare_vendor_dir(root: Path) -> Path:
    versions = [f"{name}=={importlib.metadata.version(name)}" for name in PACKAGES]
    digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]
    target = root / digest
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the agent needs the package {name!r}; run `make setup`")
        shutil.copytree(Path(spec.origin).parent, staging / name, ignore=shutil.ignore_patterns("__pycache__"))
    (staging / "VERSIONS").write_text("\n".join(versions) + "\n")
    # Sandboxes mount this read-only, so Python there cannot write bytecode: compile
    # it now (the base image's python3 is this minor version) to save every boot
    # the compile time and its memory.
    compileall.compile_dir(staging, quiet=1)
    staging.chmod(0o755)
    staging.rename(target)
    return target
