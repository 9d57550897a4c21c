"""A small declarative message system over `agent.proto.wire`.

A message is a `Message` subclass listing its fields in ``FIELDS``::

    class ProcessConfig(Message):
        FIELDS = (
            Field(1, "cmd", "string"),
            Field(2, "args", "string", repeated=True),
            Field(3, "envs", "map"),                      # map<string, string>
            Field(4, "cwd", "string", optional=True),     # proto3 `optional`
        )

From that the metaclass builds ``__slots__`` (one per field: cheap instances,
and a typo'd attribute is an error), the lookup tables for the binary and
JSON codecs, and the oneof bookkeeping. Message and enum field types are
classes, or for a type declared later (recursive messages) the class's
dotted name in the same module as a string.

Semantics follow proto3: implicit-presence scalars are omitted when they
hold their zero value; ``optional`` fields, oneof members and message fields
are ``None`` when unset; unknown fields are skipped on decode. Decoding of
either form raises only `DecodeError`; encoding a value of the wrong type or
range is a programming error (TypeError/ValueError).
"""

from __future__ import annotations

import binascii
import struct
import sys

from agent.proto.wire import (
    FIXED64,
    LEN,
    MASK32,
    VARINT,
    DecodeError,
    decode_varint,
    decode_zigzag,
    encode_len,
    encode_tag,
    encode_varint,
    encode_zigzag,
    iter_fields,
    signed32,
    signed64,
)

# Annotations stay strings (postponed evaluation), so typing is only needed by
# type checkers: not importing it at runtime keeps the agent's footprint down.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    M = TypeVar("M", bound="Message")

__all__ = ["MAX_DEPTH", "DecodeError", "Field", "Message"]

# Nesting limit for both codecs (protobuf's own default): recursive types
# (Chart -> ChartElement -> Chart) must not let input exhaust the C stack.
MAX_DEPTH = 100

KINDS = (
    "string",
    "bytes",
    "bool",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "double",
    "enum",
    "message",
    "map",
)

_INT_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "sint32": (-(1 << 31), (1 << 31) - 1),
    "enum": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "sint64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}
# proto3 JSON writes 64-bit integers as strings (JavaScript numbers are doubles).
_INT_AS_STRING = frozenset(("int64", "uint64", "sint64"))

_DOUBLE = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_ZERO8 = bytes(8)

# Map entries are tiny messages: key = 1, value = 2, both strings here.
_MAP_KEY_TAG = encode_tag(1, LEN)
_MAP_VALUE_TAG = encode_tag(2, LEN)

_B64_URLSAFE = bytes.maketrans(b"-_", b"+/")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_FLOAT_CHARS = frozenset("0123456789+-.eE")


