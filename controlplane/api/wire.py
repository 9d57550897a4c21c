"""JSON in and out of the /v1 routes: one reader of request bodies, one writer of answers."""

from __future__ import annotations

import json
from typing import Any

import trio
from quart import Response, request
from werkzeug.exceptions import HTTPException

from controlplane.errors import BadRequest


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status=status, content_type="application/json")


async def read_json_body() -> Any:
    """The request's JSON, or None when it has no body; BadRequest says what is wrong with it."""
    raw: bytes = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 (byte {exc.start})", code="invalid_json") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        # Not a JSONDecodeError: int() refusing a number of more than 4300 digits.
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None


# How long an answer waits for the rest of a request body it did not need.
DRAIN_SECONDS = 10.0


async def drain_body() -> None:
    """Read and drop whatever is left of the request's body, before the answer goes out.

    Hypercorn (0.18, HTTP/1.1) leaves a keep-alive connection stuck when the answer is sent
    before the client has sent the whole body: the client's next request on that connection
    is never answered (seen with requests, which writes headers and body apart). Errors
    raised before a route reads its body (a missing API key, an unknown sandbox, a bad
    query) answer early like that, so every answer first takes the rest of the body, chunk
    by chunk (nothing is buffered), for at most DRAIN_SECONDS.
    """
    with trio.move_on_after(DRAIN_SECONDS):
        try:
            async for _ in request.body:
                pass
        except HTTPException:
            # 413: a body over the limit is refused unread; there is nothing to drain.
            pass
