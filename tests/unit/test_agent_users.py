"""agent.users: account lookup, and acting as a user (the tests run as root here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import users

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def test_lookup_root_and_nobody() -> None:
    root = users.lookup("root")
    assert (root.uid, root.gid, root.home) == (0, 0, "/root")
    assert 0 in root.groups
    nobody = users.lookup("nobody")
    assert nobody.uid == 65534
    assert nobody.gid in nobody.groups
    assert nobody.shell


@pytest.mark.parametrize("name", ["no-such-user-here", "", "a\x00b"])
def test_unknown_user(name: str) -> None:
    with pytest.raises(users.UnknownUser) as caught:
        users.lookup(name)
    assert repr(name) in str(caught.value)
    assert isinstance(caught.value, LookupError)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone can write in (pytest's tmp_path sits under a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix="agent-users-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@needs_root
def test_acting_as_sets_and_restores_ids(shared_dir: Path) -> None:
    nobody = users.lookup("nobody")
    before = (os.geteuid(), os.getegid(), os.getgroups())
    with users.acting_as(nobody):
        assert (os.geteuid(), os.getegid()) == (nobody.uid, nobody.gid)
        assert set(os.getgroups()) == set(nobody.groups)
        assert os.getuid() == 0  # only the effective ids change: root can come back
        (shared_dir / "made").write_text("x")
        with pytest.raises(PermissionError):
            Path("/root/not-allowed").write_text("x")
    assert (os.geteuid(), os.getegid(), os.getgroups()) == before
    made = (shared_dir / "made").stat()
    assert (made.st_uid, made.st_gid) == (nobody.uid, nobody.gid)


@needs_root
def test_acting_as_restores_after_an_error() -> None:
    before = (os.geteuid(), os.getegid(), os.getgroups())
    with pytest.raises(RuntimeError), users.acting_as(users.lookup("nobody")):
        raise RuntimeError("inside")
    assert (os.geteuid(), os.getegid(), os.getgroups()) == before


def test_acting_as_root_or_when_unprivileged_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> None:
        raise AssertionError("no id may change")

    for name in ("seteuid", "setegid", "setgroups"):
        monkeypatch.setattr(os, name, forbidden)
    with users.acting_as(users.lookup("root")):
        pass
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with users.acting_as(users.lookup("nobody")):
        pass
