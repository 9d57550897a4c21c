"""The JSON envelope every /v1 answer is wrapped in (see COMPAT.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def success(data: Any, message: str = "ok") -> dict[str, Any]:
    return {"success": True, "data": data, "message": message, "timestamp": now_iso()}


def failure(error: str, message: str, code: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": error, "message": message, "timestamp": now_iso()}
    if code is not None:
        body["code"] = code
    if request_id is not None:
        body["request_id"] = request_id
    return body
