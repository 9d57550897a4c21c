"""One JSON line per event on stderr: ``{"ts": "...Z", "event": "...", ...}``."""

from __future__ import annotations

import json
import sys
import time


def event(name: str, /, **fields: object) -> None:
    """Write one event; never raises, since a lost log line must not stop the agent."""
    record = {"ts": _timestamp(time.time()), "event": name, **fields}
    line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _timestamp(now: float) -> str:
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"
