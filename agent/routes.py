"""The agent's HTTP routes. Only readiness for now; files and processes come later."""

from __future__ import annotations

from agent.http1 import Request, Response, error_response
from agent.server import Routes


class Health:
    """Readiness as ``/health`` reports it: 204 when ready, 503 otherwise."""

    def __init__(self) -> None:
        self.ready = False

    async def handle(self, request: Request) -> Response:
        if self.ready:
            return Response(204)
        return error_response(503, "unavailable", "the agent is not ready")


def build_routes(health: Health) -> Routes:
    routes = Routes()
    routes.add("GET", "/health", health.handle)
    return routes
