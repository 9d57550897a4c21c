"""bench.upstream's WebSocket echo (it runs in a sandbox on stdlib Python; tested here)."""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong, Request, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.handshake import H11Handshake

from bench.upstream import header_value, ws_accept, ws_echo, ws_header


def test_accept_key_from_rfc_6455() -> None:
    assert ws_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_header_value() -> None:
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key:  abc== \r\nUpgrade: websocket"
    assert header_value(head, b"sec-websocket-key") == b"abc=="
    assert header_value(head, b"origin") is None


def test_header_lengths() -> None:
    assert ws_header(0x82, 5) == b"\x82\x05"
    assert ws_header(0x82, 300) == b"\x82\x7e\x01\x2c"
    assert ws_header(0x82, 70000)[:2] == b"\x82\x7f" and len(ws_header(0x82, 70000)) == 10


def _client() -> WSConnection:
    """A wsproto client past its handshake (answered by a wsproto server)."""
    client, server = WSConnection(ConnectionType.CLIENT), H11Handshake(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/ws")))
    request = next(e for e in server.events() if isinstance(e, Request))
    client.receive_data(server.send(AcceptConnection()))
    assert request.target == "/ws"
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    return client


def test_echoes_every_frame_a_client_sends_and_keeps_a_partial_one() -> None:
    client = _client()
    wire = client.send(Message(data=b"hello")) + client.send(Message(data="text" * 100)) + client.send(Ping(b"p"))
    wire += client.send(Message(data=b"x" * 70000))
    partial = client.send(Message(data=b"next"))
    out, used, close = ws_echo(wire + partial[:3])
    assert used == len(wire) and not close
    client.receive_data(out)
    events = list(client.events())
    assert isinstance(events[0], BytesMessage) and events[0].data == b"hello"
    assert isinstance(events[1], TextMessage) and events[1].data == "text" * 100
    assert isinstance(events[2], Pong) and events[2].payload == b"p"
    assert isinstance(events[3], BytesMessage) and events[3].data == b"x" * 70000


def test_close_is_echoed_and_ends_reading() -> None:
    client = _client()
    wire = client.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE)) + b"\x82\x80junk"
    out, used, close = ws_echo(wire)
    assert close and used == len(wire) - len(b"\x82\x80junk")
    assert out[:1] == b"\x88"
