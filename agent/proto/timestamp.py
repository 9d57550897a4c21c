"""``google.protobuf.Timestamp``: seconds and nanos since the Unix epoch, UTC.

Its JSON form is an RFC 3339 string ("2024-05-01T12:00:00.250Z"), converted
here by calendar arithmetic rather than with `datetime`, which the agent
otherwise has no use for.
"""

from __future__ import annotations

from agent.proto.schema import DecodeError, Field, Message

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Timestamp"]

# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range the JSON form allows.
MIN_SECONDS = -62135596800
MAX_SECONDS = 253402300799
_NANOS_PER_SECOND = 1_000_000_000
_DIGITS = frozenset("0123456789")


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def format_rfc3339(seconds: int, nanos: int) -> str:
    """ "YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z", as protobuf writes it."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS or not 0 <= nanos < _NANOS_PER_SECOND:
        raise ValueError(f"Timestamp out of range: seconds={seconds} nanos={nanos}")
    days, rem = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    text = f"{year:04d}-{month:02d}-{day:02d}T{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}"
    if nanos:
        if nanos % 1_000_000 == 0:
            text += f".{nanos // 1_000_000:03d}"
        elif nanos % 1000 == 0:
            text += f".{nanos // 1000:06d}"
        else:
            text += f".{nanos:09d}"
    return text + "Z"


def parse_rfc3339(text: str) -> tuple[int, int]:
    """(seconds, nanos) from an RFC 3339 date-time with a "Z" or ±HH:MM offset."""
    bad = DecodeError(f"Timestamp: {text!r} is not an RFC 3339 date-time")
    if len(text) < 20 or len(text) > 40:
        raise bad
    if text[4] != "-" or text[7] != "-" or text[10] not in "Tt" or text[13] != ":" or text[16] != ":":
        raise bad
    fields = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
    if not all(_DIGITS.issuperset(part) for part in fields):
        raise bad
    year, month, day, hour, minute, second = (int(part) for part in fields)
    pos = 19
    nanos = 0
    if text[pos] == ".":
        start = pos = pos + 1
        while pos < len(text) and text[pos] in _DIGITS:
            pos += 1
        if not 1 <= pos - start <= 9:
            raise bad
        nanos = int(text[start:pos].ljust(9, "0"))
    zone = text[pos:]
    if zone in ("Z", "z"):
        offset = 0
    elif len(zone) == 6 and zone[0] in "+-" and zone[3] == ":" and _DIGITS.issuperset(zone[1:3] + zone[4:6]):
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        if int(zone[1:3]) > 23 or int(zone[4:6]) > 59:
            raise bad
        if zone[0] == "-":
            offset = -offset
    else:
        raise bad
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month) and hour < 24 and minute < 60 and second < 60):
        raise bad
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise bad
    return seconds, nanos


class Timestamp(Message):
    """google.protobuf.Timestamp (well-known type: its JSON form is a string)."""

    FIELDS = (
        Field(1, "seconds", "int64"),
        Field(2, "nanos", "int32"),
    )

    @classmethod
    def from_ns(cls, ns: int) -> Timestamp:
        """From nanoseconds since the epoch (`os.stat().st_mtime_ns`, `time.time_ns()`)."""
        seconds, nanos = divmod(ns, _NANOS_PER_SECOND)
        return cls(seconds=seconds, nanos=nanos)

    @classmethod
    def from_seconds(cls, seconds: float) -> Timestamp:
        return cls.from_ns(round(seconds * _NANOS_PER_SECOND))

    def to_ns(self) -> int:
        return self.seconds * _NANOS_PER_SECOND + self.nanos  # type: ignore[attr-defined, no-any-return]

    def _json_value(self) -> Any:
        return format_rfc3339(self.seconds, self.nanos)  # type: ignore[attr-defined]

    @classmethod
    def _from_json_value(cls, obj: Any, depth: int) -> Timestamp:
        if not isinstance(obj, str):
            raise DecodeError("Timestamp: expected an RFC 3339 string")
        seconds, nanos = parse_rfc3339(obj)
        return cls(seconds=seconds, nanos=nanos)
