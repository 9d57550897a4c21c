"""Why an in-sandbox operation failed, split by who is at fault.

    SandboxIoError(message)              anything that ends an in-sandbox command
     +-- RemoteError(code, message)      the sandbox (agent or API) refused: a Connect code such as
     |                                   not_found, permission_denied, invalid_argument, unavailable
     +-- ProtocolError                   the answer broke the protocol: a proxy in the way, or a bug
     +-- Unreachable                     no connection to the sandbox domain (DNS, refused, timed out);
     |                                   nothing was sent, so the API path may be tried instead
     +-- ConnectionLost                  the connection broke or went silent in the middle of a call

Transports translate httpx's and the socket's exceptions into these in one
place each (`agent.map_transport_errors`, `api.map_transport_errors`); the
command layer turns them into one line for the user (`describe`).
"""

from __future__ import annotations


class SandboxIoError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RemoteError(SandboxIoError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(SandboxIoError):
    pass


class Unreachable(SandboxIoError):
    pass


class ConnectionLost(SandboxIoError):
    pass


def describe(exc: SandboxIoError, *, path: str | None = None) -> str:
    """The one line a user sees for `exc`; `path` is the remote path as they typed it, if any.

    A missing file reads like the shell's complaint rather than the agent's
    longer wording, which names its internal operation ("open", "stat").
    """
    if isinstance(exc, RemoteError) and path is not None and exc.code == "not_found":
        return f"no such file or directory: {path}"
    return exc.message
