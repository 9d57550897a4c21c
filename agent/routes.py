"""The agent's own HTTP routes (readiness) and the routes table the services join."""

from __future__ import annotations

from agent.auth import PUBLIC, Authenticator
from agent.http import Request, Response, Routes, error_response


class Health:
    """Readiness as ``/health`` reports it: 204 when ready, 503 otherwise."""

    def __init__(self) -> None:
        self.ready = False

    async def handle(self, request: Request) -> Response:
        if self.ready:
            return Response(204)
        return error_response(503, "unavailable", "the agent is not ready")


def build_routes(health: Health, authenticator: Authenticator) -> Routes:
    routes = Routes(guard=authenticator.check)
    routes.add("GET", "/health", health.handle, auth=PUBLIC)
    return routes
