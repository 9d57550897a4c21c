"""Connect error codes, their HTTP statuses, and the one error type handlers raise.

    ConnectError(code, message)     what a handler raises to fail a call
        .http_status                the status a unary call answers with

Streams always answer HTTP 200 and carry the error in their end-of-stream
envelope; ``from_http_error`` turns the HTTP layer's errors (a body cut
short, a limit, the auth guard) into the code a Connect client expects.
"""

from __future__ import annotations

from agent.http.message import HttpError

# https://connectrpc.com/docs/protocol/#error-codes
HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

# The Connect code an HTTP status stands for; the one table the agent, the
# gateway and the CLI use when an HTTP answer must be read as a Connect error.
CODE_FOR_HTTP_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    408: "deadline_exceeded",
    409: "already_exists",
    413: "resource_exhausted",
    429: "resource_exhausted",
    501: "unimplemented",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
    507: "resource_exhausted",
}


class ConnectError(Exception):
    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"not a Connect error code: {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"ConnectError({self.code!r}, {self.message!r})"


def from_http_error(exc: HttpError) -> ConnectError:
    code = exc.code if exc.code in HTTP_STATUS else CODE_FOR_HTTP_STATUS.get(exc.status, "unknown")
    return ConnectError(code, exc.message)
