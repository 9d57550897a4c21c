"""The agent's HTTP/1.1 server: asyncio and h11, streaming both ways.

message.py   Request (streamed body), Response (bytes or async iterator), HttpError
routes.py    exact, prefix and pattern routes behind an auth guard
server.py    listeners and connections: deadlines, backpressure, linger, graceful stop

routes.add("GET", "/health", handler, auth=PUBLIC)
routes.add_prefix("GET", "/download/", handler, auth=DOWNLOAD)
async def handler(request: Request) -> Response
"""

from agent.http.message import HttpError, Request, Response, error_response, json_response
from agent.http.routes import Routes
from agent.http.server import HttpServer

__all__ = ["HttpError", "HttpServer", "Request", "Response", "Routes", "error_response", "json_response"]
