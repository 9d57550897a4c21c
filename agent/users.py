"""Sandbox users: name -> uid, gid, groups, home, shell; acting as one for a moment.

``lookup`` reads the account database (``/etc/passwd`` and ``/etc/group``
through ``pwd`` and ``os.getgrouplist``); an unknown name raises
``UnknownUser``, whose message names it.

``acting_as(user)`` switches the effective gid, supplementary groups and uid
around one synchronous block and restores root after it, so the kernel checks
permissions and sets ownership exactly as for that user. The agent is
single-threaded and nothing awaits inside the block, so nothing else runs
as that user meanwhile. When the agent is not root (development, unprivileged
tests) it cannot switch, and the block runs as the agent's own user.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple


class User(NamedTuple):
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary gid included
    home: str
    shell: str


class UnknownUser(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} does not exist in the sandbox")
        self.name = name


def lookup(name: str) -> User:
    if not name or "\x00" in name:
        raise UnknownUser(name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(name) from None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return User(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or "/bin/sh",
    )


@contextmanager
def acting_as(user: User) -> Iterator[None]:
    """Run the block with ``user``'s effective ids; a no-op when not root or already that user."""
    if os.geteuid() != 0 or user.uid == 0:
        # Root needs no switch (root's own groups are kept); a non-root agent cannot switch.
        yield
        return
    saved_gid = os.getegid()
    saved_groups = os.getgroups()
    # Groups first: once the uid is no longer 0 they cannot be changed.
    os.setgroups(list(user.groups))
    os.setegid(user.gid)
    try:
        os.seteuid(user.uid)
    except BaseException:
        os.setegid(saved_gid)
        os.setgroups(saved_groups)
        raise
    try:
        yield
    finally:
        os.seteuid(0)  # the saved set-user-id is still 0: this is allowed
        os.setegid(saved_gid)
        os.setgroups(saved_groups)
