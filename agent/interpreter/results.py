"""A kernel's outputs as ExecuteResponse messages (pure).

A result's MIME bundle maps onto Result's fields; `json` and `data` carry
JSON text and `png`, `jpeg`, `pdf` base64 (COMPAT.md). Types without a field
of their own go to ``extra`` under their MIME type.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.proto import Error, ExecuteResponse, Output, Result, Timestamp

# The official Python SDK (1.0.10) builds its Result with a parameter named
# `json` that shadows the json module: a result whose `json` or `data` field is
# set makes it raise ("'str' object has no attribute 'loads'"). Its clients
# (urllib3 for the sync SDK, aiohttp for the async one) get those renderings in
# `extra` under their MIME type instead, which it keeps as they are.
JSON_FIELDS = frozenset({"json", "data"})


def json_fields_break(user_agent: str | None) -> bool:
    """Whether the client is one that cannot take the `json` and `data` fields."""
    agent = user_agent or ""
    return agent.startswith("python-urllib3/") or "aiohttp/" in agent


FIELD_FOR_MIME = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "application/vnd.scalebox.data+json": "data",
}


def result_message(
    data: Mapping[str, str],
    *,
    main: bool,
    execution_count: int,
    started_ns: int,
    finished_ns: int,
    json_in_extra: bool = False,
) -> ExecuteResponse:
    fields: dict[str, object] = {}
    extra: dict[str, str] = {}
    for mime, value in data.items():
        field = FIELD_FOR_MIME.get(mime)
        if field is None or (json_in_extra and field in JSON_FIELDS):
            extra[mime] = value
        else:
            fields[field] = value
    result = Result(
        exit_code=0,
        started_at=Timestamp.from_ns(started_ns),
        finished_at=Timestamp.from_ns(finished_ns),
        execution_count=execution_count,
        is_main_result=main,
        extra=extra,
        **fields,
    )
    return ExecuteResponse(result=result)


def output_message(stream: str, text: str) -> ExecuteResponse:
    if stream == "stdout":
        return ExecuteResponse(stdout=Output(content=text))
    return ExecuteResponse(stderr=Output(content=text))


def error_message(name: str, value: str, traceback: str) -> ExecuteResponse:
    return ExecuteResponse(error=Error(name=name, value=value, traceback=traceback))
