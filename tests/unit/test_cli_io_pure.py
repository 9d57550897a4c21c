"""The pure parts of the in-sandbox commands: envelopes, messages, argv, SSE, multipart, listing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest

from cli.sandboxio import envelope, listing, remote_ls
from cli.sandboxio.command import command_from_argv, exit_status, parse_envs
from cli.sandboxio.errors import ProtocolError, RemoteError, SandboxIoError, describe
from cli.sandboxio.messages import (
    CommandSpec,
    Ended,
    Entry,
    KeepAlive,
    Output,
    PtySize,
    Started,
    decode_entries,
    decode_event,
    end_of_stream_error,
    error_from_body,
    kill_request,
    send_input_request,
    start_request,
    update_request,
)
from cli.sandboxio.multipart import MultipartFile
from cli.sandboxio.sse import SseEvent, SseParser, decode_exec_event
from cli.sandboxio.transfer import local_download_path, remote_upload_path

# -- envelopes ------------------------------------------------------------------------------


def test_envelope_round_trip_byte_by_byte() -> None:
    data = envelope.encode(b'{"a":1}') + envelope.encode(b"{}", envelope.FLAG_END_STREAM)
    decoder = envelope.EnvelopeDecoder()
    frames = []
    for byte in data:
        decoder.feed(bytes([byte]))
        while (frame := decoder.next()) is not None:
            frames.append(frame)
    assert [(f.payload, f.end_stream) for f in frames] == [(b'{"a":1}', False), (b"{}", True)]
    assert decoder.pending == 0


def test_envelope_needs_more_then_several_at_once() -> None:
    decoder = envelope.EnvelopeDecoder()
    decoder.feed(b"\x00\x00\x00")
    assert decoder.next() is None
    decoder.feed(b"\x00\x02hi" + envelope.encode(b"yo"))
    assert decoder.next() == envelope.Frame(0, b"hi")
    assert decoder.next() == envelope.Frame(0, b"yo")
    assert decoder.next() is None


def test_envelope_header_is_big_endian() -> None:
    assert envelope.encode(b"x" * 258, 2)[:5] == b"\x02\x00\x00\x01\x02"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00\x00\x00\x00", "compressed"),
        (b"\x04\x00\x00\x00\x00", "unknown flags 0x04"),
        (b"\x00\x00\x00\x04\x01", "over the limit"),
    ],
)
def test_envelope_refusals(data: bytes, message: str) -> None:
    decoder = envelope.EnvelopeDecoder(max_message=1024)
    decoder.feed(data)
    with pytest.raises(ProtocolError, match=message):
        decoder.next()


# -- messages -------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_start_request_json_shape() -> None:
    spec = CommandSpec(cmd="/bin/bash", args=("-l", "-c", "ls"), envs={"A": "1"}, cwd="/tmp")
    assert start_request(spec, pty=PtySize(cols=100, rows=30), tag="t") == {
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "ls"], "envs": {"A": "1"}, "cwd": "/tmp"},
        "pty": {"size": {"cols": 100, "rows": 30}},
        "tag": "t",
    }
    assert start_request(CommandSpec(cmd="ls")) == {"process": {"cmd": "ls", "args": [], "envs": {}}}


def test_small_requests() -> None:
    assert send_input_request(7, b"ls\r", pty=True) == {"process": {"pid": 7}, "input": {"pty": b64(b"ls\r")}}
    assert send_input_request(7, b"x", pty=False)["input"] == {"stdin": "eA=="}
    assert update_request(7, PtySize(cols=120, rows=40)) == {
        "process": {"pid": 7},
        "pty": {"size": {"cols": 120, "rows": 40}},
    }
    assert kill_request(pid=7) == {"process": {"pid": 7}, "signal": "SIGNAL_SIGKILL"}
    assert kill_request(tag="job") == {"process": {"tag": "job"}, "signal": "SIGNAL_SIGKILL"}
    with pytest.raises(ValueError):
        kill_request()


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ({"event": {"start": {"pid": 42}}}, Started(42)),
        ({"event": {"start": {}}}, Started(0)),
        ({"event": {"data": {"stdout": b64(b"hi\n")}}}, Output("stdout", b"hi\n")),
        ({"event": {"data": {"stderr": b64(b"\xff\x00")}}}, Output("stderr", b"\xff\x00")),
        ({"event": {"data": {"pty": "aGk"}}}, Output("pty", b"hi")),  # padding may be left out
        ({"event": {"data": {"pty": "-_8"}}}, Output("pty", b"\xfb\xff")),  # the URL-safe alphabet too
        ({"event": {"data": {}}}, Output("stdout", b"")),
        (
            {"event": {"end": {"exitCode": 3, "exited": True, "status": "exit status 3", "error": "exit status 3"}}},
            Ended(3, True, "exit status 3", "exit status 3"),
        ),
        ({"event": {"end": {"exited": True, "status": "exit status 0"}}}, Ended(0, True, "exit status 0")),
        ({"event": {"end": {"exitCode": "-1", "status": "signal: killed"}}}, Ended(-1, False, "signal: killed")),
        ({"event": {"keepalive": {}}}, KeepAlive()),
    ],
)
def test_decode_event(message: object, event: object) -> None:
    assert decode_event(message) == event


@pytest.mark.parametrize(
    "message",
    [
        [],
        {"event": "start"},
        {"event": {}},
        {"event": {"bogus": {}}},
        {"event": {"start": {"pid": "x"}}},
        {"event": {"start": {"pid": True}}},
        {"event": {"data": {"stdout": 5}}},
        {"event": {"data": {"stdout": "!!!"}}},
    ],
)
def test_decode_event_refuses_what_does_not_fit(message: object) -> None:
    with pytest.raises(ProtocolError):
        decode_event(message)


def test_end_of_stream() -> None:
    assert end_of_stream_error(b"{}") is None
    assert end_of_stream_error(b"") is None
    error = end_of_stream_error(json.dumps({"error": {"code": "not_found", "message": "no"}}).encode())
    assert isinstance(error, RemoteError) and (error.code, error.message) == ("not_found", "no")
    with pytest.raises(ProtocolError):
        end_of_stream_error(b"not json")


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (404, b'{"code":"not_found","message":"path not found"}', "not_found", "path not found"),  # the agent
        (409, b'{"success":false,"error":"conflict","message":"sandbox x is paused","code":"conflict"}',
         "conflict", "sandbox x is paused"),  # the gateway
        (404, b'{"success":false,"error":"not_found","message":"m","code":"agent_not_found"}', "not_found", "m"),
        (403, b'{"error":"forbidden","message":"m"}', "forbidden", "m"),
        (502, b"<html>bad gateway</html>", "unavailable", "the sandbox answered HTTP 502"),
        (418, b"", "unknown", "the sandbox answered HTTP 418"),
    ],
)  # fmt: skip
def test_error_from_body(status: int, body: bytes, code: str, message: str) -> None:
    error = error_from_body(status, body)
    assert (error.code, error.message) == (code, message)


def test_decode_entries() -> None:
    message = {
        "entries": [
            {"name": "a", "type": "FILE_TYPE_FILE", "path": "/a", "size": "12", "mode": 420,
             "permissions": "-rw-r--r--", "owner": "user", "group": "user", "modifiedTime": "2024-05-01T12:00:00Z"},
            {"name": "d", "type": "FILE_TYPE_DIRECTORY", "path": "/d"},
            {"name": "l", "type": 2, "path": "/l", "permissions": "lrwxrwxrwx", "symlinkTarget": "/usr/lib"},
        ]
    }  # fmt: skip
    a, d, link = decode_entries(message)
    assert a == Entry("a", "file", "/a", 12, 420, "-rw-r--r--", "user", "user", "2024-05-01T12:00:00Z")
    assert (d.type, d.size, d.modified_time, d.symlink_target) == ("directory", 0, "", None)
    assert (link.type, link.symlink_target) == ("directory", "/usr/lib")
    assert a.to_json()["modified_time"] == "2024-05-01T12:00:00Z"
    assert d.to_json()["modified_time"] is None
    assert decode_entries({}) == []
    with pytest.raises(ProtocolError):
        decode_entries({"entries": {}})


# -- argv, environment, exit codes ---------------------------------------------------------------


def test_one_word_is_a_shell_line() -> None:
    spec = command_from_argv(["ls -la | wc -l"], envs={"A": "1"}, cwd="/tmp")
    assert spec == CommandSpec(cmd="/bin/bash", args=("-l", "-c", "ls -la | wc -l"), envs={"A": "1"}, cwd="/tmp")


def test_several_words_are_a_program_and_its_arguments() -> None:
    assert command_from_argv(["ls", "-la", "a b"]) == CommandSpec(cmd="ls", args=("-la", "a b"))
    with pytest.raises(ValueError):
        command_from_argv([])


def test_parse_envs() -> None:
    assert parse_envs(["A=1", "B=", "C=x=y", "A=2"]) == {"A": "2", "B": "", "C": "x=y"}
    for bad in ("A", "=1", "1A=x", "A-B=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_envs([bad])


@pytest.mark.parametrize(
    ("end", "code"),
    [
        (Ended(0, True, "exit status 0"), 0),
        (Ended(3, True, "exit status 3"), 3),
        (Ended(-1, False, "signal: killed"), 137),
        (Ended(-1, False, "signal: terminated"), 143),
        (Ended(-1, False, "signal: interrupt"), 130),
        (Ended(-1, False, "signal: signal 99"), 227),
        (Ended(-1, False, "signal: who knows"), 1),
    ],
)
def test_exit_status(end: Ended, code: int) -> None:
    assert exit_status(end) == code


# -- SSE (the API path) -----------------------------------------------------------------------------


def test_sse_parser_splits_lines_anywhere() -> None:
    stream = (
        b'event: start\ndata: {"pid":7}\n\n: comment\r\nevent: stdout\r\ndata: {"data":"a"}\r\n\r\ndata: x\rdata: y\r\r'
    )
    events = []
    parser = SseParser()
    for byte in stream:
        events.extend(parser.feed(bytes([byte])))
    assert events == [
        SseEvent("start", '{"pid":7}'),
        SseEvent("stdout", '{"data":"a"}'),
    ]
    # A CR at the very end may be half of a CRLF: the event completes with what comes next.
    assert parser.feed(b"\n") == [SseEvent("message", "x\ny")]


def test_decode_exec_event() -> None:
    assert decode_exec_event(SseEvent("start", '{"pid":7}')) == Started(7)
    assert decode_exec_event(SseEvent("stderr", '{"data":"é"}')) == Output("stderr", "é".encode())
    end = decode_exec_event(SseEvent("end", '{"exit_code":3,"status":"exit status 3","error":"exit status 3"}'))
    assert end == Ended(3, True, "exit status 3", "exit status 3")
    killed = decode_exec_event(SseEvent("end", '{"exit_code":-1,"status":"signal: killed","error":null}'))
    assert killed == Ended(-1, False, "signal: killed", None)
    assert decode_exec_event(SseEvent("message", "{}")) is None
    with pytest.raises(RemoteError, match="timed out") as caught:
        decode_exec_event(SseEvent("error", '{"message":"timed out after 3600 s"}'))
    assert caught.value.code == "unavailable"
    with pytest.raises(ProtocolError):
        decode_exec_event(SseEvent("start", "[]"))


# -- multipart --------------------------------------------------------------------------------------


def test_multipart_framing_and_length() -> None:
    form = MultipartFile(filename='we"ird\r\nname', boundary="b0undary")
    body = b"".join(form.stream([b"abc", b"def"]))
    assert body == (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="weirdname"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nabcdef\r\n--b0undary--\r\n"
    )
    assert form.length(6) == len(body)
    assert form.content_type == "multipart/form-data; boundary=b0undary"
    assert MultipartFile("x").boundary != MultipartFile("x").boundary


# -- paths and listing -----------------------------------------------------------------------------


def test_upload_and_download_paths(tmp_path: Path) -> None:
    assert remote_upload_path("/tmp/", "dir/big.bin") == "/tmp/big.bin"
    assert remote_upload_path("/tmp/x", "big.bin") == "/tmp/x"
    assert remote_upload_path("/tmp/", "-") == "/tmp/"
    assert local_download_path("/a/b.txt", str(tmp_path)) == tmp_path / "b.txt"
    assert local_download_path("/a/b.txt", str(tmp_path / "c")) == tmp_path / "c"


def entry(name: str, kind: str = "file", **fields: object) -> Entry:
    values: dict[str, object] = {
        "name": name, "type": kind, "path": f"/d/{name}", "size": 5, "mode": 420, "permissions": "-rw-r--r--",
        "owner": "user", "group": "user", "modified_time": "2024-05-01T12:00:00Z",
    }  # fmt: skip
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


def test_listing_rows() -> None:
    entries = [entry("b"), entry("a", "directory", permissions="drwxr-xr-x"), entry("l", symlink_target="/x")]
    assert listing.rows(entries, depth=1, tz=UTC) == [
        ("drwxr-xr-x", "user", "user", "5", "2024-05-01 12:00", "a/"),
        ("-rw-r--r--", "user", "user", "5", "2024-05-01 12:00", "b"),
        ("-rw-r--r--", "user", "user", "5", "2024-05-01 12:00", "l -> /x"),
    ]
    deep = listing.rows([entry("z", path="/d/sub/z"), entry("y", path="/d/a")], depth=2, tz=UTC)
    assert [row[-1] for row in deep] == ["/d/a", "/d/sub/z"]
    assert listing.format_time("", UTC) == ""
    assert listing.format_time("garbage", UTC) == "garbage"
    assert listing.format_time("2024-05-01T12:00:00.123456789Z", UTC) == "2024-05-01 12:00"


def test_describe() -> None:
    missing = RemoteError("not_found", "path not found: open /x: no such file or directory")
    assert describe(missing, path="/x") == "no such file or directory: /x"
    assert describe(missing) == missing.message
    assert describe(RemoteError("permission_denied", "open /root: permission denied"), path="/root") == (
        "open /root: permission denied"
    )
    assert describe(SandboxIoError("boom")) == "boom"


# -- the listing run inside a sandbox on the API path ---------------------------------------------


def run_lister(*args: str, home: Path) -> dict[str, object]:
    source = Path(remote_ls.__file__).read_text()
    result = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home)},
        timeout=30,
    )
    answer: dict[str, object] = json.loads(result.stdout)
    assert result.returncode == (1 if "error" in answer else 0)
    return answer


def test_remote_lister_answers_like_list_dir(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "f.txt").write_bytes(b"12345")
    (tmp_path / "sub" / "deeper" / "g").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    entries = decode_entries(run_lister("~", "2", home=tmp_path))
    by_path = {e.path.removeprefix(str(tmp_path)): e for e in entries}
    assert list(by_path) == ["/dangling", "/link", "/sub", "/sub/deeper", "/sub/f.txt"]  # depth first, by name
    assert by_path["/sub/f.txt"].type == "file" and by_path["/sub/f.txt"].size == 5
    assert by_path["/sub"].type == "directory" and by_path["/sub"].permissions.startswith("d")
    assert by_path["/link"].type == "directory" and by_path["/link"].symlink_target == str(tmp_path / "sub")
    assert by_path["/dangling"].type == "unspecified"
    assert by_path["/sub/f.txt"].modified_time.endswith("Z")
    relative = decode_entries(run_lister("sub", "1", home=tmp_path))
    assert [e.name for e in relative] == ["deeper", "f.txt"]


def test_remote_lister_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    assert run_lister(str(tmp_path / "nope"), "1", home=tmp_path)["error"] == {
        "code": "not_found",
        "message": f"open {tmp_path / 'nope'}: no such file or directory",
    }
    assert run_lister(str(tmp_path / "f"), "1", home=tmp_path)["error"] == {
        "code": "invalid_argument",
        "message": f"path is not a directory: {tmp_path / 'f'}",
    }
