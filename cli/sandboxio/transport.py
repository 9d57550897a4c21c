"""What the two ways into a sandbox have in common: the backend interface and the shared values.

Backend         one way of reaching a sandbox: `agent.AgentBackend` (straight to
                its sandbox domain) or `api.ApiBackend` (through the /v1 API)
PtyChannel      an open terminal session, driven by `terminal.run`
Download        a file being received: its length when known, its bytes as they arrive
Upload          a file being sent: its name, its length when known, its bytes as read
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from cli.sandboxio.messages import CommandSpec, Entry, ProcessEvent, PtySize

Verify = ssl.SSLContext | bool


@dataclass(frozen=True, kw_only=True)
class SandboxRef:
    """Everything needed to reach one sandbox, either way."""

    sandbox_id: str
    domain: str  # "<id>.sbx.localhost:8443", no scheme
    token: str  # envd_access_token
    user: str
    api_url: str  # ".../v1"
    api_key: str
    verify: Verify
    scheme: str = "https"

    @property
    def agent_url(self) -> str:
        return f"{self.scheme}://{self.domain}"


@dataclass(frozen=True, slots=True)
class Download:
    length: int | None
    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str  # the local file's name, for the multipart part
    length: int | None  # None: sent chunked, e.g. from a pipe
    chunks: Iterable[bytes]


class PtyChannel(Protocol):
    """A terminal process that has started (`pid` is known)."""

    pid: int

    def fileno(self) -> int:
        """A descriptor to select() on: readable when `events()` may have something."""
        ...

    def events(self) -> list[ProcessEvent]:
        """What has arrived, without blocking; empty when nothing has."""
        ...

    def send_input(self, data: bytes) -> None: ...

    def resize(self, size: PtySize) -> None: ...

    def kill(self) -> None:
        """End the remote process (best effort; it may have ended already)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str  # "direct" or "api", for messages and tests

    def start(self, spec: CommandSpec, *, tag: str) -> AbstractContextManager[Iterator[ProcessEvent]]:
        """Start a process; iterate its events. Errors before the start raise on entry."""
        ...

    def kill(self, *, pid: int | None = None, tag: str | None = None) -> None:
        """SIGKILL a process; one that is already gone is not an error."""
        ...

    def download(self, path: str) -> AbstractContextManager[Download]: ...

    def upload(self, path: str, upload: Upload) -> None: ...

    def list_dir(self, path: str, depth: int) -> list[Entry]: ...

    def open_pty(self, spec: CommandSpec, size: PtySize) -> PtyChannel: ...

    def close(self) -> None: ...
