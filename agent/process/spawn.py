"""Starting a process as a user: its environment, its directory, pipes or a PTY.

Children are started with ``subprocess.Popen`` (which reports exec and chdir
failures as exceptions in the parent) and then never waited for through it:
the agent's reaper collects every child, and the caller sets ``returncode``
when it does, so that ``Popen`` never calls ``waitpid`` on the pid itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from agent.config import child_environ
from agent.process.events import PTY, STDERR, STDOUT
from agent.users import User, acting_as

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Describe the agent's own process, not the one being started.
NOT_INHERITED = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})


class SpawnError(Exception):
    """The process could not be started; ``code`` is the Connect code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Spawned(NamedTuple):
    """A started child and the agent's ends of its I/O (non-blocking fds)."""

    popen: subprocess.Popen[bytes]
    outputs: dict[int, str]  # fd -> stream name
    input_fd: int
    pty_fd: int | None
    cwd: str

    @property
    def pid(self) -> int:
        return self.popen.pid


class Request(NamedTuple):
    cmd: str
    args: Sequence[str] = ()
    envs: Mapping[str, str] = {}  # never mutated
    cwd: str | None = None
    pty_size: tuple[int, int] | None = None  # (rows, cols)


def build_environ(agent_environ: Mapping[str, str], user: User, envs: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment less SCALEBOX_*, the user's identity, then the request's ``envs``.

    The agent's environment is where the sandbox's own variables (the image's
    ENV, the sandbox's env_vars) reach it; the rest is about the user.
    """
    environ = {k: v for k, v in child_environ(agent_environ).items() if k not in NOT_INHERITED}
    environ.setdefault("PATH", DEFAULT_PATH)
    environ.update(HOME=user.home, USER=user.name, LOGNAME=user.name, SHELL=user.shell or "/bin/sh")
    environ.update(envs)
    return environ


def resolve_cwd(cwd: str | None, home: str) -> tuple[str, bool]:
    """The directory to start in, and whether the client asked for it.

    ``~`` and relative paths are taken from the user's home, as a login shell would.
    """
    if not cwd:
        return home or "/", False
    if cwd == "~" or cwd.startswith("~/"):
        cwd = home + cwd[1:]
    return os.path.normpath(os.path.join(home or "/", cwd)), True


def check_cwd(path: str, user: User) -> None:
    """Raise SpawnError unless ``user`` could chdir into ``path``.

    Popen changes directory before it drops root, so without this check a user
    could start in a directory it may not enter.
    """
    try:
        if not os.path.isdir(path):
            reason = "not a directory" if os.path.lexists(path) else "no such file or directory"
            raise SpawnError("invalid_argument", f"cwd '{path}': {reason}")
        with acting_as(user):
            allowed = os.access(path, os.X_OK, effective_ids=True)
    except OSError as exc:
        raise SpawnError("invalid_argument", f"cwd '{path}': {exc.strerror or exc}") from exc
    if not allowed:
        raise SpawnError("permission_denied", f"cwd '{path}': permission denied for user '{user.name}'")


def spawn(request: Request, user: User, agent_environ: Mapping[str, str]) -> Spawned:
    """Start the process; raise SpawnError when it cannot be."""
    cwd, asked = resolve_cwd(request.cwd, user.home)
    if not asked and not os.path.isdir(cwd):
        cwd = "/"  # a user without a home (nobody: /nonexistent) still gets a shell
    check_cwd(cwd, user)
    ids = identity(user)
    environ = build_environ(agent_environ, user, request.envs)
    argv = [request.cmd, *request.args]
    if request.pty_size is not None:
        environ.setdefault("TERM", "xterm-256color")  # the SDKs send it; other clients get a usable default
        return _spawn_pty(argv, cwd, environ, ids, request.pty_size, owner=user.uid)
    return _spawn_pipes(argv, cwd, environ, ids)


def identity(user: User) -> dict[str, object]:
    """Popen's user/group/extra_groups, or nothing when the agent already is that user."""
    if os.geteuid() == 0:
        return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    if user.uid == os.geteuid():
        return {}  # development: the agent runs as the only user it can be
    raise SpawnError("permission_denied", f"the agent does not run as root: it cannot act as '{user.name}'")


def _spawn_pipes(argv: list[str], cwd: str, environ: dict[str, str], identity: dict[str, object]) -> Spawned:
    ours: list[int] = []  # stdin's write end, stdout's and stderr's read ends
    theirs: list[int] = []  # the other ends, which the child gets as 0, 1, 2
    try:
        child_reads, agent_writes = os.pipe()
        ours.append(agent_writes)
        theirs.append(child_reads)
        for _ in range(2):
            agent_reads, child_writes = os.pipe()
            ours.append(agent_reads)
            theirs.append(child_writes)
        popen = _popen(argv, cwd, environ, identity, stdin=theirs[0], stdout=theirs[1], stderr=theirs[2])
    except BaseException:
        _close_all(ours)
        raise
    finally:
        _close_all(theirs)
    for fd in ours:
        os.set_blocking(fd, False)
    return Spawned(popen=popen, outputs={ours[1]: STDOUT, ours[2]: STDERR}, input_fd=ours[0], pty_fd=None, cwd=cwd)


def _spawn_pty(
    argv: list[str],
    cwd: str,
    environ: dict[str, str],
    identity: dict[str, object],
    size: tuple[int, int],
    *,
    owner: int,
) -> Spawned:
    master, slave = pty.openpty()
    try:
        set_window_size(master, *size)
        if identity:
            # The user owns its terminal, as after a login: programs that reopen
            # /dev/pts/N by name (script, some pagers and password prompts) need to.
            os.fchown(slave, owner, -1)
        popen = _popen(
            argv, cwd, environ, identity, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_controlling_tty
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return Spawned(popen=popen, outputs={master: PTY}, input_fd=master, pty_fd=master, cwd=cwd)


def _take_controlling_tty() -> None:
    # Runs in the child after setsid(): make the PTY (its stdin) the session's
    # controlling terminal, so job control, ^C and SIGHUP on close work.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _popen(
    argv: list[str], cwd: str, environ: dict[str, str], identity: dict[str, object], **kwargs: object
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(  # type: ignore[call-overload]
            argv,
            cwd=cwd,
            env=environ,
            start_new_session=True,  # its own process group: signals reach its children too
            close_fds=True,
            **identity,
            **kwargs,
        )
    except OSError as exc:
        raise _spawn_error(argv[0], cwd, exc) from exc
    except subprocess.SubprocessError as exc:  # preexec_fn failed
        raise SpawnError("internal", f"cannot start '{argv[0]}': {exc}") from exc


def _spawn_error(cmd: str, cwd: str, exc: OSError) -> SpawnError:
    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename not in (None, cmd) else None
    detail = f"{reason}: '{where}'" if where else reason
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SpawnError("permission_denied", f"cannot start '{cmd}' in '{cwd}': {detail}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENOEXEC, errno.EISDIR):
        return SpawnError("invalid_argument", f"cannot start '{cmd}' in '{cwd}': {detail}")
    return SpawnError("internal", f"cannot start '{cmd}' in '{cwd}': {detail}")


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", _u16(rows), _u16(cols), 0, 0))


def _u16(value: int) -> int:
    return max(0, min(int(value), 0xFFFF))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