def _json_name(name: str) -> str:
    """lowerCamelCase exactly as protoc derives json_name ("chart_2d" -> "chart2d")."""
    out = []
    upper = False
    for ch in name:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Field:
    """One field of a message: number, name, kind and cardinality."""

    __slots__ = (
        "_enum_by_name",
        "_enum_by_value",
        "_ref",
        "json_name",
        "kind",
        "name",
        "number",
        "oneof",
        "optional",
        "owner",
        "packed",
        "presence",
        "repeated",
        "tag",
        "wire_type",
    )

    def __init__(
        self,
        number: int,
        name: str,
        kind: str,
        ref: type | str | None = None,
        *,
        repeated: bool = False,
        optional: bool = False,
        oneof: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise TypeError(f"field {name}: unknown kind {kind!r}")
        if (kind in ("message", "enum")) != (ref is not None):
            raise TypeError(f"field {name}: message and enum fields (only) take a type")
        if kind == "enum" and isinstance(ref, str):
            raise TypeError(f"field {name}: enum types must be declared before use")
        if sum((repeated, optional, oneof is not None, kind == "map")) > 1:
            raise TypeError(f"field {name}: repeated, optional, oneof and map exclude each other")
        self.number = number
        self.name = name
        self.kind = kind
        self._ref = ref
        self.repeated = repeated
        self.optional = optional
        self.oneof = oneof
        self.json_name = _json_name(name)
        self.owner: type[Message] | None = None
        # Fields whose absence differs from their zero value: these are None when unset.
        self.presence = optional or oneof is not None or kind == "message"
        if kind in ("string", "bytes", "message", "map"):
            self.wire_type = LEN
        elif kind == "double":
            self.wire_type = FIXED64
        else:
            self.wire_type = VARINT
        # proto3 packs repeated numeric fields by default.
        self.packed = repeated and self.wire_type != LEN
        self.tag = encode_tag(number, LEN if self.packed else self.wire_type)
        if kind == "enum":
            self._enum_by_value = {int(m): m for m in ref}  # type: ignore[union-attr]
            self._enum_by_name = {m.name: m for m in ref}  # type: ignore[union-attr]

    @property
    def where(self) -> str:
        owner = self.owner.__qualname__ if self.owner is not None else "?"
        return f"{owner}.{self.name}"

    @property
    def message_type(self) -> type[Message]:
        ref = self._ref
        if isinstance(ref, str):
            # A forward reference: resolved on first use, when the module is complete.
            obj: Any = sys.modules[self.owner.__module__]  # type: ignore[union-attr]
            for part in ref.split("."):
                obj = getattr(obj, part)
            self._ref = ref = obj
        return ref  # type: ignore[return-value]

    def default(self) -> Any:
        if self.repeated:
            return []
        if self.kind == "map":
            return {}
        if self.presence:
            return None
        return _ZEROS[self.kind]

    def is_zero(self, value: Any) -> bool:
        if self.kind == "double":
            # Bitwise, as protobuf does: -0.0 is not the default and is sent.
            return value == 0 and _DOUBLE.pack(value) == _ZERO8
        return not value

    # --- binary -------------------------------------------------------------

    def encode_scalar(self, value: Any) -> bytes:
        """The payload of one non-message value (with its length for LEN kinds)."""
        kind = self.kind
        if kind == "string":
            if not isinstance(value, str):
                raise TypeError(f"{self.where}: expected str, got {type(value).__name__}")
            return encode_len(value.encode("utf-8"))
        if kind == "bytes":
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"{self.where}: expected bytes, got {type(value).__name__}")
            return encode_len(bytes(value))
        if kind == "bool":
            return b"\x01" if value else b"\x00"
        if kind == "double":
            if not isinstance(value, (int, float)):
                raise TypeError(f"{self.where}: expected float, got {type(value).__name__}")
            return _DOUBLE.pack(value)
        if not isinstance(value, int):
            raise TypeError(f"{self.where}: expected int, got {type(value).__name__}")
        lo, hi = _INT_RANGES[kind]
        if not lo <= value <= hi:
            raise ValueError(f"{self.where}: {value} is out of range for {kind}")
        if kind in ("sint32", "sint64"):
            value = encode_zigzag(value)
        return encode_varint(int(value))

    def decode_scalar(self, raw: int | bytes) -> Any:
        """A Python value from a raw wire value of this field's wire type."""
        kind = self.kind
        if kind == "string":
            try:
                return raw.decode("utf-8")  # type: ignore[union-attr]
            except UnicodeDecodeError:
                raise DecodeError(f"{self.where}: invalid UTF-8") from None
        if kind == "bytes":
            return raw
        if kind == "bool":
            return raw != 0
        if kind == "double":
            return _DOUBLE.unpack(_U64.pack(raw))[0]
        if kind == "uint64":
            return raw
        if kind == "int64":
            return signed64(raw)  # type: ignore[arg-type]
        if kind == "uint32":
            return raw & MASK32  # type: ignore[operator]
        if kind == "sint32":
            return decode_zigzag(raw & MASK32)  # type: ignore[operator]
        if kind == "sint64":
            return decode_zigzag(raw)  # type: ignore[arg-type]
        value = signed32(raw)  # type: ignore[arg-type]
        if kind == "enum":
            # proto3 enums are open: an unknown number is kept as a plain int.
            return self._enum_by_value.get(value, value)
        return value

    def decode_packed(self, payload: bytes) -> list[Any]:
        values = []
        if self.wire_type == FIXED64:
            if len(payload) % 8:
                raise DecodeError(f"{self.where}: packed doubles not a multiple of 8 bytes")
            for (raw,) in _U64.iter_unpack(payload):
                values.append(self.decode_scalar(raw))
            return values
        pos = 0
        end = len(payload)
        while pos < end:
            raw, pos = decode_varint(payload, pos)
            values.append(self.decode_scalar(raw))
        return values

    # --- JSON ---------------------------------------------------------------

    def to_json(self, value: Any) -> Any:
        """The proto3 JSON form of one (non-repeated) value."""
        kind = self.kind
        if kind == "message":
            return value._json_value()
        if kind in _INT_AS_STRING:
            return str(value)
        if kind == "bytes":
            return binascii.b2a_base64(bytes(value), newline=False).decode("ascii")
        if kind == "enum":
            member = self._enum_by_value.get(value)
            return member.name if member is not None else int(value)
        if kind == "double":
            if value != value:
                return "NaN"
            if value in (_INF, -_INF):
                return "Infinity" if value > 0 else "-Infinity"
            return float(value)
        if kind in _INT_RANGES:
            return int(value)
        return value

    def from_json(self, value: Any, depth: int) -> Any:
        """One (non-repeated) value from its JSON form; DecodeError on a bad shape."""
        kind = self.kind
        if kind == "message":
            try:
                return self.message_type._from_json_value(value, depth + 1)
            except DecodeError as exc:
                # Prefix the path, so the message names the field from the top.
                raise DecodeError(f"{self.where}: {exc}") from None
        if kind == "string":
            if not isinstance(value, str):
                raise self._bad(value, "a string")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise self._bad(value, "true or false")
            return value
        if kind == "bytes":
            return self._bytes_from_json(value)
        if kind == "double":
            return self._double_from_json(value)
        if kind == "enum" and isinstance(value, str):
            member = self._enum_by_name.get(value)
            if member is None:
                raise DecodeError(f"{self.where}: unknown enum value {value!r}")
            return member
        number = self._int_from_json(value)
        if kind == "enum":
            return self._enum_by_value.get(number, number)
        return number

    def _bad(self, value: object, expected: str) -> DecodeError:
        return DecodeError(f"{self.where}: expected {expected}, got {_type_name(value)}")

    def _int_from_json(self, value: Any) -> int:
        # Numbers or strings of numbers; integral floats ("1e3", 2.0) are accepted
        # as protobuf's own parser does, anything fractional or out of range is not.
        if isinstance(value, bool):
            raise self._bad(value, "an integer")
        if isinstance(value, int):
            number = value
        elif isinstance(value, float):
            if not value.is_integer():
                raise DecodeError(f"{self.where}: {value!r} is not an integer")
            number = int(value)
        elif isinstance(value, str):
            digits = value[1:] if value[:1] == "-" else value
            if 0 < len(digits) <= 20 and digits.isascii() and digits.isdigit():
                number = int(value)
            elif 0 < len(value) <= 32 and _FLOAT_CHARS.issuperset(value):
                try:
                    as_float = float(value)
                except ValueError:
                    raise DecodeError(f"{self.where}: {value!r} is not an integer") from None
                if not as_float.is_integer():
                    raise DecodeError(f"{self.where}: {value!r} is not an integer")
                number = int(as_float)
            else:
                raise DecodeError(f"{self.where}: {value!r} is not an integer")
        else:
            raise self._bad(value, "an integer")
        lo, hi = _INT_RANGES[self.kind]
        if not lo <= number <= hi:
            raise DecodeError(f"{self.where}: {value!r} is out of range for {self.kind}")
        return number

    def _double_from_json(self, value: Any) -> float:
        if isinstance(value, bool):
            raise self._bad(value, "a number")
        if isinstance(value, (int, float)):
            try:
                return float(value)
            except OverflowError:
                raise DecodeError(f"{self.where}: {value!r} is out of range for double") from None
        if isinstance(value, str):
            special = _SPECIAL_DOUBLES.get(value)
            if special is not None:
                return special
            if 0 < len(value) <= 64 and _FLOAT_CHARS.issuperset(value):
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if number not in (_INF, -_INF):
                        return number
            raise DecodeError(f"{self.where}: {value!r} is not a number")
        raise self._bad(value, "a number")

    def _bytes_from_json(self, value: Any) -> bytes:
        # Standard base64 out; in, also the URL-safe alphabet and missing padding
        # (both show up from JavaScript clients).
        if not isinstance(value, str):
            raise self._bad(value, "a base64 string")
        try:
            raw = value.encode("ascii").translate(_B64_URLSAFE)
        except UnicodeEncodeError:
            raise DecodeError(f"{self.where}: invalid base64") from None
        if raw.translate(None, _B64_ALPHABET):
            raise DecodeError(f"{self.where}: invalid base64")
        raw = raw.rstrip(b"=")
        if b"=" in raw or len(raw) % 4 == 1:
            raise DecodeError(f"{self.where}: invalid base64")
        try:
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        except binascii.Error:
            raise DecodeError(f"{self.where}: invalid base64") from None


