"""Structured logging: one JSON line per event on stderr.

Every line carries `event` and `ts`; request-scoped lines carry `request_id` too.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

_out: TextIO = sys.stderr


def event(name: str, **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "event": name, **fields}
    try:
        _out.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        _out.flush()
    except (OSError, ValueError):
        # A closed or broken stderr must never take a request down with it.
        pass
