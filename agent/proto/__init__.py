"""Our protobuf: the wire format, a small declarative message system, the messages.

    wire.py       varints, zigzag, fixed words, tags; `iter_fields` walks raw bytes
    schema.py     `Message` and `Field`: binary and proto3 JSON codecs, oneofs, maps
    timestamp.py  google.protobuf.Timestamp (RFC 3339 in JSON)
    messages.py   every sandboxagent message and enum

Standard library only: the agent runs on the sandbox's own python3.
"""

from __future__ import annotations

from agent.proto.messages import *  # noqa: F403 - the message classes are the API
from agent.proto.messages import __all__ as _message_names
from agent.proto.schema import DecodeError, Field, Message

__all__ = ["DecodeError", "Field", "Message", *_message_names]