_INF = float("inf")
_SPECIAL_DOUBLES = {"NaN": float("nan"), "Infinity": _INF, "-Infinity": -_INF}
_ZEROS: dict[str, Any] = {"string": "", "bytes": b"", "bool": False, "double": 0.0}
for _kind in _INT_RANGES:
    _ZEROS[_kind] = 0


class _MessageMeta(type):
    """Turns a ``FIELDS`` declaration into slots and codec tables."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> _MessageMeta:
        fields = tuple(sorted(namespace.get("FIELDS", ()), key=lambda f: f.number))
        namespace["__slots__"] = tuple(f.name for f in fields)
        cls = super().__new__(mcls, name, bases, namespace)
        by_number: dict[int, Field] = {}
        by_name: dict[str, Field] = {}
        by_json: dict[str, Field] = {}
        oneofs: dict[str, list[Field]] = {}
        for f in fields:
            if f.owner is not None:
                raise TypeError(f"{name}.{f.name}: a Field belongs to one message only")
            if f.number in by_number or f.name in by_name:
                raise TypeError(f"{name}.{f.name}: duplicate field number or name")
            if f.name in _RESERVED:
                raise TypeError(f"{name}.{f.name}: field name shadows a Message attribute")
            f.owner = cls  # type: ignore[assignment]
            by_number[f.number] = f
            by_name[f.name] = f
            by_json[f.name] = f
            by_json[f.json_name] = f
            if f.oneof is not None:
                oneofs.setdefault(f.oneof, []).append(f)
        cls._fields = fields
        cls._by_number = by_number
        cls._by_name = by_name
        cls._by_json = by_json
        cls._oneofs = {group: tuple(members) for group, members in oneofs.items()}
        if oneofs:
            cls.__setattr__ = _oneof_setattr  # type: ignore[assignment]
        return cls


def _oneof_setattr(self: Message, name: str, value: Any) -> None:
    # Installed only on messages with a oneof: setting a member clears its
    # siblings, so at most one is ever set (and encoded).
    f = self._by_name.get(name)
    if f is not None and f.oneof is not None and value is not None:
        for other in self._oneofs[f.oneof]:
            if other is not f:
                object.__setattr__(self, other.name, None)
    object.__setattr__(self, name, value)


class Message(metaclass=_MessageMeta):
    """Base class of every message; see the module docstring."""

    __slots__ = ()
    FIELDS: tuple[Field, ...] = ()

    # Filled in by the metaclass.
    _fields: tuple[Field, ...]
    _by_number: dict[int, Field]
    _by_name: dict[str, Field]
    _by_json: dict[str, Field]
    _oneofs: dict[str, tuple[Field, ...]]

    def __init__(self, **kwargs: Any) -> None:
        cls = type(self)
        for f in cls._fields:
            value = kwargs.pop(f.name, None)
            if value is None:
                value = f.default()
            elif f.repeated:
                value = list(value)
            elif f.kind == "map":
                value = dict(value)
            object.__setattr__(self, f.name, value)
        if kwargs:
            raise TypeError(f"{cls.__qualname__} has no field {next(iter(kwargs))!r}")
        for group, members in cls._oneofs.items():
            given = [f.name for f in members if getattr(self, f.name) is not None]
            if len(given) > 1:
                raise ValueError(f"{cls.__qualname__}: {' and '.join(given)} are both in oneof {group}")

    def which_oneof(self, group: str) -> str | None:
        """The name of the member of oneof `group` that is set, or None."""
        try:
            members = self._oneofs[group]
        except KeyError:
            raise ValueError(f"{type(self).__qualname__} has no oneof {group!r}") from None
        for f in members:
            if getattr(self, f.name) is not None:
                return f.name
        return None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        parts = []
        for f in self._fields:
            value = getattr(self, f.name)
            if f.repeated or f.kind == "map":
                shown = bool(value)
            else:
                shown = value is not None and (f.presence or not f.is_zero(value))
            if shown:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__qualname__}({', '.join(parts)})"

    # --- binary -------------------------------------------------------------

    def encode(self) -> bytes:
        """The protobuf binary encoding (fields in number order, repeated numbers packed)."""
        out = bytearray()
        for f in self._fields:
            value = getattr(self, f.name)
            if value is None:
                continue
            kind = f.kind
            tag = f.tag
            if kind == "map":
                for key, item in value.items():
                    entry = _MAP_KEY_TAG + encode_len(key.encode("utf-8"))
                    entry += _MAP_VALUE_TAG + encode_len(item.encode("utf-8"))
                    out += tag
                    out += encode_len(entry)
            elif f.repeated:
                if not value:
                    continue
                if kind == "message":
                    for item in value:
                        out += tag
                        out += encode_len(f.message_type._check(item, f).encode())
                elif f.packed:
                    out += tag
                    out += encode_len(b"".join([f.encode_scalar(item) for item in value]))
                else:
                    for item in value:
                        out += tag
                        out += f.encode_scalar(item)
            elif kind == "message":
                out += tag
                out += encode_len(f.message_type._check(value, f).encode())
            elif f.presence or not f.is_zero(value):
                out += tag
                out += f.encode_scalar(value)
        return bytes(out)

    @classmethod
    def _check(cls: type[M], value: Any, f: Field) -> M:
        if type(value) is not cls:
            raise TypeError(f"{f.where}: expected {cls.__qualname__}, got {type(value).__qualname__}")
        return value

    @classmethod
    def decode(cls: type[M], data: bytes | bytearray | memoryview) -> M:
        """Parse the protobuf binary form; raises DecodeError on malformed input."""
        msg = cls()
        msg._merge(data if isinstance(data, bytes) else bytes(data), 0)
        return msg

    def _merge(self, data: bytes, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DecodeError(f"{type(self).__qualname__}: nested more than {MAX_DEPTH} deep")
        by_number = self._by_number
        for number, wire_type, raw in iter_fields(data):
            f = by_number.get(number)
            if f is None:
                continue  # unknown field
            if wire_type != f.wire_type:
                if f.packed and wire_type == LEN:
                    getattr(self, f.name).extend(f.decode_packed(raw))  # type: ignore[arg-type]
                # Any other mismatch is treated as an unknown field, as protobuf does.
                continue
            kind = f.kind
            if kind == "message":
                if f.repeated:
                    item = f.message_type()
                    item._merge(raw, depth + 1)  # type: ignore[arg-type]
                    getattr(self, f.name).append(item)
                    continue
                current = getattr(self, f.name)
                if current is None:
                    current = f.message_type()
                # A repeated occurrence of a message field merges into it.
                current._merge(raw, depth + 1)
                value = current
            elif kind == "map":
                key, item = _decode_map_entry(raw, f)  # type: ignore[arg-type]
                getattr(self, f.name)[key] = item
                continue
            else:
                value = f.decode_scalar(raw)
                if f.repeated:
                    getattr(self, f.name).append(value)
                    continue
            if f.oneof is not None:
                for other in self._oneofs[f.oneof]:
                    if other is not f:
                        object.__setattr__(self, other.name, None)
            object.__setattr__(self, f.name, value)

    # --- JSON ---------------------------------------------------------------

    def to_json(self) -> Any:
        """The proto3 JSON mapping as plain Python values (a dict; a str for Timestamp)."""
        return self._json_value()

    def _json_value(self) -> Any:
        out: dict[str, Any] = {}
        for f in self._fields:
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.kind == "map":
                if value:
                    out[f.json_name] = dict(value)
            elif f.repeated:
                if value:
                    out[f.json_name] = [f.to_json(item) for item in value]
            elif f.presence or not f.is_zero(value):
                out[f.json_name] = f.to_json(value)
        return out

    @classmethod
    def from_json(cls: type[M], obj: Any) -> M:
        """Build from the proto3 JSON mapping (already parsed: dicts, lists, ...).

        Field names may be lowerCamelCase or the proto names; unknown names are
        skipped; ``null`` means the default. Raises DecodeError naming the field
        on a value of the wrong shape."""
        return cls._from_json_value(obj, 0)

    @classmethod
    def _from_json_value(cls: type[M], obj: Any, depth: int) -> M:
        if depth > MAX_DEPTH:
            raise DecodeError(f"{cls.__qualname__}: nested more than {MAX_DEPTH} deep")
        if not isinstance(obj, dict):
            raise DecodeError(f"{cls.__qualname__}: expected an object, got {_type_name(obj)}")
        msg = cls()
        seen: set[int] = set()
        oneofs_set: dict[str, str] = {}
        by_json = cls._by_json
        for key, value in obj.items():
            f = by_json.get(key)
            if f is None:
                continue
            if f.number in seen:
                raise DecodeError(f"{f.where}: given twice")
            seen.add(f.number)
            if value is None:
                continue
            if f.kind == "map":
                value = _map_from_json(value, f)
            elif f.repeated:
                if not isinstance(value, list):
                    raise f._bad(value, "an array")
                value = [f.from_json(item, depth) for item in value]
            else:
                if f.oneof is not None:
                    other = oneofs_set.get(f.oneof)
                    if other is not None:
                        raise DecodeError(f"{f.where}: {other} of the same oneof {f.oneof} is also given")
                    oneofs_set[f.oneof] = f.name
                value = f.from_json(value, depth)
            object.__setattr__(msg, f.name, value)
        return msg


_RESERVED = frozenset(name for name in vars(Message) if not name.startswith("__"))


def _decode_map_entry(data: bytes, f: Field) -> tuple[str, str]:
    key = value = ""
    for number, wire_type, raw in iter_fields(data):
        if wire_type != LEN or number not in (1, 2):
            continue
        try:
            text = raw.decode("utf-8")  # type: ignore[union-attr]
        except UnicodeDecodeError:
            raise DecodeError(f"{f.where}: invalid UTF-8 in a map entry") from None
        if number == 1:
            key = text
        else:
            value = text
    return key, value


def _map_from_json(value: Any, f: Field) -> dict[str, str]:
    if not isinstance(value, dict):
        raise f._bad(value, "an object")
    for key, item in value.items():
        if not isinstance(item, str):
            raise DecodeError(f"{f.where}[{key!r}]: expected a string, got {_type_name(item)}")
    return dict(value)
