"""The Connect protocol over the agent's HTTP server.

errors.py     ConnectError, the codes and their HTTP statuses
envelope.py   stream envelopes, pure: encode, and an incremental reader
codec.py      protobuf and JSON codecs chosen by Content-Type
context.py    RpcContext (user, headers, deadline, closed), keepalive_interval
protocol.py   serving one call: unary, server-streaming, client-streaming
registry.py   Registry: procedures by path, mounted on the routes
"""

from agent.connect.context import RpcContext, keepalive_interval
from agent.connect.errors import ConnectError
from agent.connect.registry import Registry

__all__ = ["ConnectError", "Registry", "RpcContext", "keepalive_interval"]
