"""The control plane's errors, each carrying the HTTP status it maps to.

    ApiError                 (status, error, message, code)
     +-- BadRequest          400  the request is malformed or a field is invalid
     +-- Unauthorized        401  missing or unknown API key
     +-- Forbidden           403  the sandbox refused (e.g. a file the user may not read)
     +-- NotFound            404  no such sandbox or template
     +-- Conflict            409  the sandbox's state does not allow the operation
     +-- Unavailable         503  the container engine or a sandbox's agent failed; retrying may help
     +-- GatewayTimeout      504  a command ran past its timeout

The API layer turns every one of these into the JSON error envelope in one place.
"""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    error = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class BadRequest(ApiError):
    status = 400
    error = "bad_request"


class Unauthorized(ApiError):
    status = 401
    error = "unauthorized"


class Forbidden(ApiError):
    status = 403
    error = "forbidden"


class NotFound(ApiError):
    status = 404
    error = "not_found"


class Conflict(ApiError):
    status = 409
    error = "conflict"


class Unavailable(ApiError):
    status = 503
    error = "service_unavailable"


class GatewayTimeout(ApiError):
    status = 504
    error = "gateway_timeout"
