"""The routes table: which handler answers a request, after the guard allowed it.

A path is looked up as an exact path first, then as the longest matching
prefix, then against patterns (full-match regular expressions) in the order
they were added. A path found with another method is a 405 (HEAD falls back
to GET); no path at all is a 404.

Every route carries an ``auth`` policy, opaque here: the guard given to
``Routes`` (``agent.auth.Authenticator.check``) reads it, raises HttpError to
refuse, and records its decision on ``request.auth``. It runs before the
handler, so a handler cannot forget it. A route's ``errors`` renders an
HttpError the way its protocol wants (Connect answers in its own format).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Callable, NamedTuple

from agent.http.message import HttpError, Request, Response, error_response

Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Request, object], None]
ErrorRenderer = Callable[[Request, HttpError], Response]


class Route(NamedTuple):
    handler: Handler
    auth: object
    errors: ErrorRenderer | None  # a string annotation: NamedTuple does not evaluate it


def render_http_error(request: Request, exc: HttpError) -> Response:
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


class Routes:
    def __init__(self, *, guard: Guard | None = None) -> None:
        self._guard = guard
        self._exact: dict[str, dict[str, Route]] = {}
        self._prefixes: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Route]]] = []

    def add(
        self, method: str, path: str, handler: Handler, *, auth: object = None, errors: ErrorRenderer | None = None
    ) -> None:
        self._exact.setdefault(path, {})[method] = Route(handler, auth, errors)

    def add_prefix(
        self, method: str, prefix: str, handler: Handler, *, auth: object = None, errors: ErrorRenderer | None = None
    ) -> None:
        self._prefixes.setdefault(prefix, {})[method] = Route(handler, auth, errors)

    def add_pattern(
        self, method: str, pattern: str, handler: Handler, *, auth: object = None, errors: ErrorRenderer | None = None
    ) -> None:
        for compiled, methods in self._patterns:
            if compiled.pattern == pattern:
                methods[method] = Route(handler, auth, errors)
                return
        self._patterns.append((re.compile(pattern), {method: Route(handler, auth, errors)}))

    def lookup(self, path: str) -> dict[str, Route] | None:
        """The routes (method -> Route) serving ``path``, or None."""
        methods = self._exact.get(path)
        if methods is not None:
            return methods
        best = ""
        for prefix in self._prefixes:
            if len(prefix) > len(best) and path.startswith(prefix):
                best = prefix
        if best:
            return self._prefixes[best]
        for compiled, methods in self._patterns:
            if compiled.fullmatch(path):
                return methods
        return None

    async def __call__(self, request: Request) -> Response:
        methods = self.lookup(request.path)
        if methods is None:
            return error_response(404, "not_found", f"no route for {request.path[:200]}")
        route = methods.get(request.method)
        if route is None and request.method == "HEAD":
            route = methods.get("GET")
        if route is None:
            allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path[:200]}",
                headers=[("Allow", ", ".join(allowed))],
            )
        try:
            if self._guard is not None:
                self._guard(request, route.auth)
            return await route.handler(request)
        except HttpError as exc:
            return (route.errors or render_http_error)(request, exc)
