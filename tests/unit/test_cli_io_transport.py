"""Both ways into a sandbox on httpx.MockTransport, and the drivers (exec, transfers, terminal) on fakes."""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import re
import select
import socket
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import wsproto
import wsproto.events as ws

from cli.sandboxio import execute, terminal, transfer
from cli.sandboxio.agent import AgentBackend, download_target
from cli.sandboxio.api import ApiBackend, WsPty
from cli.sandboxio.errors import ConnectionLost, RemoteError, Unreachable
from cli.sandboxio.messages import CommandSpec, Ended, Output, ProcessEvent, PtySize, Started
from cli.sandboxio.route import Route, connect, route_from_env
from cli.sandboxio.transport import Download, SandboxRef, Upload
from tests.unit.test_cli_io_fakes import KEY, TOKEN, FakeAgent, FakeApi, b64, frames

REF = SandboxRef(
    sandbox_id="sbx-unit",
    domain="sbx-unit.sbx.localhost:8443",
    token=TOKEN,
    user="user",
    api_url="https://api.sbx.localhost:8443/v1",
    api_key=KEY,
    verify=True,
)
SPEC = CommandSpec(cmd="/bin/bash", args=("-l", "-c", "echo hi"))


def agent_backend(agent: FakeAgent) -> AgentBackend:
    return AgentBackend(REF, transport=agent.transport())


def api_backend(api: FakeApi) -> ApiBackend:
    return ApiBackend(REF, transport=api.transport())


# -- the direct path ------------------------------------------------------------------------------


def test_start_streams_events_and_sends_the_protocol() -> None:
    agent = FakeAgent(
        events=[
            {"event": {"start": {"pid": 9}}},
            {"event": {"data": {"stdout": b64(b"out")}}},
            {"event": {"keepalive": {}}},
            {"event": {"data": {"stderr": b64(b"err")}}},
            {"event": {"end": {"exitCode": 2, "exited": True, "status": "exit status 2"}}},
        ]
    )
    with agent_backend(agent).start(SPEC, tag="t1") as events:
        got = list(events)
    assert [type(e).__name__ for e in got] == ["Started", "Output", "KeepAlive", "Output", "Ended"]
    procedure, message = agent.calls[0]
    assert procedure == "sandboxagent.Process/Start"
    assert message == {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {}}, "tag": "t1"}
    headers = agent.requests[0].headers
    assert headers["x-access-token"] == TOKEN
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:").decode()
    assert headers["keepalive-ping-interval"] == "15"
    assert str(agent.requests[0].url) == "https://sbx-unit.sbx.localhost:8443/sandboxagent.Process/Start"


def test_an_error_at_the_end_of_the_stream_is_raised() -> None:
    agent = FakeAgent(end_error={"code": "invalid_argument", "message": "cwd '/nope': no such file or directory"})
    with pytest.raises(RemoteError, match="cwd '/nope'") as caught, agent_backend(agent).start(SPEC, tag="t") as ev:
        list(ev)
    assert caught.value.code == "invalid_argument"


def test_a_stream_cut_short_is_connection_lost() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=frames({"event": {"start": {"pid": 1}}})[:-4])

    backend = AgentBackend(REF, transport=httpx.MockTransport(handler))
    with pytest.raises(ConnectionLost, match="ended before its last message"), backend.start(SPEC, tag="t") as ev:
        list(ev)


def test_a_refusal_before_the_stream_raises_on_entry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"success": False, "error": "conflict", "message": "sandbox x is paused"})

    backend = AgentBackend(REF, transport=httpx.MockTransport(handler))
    with pytest.raises(RemoteError, match="sandbox x is paused"), backend.start(SPEC, tag="t"):
        pass


@pytest.mark.parametrize(
    ("raised", "expected", "message"),
    [
        (httpx.ConnectError("[Errno -2] Name or service not known"), Unreachable, "cannot reach the sandbox at"),
        (httpx.ConnectTimeout("timed out"), Unreachable, "cannot reach"),
        (httpx.ReadTimeout("timed out"), ConnectionLost, "stopped answering"),
        (httpx.RemoteProtocolError("peer closed connection"), ConnectionLost, "broke: peer closed"),
    ],
)
def test_transport_errors_are_mapped_in_one_place(raised: Exception, expected: type, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    backend = AgentBackend(REF, transport=httpx.MockTransport(handler))
    with pytest.raises(expected, match=message):
        backend.list_dir("/", 1)


def test_kill_ignores_a_process_already_gone() -> None:
    agent = FakeAgent()
    backend = agent_backend(agent)
    backend.kill(pid=404)
    backend.kill(tag="job")
    assert agent.calls == [
        ("sandboxagent.Process/SendSignal", {"process": {"pid": 404}, "signal": "SIGNAL_SIGKILL"}),
        ("sandboxagent.Process/SendSignal", {"process": {"tag": "job"}, "signal": "SIGNAL_SIGKILL"}),
    ]


def test_list_dir() -> None:
    agent = FakeAgent(entries=[{"name": "a", "type": "FILE_TYPE_FILE", "path": "/a", "size": "3"}])
    backend = agent_backend(agent)
    assert [(e.name, e.size) for e in backend.list_dir("/", 2)] == [("a", 3)]
    assert agent.calls[-1] == ("sandboxagent.Filesystem/ListDir", {"path": "/", "depth": 2})
    with pytest.raises(RemoteError) as caught:
        backend.list_dir("/missing", 1)
    assert caught.value.code == "not_found"


def test_download_targets_mean_exactly_one_file() -> None:
    assert download_target("/tmp/a b") == "/download//tmp/a%20b"
    assert download_target("rel/x") == "/download/~/rel/x"
    assert download_target("~/x") == "/download/~/x"


def test_upload_and_download_round_trip() -> None:
    agent = FakeAgent()
    backend = agent_backend(agent)
    data = os.urandom(100_000)
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    backend.upload("/tmp/f.bin", Upload("f.bin", len(data), iter(chunks)))
    assert agent.files["/tmp/f.bin"] == data
    upload_request = next(r for r in agent.requests if r.url.path == "/upload")
    assert int(upload_request.headers["content-length"]) == len(upload_request.content)
    agent.files["/tmp/g.bin"] = data
    with backend.download("/tmp/g.bin") as body:
        assert body.length == len(data)
        assert b"".join(body.chunks) == data
    with pytest.raises(RemoteError, match="no such file or directory"), backend.download("/tmp/none"):
        pass


def test_an_upload_of_unknown_length_is_chunked() -> None:
    agent = FakeAgent()
    agent_backend(agent).upload("/tmp/p", Upload("stdin", None, iter([b"a", b"b"])))
    assert agent.files["/tmp/p"] == b"ab"
    request = next(r for r in agent.requests if r.url.path == "/upload")
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"


# -- the API path --------------------------------------------------------------------------------------


def test_api_exec_stream() -> None:
    api = FakeApi(
        exec_events=[
            ("start", {"pid": 5}),
            ("stdout", {"data": "hé\n"}),
            ("stderr", {"data": "e"}),
            ("end", {"exit_code": 4, "status": "exit status 4", "error": "exit status 4"}),
        ]
    )
    spec = CommandSpec(cmd="ls", args=("-l",), envs={"A": "1"}, cwd="/tmp")
    with api_backend(api).start(spec, tag="t9") as events:
        got = list(events)
    assert got == [
        Started(5),
        Output("stdout", "hé\n".encode()),
        Output("stderr", b"e"),
        Ended(4, True, "exit status 4", "exit status 4"),
    ]
    body = json.loads(api.requests[0].content)
    assert body == {"cmd": "ls", "args": ["-l"], "envs": {"A": "1"}, "user": "user", "timeout": 3600,
                    "tag": "t9", "cwd": "/tmp"}  # fmt: skip
    assert api.requests[0].headers["x-api-key"] == KEY


def test_api_exec_error_event_and_cut_stream() -> None:
    api = FakeApi(exec_events=[("start", {"pid": 5}), ("error", {"code": "unavailable", "message": "agent gone"})])
    with pytest.raises(RemoteError, match="agent gone"), api_backend(api).start(SPEC, tag="t") as events:
        list(events)
    api.exec_events = [("start", {"pid": 5})]
    with pytest.raises(ConnectionLost), api_backend(api).start(SPEC, tag="t") as events:
        list(events)


def test_api_files_and_kill() -> None:
    api = FakeApi()
    backend = api_backend(api)
    backend.upload("/tmp/x", Upload("x", 3, iter([b"abc"])))
    assert api.files["/tmp/x"] == b"abc"
    put = api.requests[-1]
    assert put.method == "PUT" and put.url.params["user"] == "user" and put.headers["content-length"] == "3"
    with backend.download("/tmp/x") as body:
        assert b"".join(body.chunks) == b"abc"
    with pytest.raises(RemoteError) as caught, backend.download("/tmp/none"):
        pass
    assert caught.value.code == "not_found"
    backend.kill(pid=5)
    assert api.requests[-1].method == "DELETE" and dict(api.requests[-1].url.params) == {
        "signal": "SIGKILL",
        "pid": "5",
    }


def test_api_list_dir_runs_the_lister_inside() -> None:
    def on_exec(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        assert body["cmd"] == "python3" and body["args"][0] == "-c" and body["args"][2:] == ["/etc", "2"]
        listing = json.dumps({"entries": [{"name": "passwd", "type": 1, "path": "/etc/passwd", "size": "9"}]})
        half = len(listing) // 2
        return [
            ("start", {"pid": 3}),
            ("stdout", {"data": listing[:half]}),
            ("stdout", {"data": listing[half:] + "\n"}),
            ("end", {"exit_code": 0, "status": "exit status 0"}),
        ]

    backend = api_backend(FakeApi(on_exec=on_exec))
    assert [(e.path, e.type, e.size) for e in backend.list_dir("/etc", 2)] == [("/etc/passwd", "file", 9)]

    def failing(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        error = {"error": {"code": "not_found", "message": "open /x: no such file or directory"}}
        return [("stdout", {"data": json.dumps(error)}), ("end", {"exit_code": 1, "status": "exit status 1"})]

    with pytest.raises(RemoteError) as caught:
        api_backend(FakeApi(on_exec=failing)).list_dir("/x", 1)
    assert caught.value.code == "not_found"

    def silent(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return [("end", {"exit_code": 127, "status": "exit status 127"})]

    with pytest.raises(RemoteError, match="printed nothing"):
        api_backend(FakeApi(on_exec=silent)).list_dir("/x", 1)


# -- choosing the way in ------------------------------------------------------------------------------


def test_route_from_env() -> None:
    assert route_from_env({}) is Route.AUTO
    assert route_from_env({"SCALEBOX_SANDBOX_ROUTE": " API "}) is Route.API
    assert route_from_env({"SCALEBOX_SANDBOX_ROUTE": "direct"}) is Route.DIRECT
    with pytest.raises(ValueError, match="one of auto, direct, api"):
        route_from_env({"SCALEBOX_SANDBOX_ROUTE": "both"})


def test_auto_goes_direct_when_the_domain_answers_anything() -> None:
    agent = FakeAgent()
    backend = connect(REF, Route.AUTO, transport=agent.transport(), api_transport=FakeApi().transport())
    assert backend.name == "direct"
    assert [r.url.path for r in agent.requests] == ["/health"]


def test_auto_falls_back_to_the_api_only_when_the_domain_cannot_be_reached() -> None:
    agent = FakeAgent(unreachable=True)
    backend = connect(REF, Route.AUTO, transport=agent.transport(), api_transport=FakeApi().transport())
    assert backend.name == "api"
    assert connect(REF, Route.DIRECT, transport=agent.transport()).name == "direct"
    assert connect(REF, Route.API, transport=agent.transport()).name == "api"


# -- exec ------------------------------------------------------------------------------------------------


class FakeBackend:
    name = "fake"

    def __init__(self, events: list[ProcessEvent | BaseException]) -> None:
        self.events = events
        self.kills: list[dict[str, Any]] = []
        self.started: list[tuple[CommandSpec, str]] = []

    @contextmanager
    def start(self, spec: CommandSpec, *, tag: str) -> Iterator[Iterator[ProcessEvent]]:
        self.started.append((spec, tag))

        def events() -> Iterator[ProcessEvent]:
            for event in self.events:
                if isinstance(event, BaseException):
                    raise event
                yield event

        yield events()

    def kill(self, *, pid: int | None = None, tag: str | None = None) -> None:
        self.kills.append({"pid": pid, "tag": tag})


def run(events: list[ProcessEvent | BaseException]) -> tuple[int, bytes, bytes, FakeBackend]:
    backend = FakeBackend(events)
    out, err = io.BytesIO(), io.BytesIO()
    code = execute.run(backend, SPEC, stdout=out, stderr=err)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue(), backend


def test_exec_routes_output_and_returns_the_exit_code() -> None:
    code, out, err, backend = run(
        [Started(3), Output("stdout", b"a"), Output("stderr", b"b"), Output("pty", b"c"), Ended(5, True, "x")]
    )
    assert (code, out, err) == (5, b"ac", b"b")
    assert backend.kills == []
    assert backend.started[0][1].startswith("scalebox-cli-")


def test_exec_ctrl_c_kills_the_process() -> None:
    code, out, _, backend = run([Started(3), Output("stdout", b"a"), KeyboardInterrupt()])
    assert (code, out) == (130, b"a")
    assert backend.kills == [{"pid": 3, "tag": None}]


def test_exec_ctrl_c_before_the_pid_kills_by_tag() -> None:
    code, _, _, backend = run([KeyboardInterrupt()])
    assert code == 130
    assert backend.kills == [{"pid": None, "tag": backend.started[0][1]}]


def test_exec_a_lost_stream_is_an_error_and_kills() -> None:
    with pytest.raises(ConnectionLost):
        run([Started(3), Output("stdout", b"a")])


def test_exec_broken_pipe() -> None:
    class Closed(io.BytesIO):
        def write(self, data: Any) -> int:
            raise BrokenPipeError

    backend = FakeBackend([Started(3), Output("stdout", b"a"), Ended(0, True, "")])
    assert execute.run(backend, SPEC, stdout=Closed(), stderr=io.BytesIO()) == 141  # type: ignore[arg-type]
    assert backend.kills == [{"pid": 3, "tag": None}]


# -- transfers --------------------------------------------------------------------------------------------


class TransferBackend:
    name = "fake"

    def __init__(self, chunks: list[bytes | BaseException], length: int | None) -> None:
        self.chunks, self.length = chunks, length
        self.uploaded: list[tuple[str, str, int | None, bytes]] = []

    @contextmanager
    def download(self, path: str) -> Iterator[Download]:
        def chunks() -> Iterator[bytes]:
            for chunk in self.chunks:
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk

        yield Download(self.length, chunks())

    def upload(self, path: str, upload: Upload) -> None:
        self.uploaded.append((path, upload.filename, upload.length, b"".join(upload.chunks)))


class CountingMeter(transfer.NoMeter):
    def __init__(self) -> None:
        self.total: int | None = -1
        self.done = 0

    def start(self, total: int | None) -> None:
        self.total = total

    def advance(self, count: int) -> None:
        self.done += count


def test_download_to_a_directory_with_progress(tmp_path: Path) -> None:
    meter = CountingMeter()
    backend = TransferBackend([b"ab", b"cd"], 4)
    assert transfer.download(backend, "/r/file.txt", str(tmp_path), meter=meter) == 4  # type: ignore[arg-type]
    assert (tmp_path / "file.txt").read_bytes() == b"abcd"
    assert (meter.total, meter.done) == (4, 4)
    assert os.stat(tmp_path / "file.txt").st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("chunks", "length", "error"),
    [([b"ab", ConnectionLost("broke")], None, "broke"), ([b"ab"], 4, "cut short: 2 of 4")],
)
def test_a_failed_download_leaves_nothing_behind(
    tmp_path: Path, chunks: list[bytes | BaseException], length: int | None, error: str
) -> None:
    (tmp_path / "keep").write_bytes(b"old")
    backend = TransferBackend(chunks, length)
    with pytest.raises(ConnectionLost, match=error):
        transfer.download(backend, "/r/x", str(tmp_path / "keep"), meter=transfer.NoMeter())  # type: ignore[arg-type]
    assert (tmp_path / "keep").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_download_to_stdout() -> None:
    out = io.BytesIO()
    backend = TransferBackend([b"ab", b"cd"], None)
    transfer.download(backend, "/r/x", "-", meter=transfer.NoMeter(), stdout=out)  # type: ignore[arg-type]
    assert out.getvalue() == b"abcd"


def test_upload_reads_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(transfer.CHUNK * 2 + 5)
    (tmp_path / "big.bin").write_bytes(data)
    backend = TransferBackend([], None)
    meter = CountingMeter()
    sent = transfer.upload(backend, str(tmp_path / "big.bin"), "/tmp/big.bin", meter=meter)  # type: ignore[arg-type]
    assert sent == len(data) and (meter.total, meter.done) == (len(data), len(data))
    assert backend.uploaded == [("/tmp/big.bin", "big.bin", len(data), data)]


# -- terminal -------------------------------------------------------------------------------------------------


class FakeChannel:
    """A PTY session scripted by its input: input is echoed, and "exit N" in it ends the session with N."""

    pid = 7

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.pending: list[ProcessEvent] = [Output("pty", b"$ ")]
        self.inputs: list[bytes] = []
        self.sizes: list[PtySize] = []
        self.killed = False
        os.write(self.write_fd, b".")

    def fileno(self) -> int:
        return self.read_fd

    def events(self) -> list[ProcessEvent]:
        os.read(self.read_fd, 1024)
        out, self.pending = self.pending, []
        return out

    def send_input(self, data: bytes) -> None:
        self.inputs.append(data)
        self.pending.append(Output("pty", data))
        if (found := re.search(rb"exit (\d+)", data)) is not None:
            self.pending.append(Ended(int(found.group(1)), True, "exit status"))
        os.write(self.write_fd, b".")

    def resize(self, size: PtySize) -> None:
        self.sizes.append(size)

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def test_pump_moves_bytes_resizes_and_ends_with_the_exit_code() -> None:
    channel = FakeChannel()
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    winch_r, winch_w = os.pipe()
    os.write(winch_w, b"w")
    os.write(stdin_w, b"ls\r")
    # The resize (handled after the first output) types the exit: output, resize and input all go through.
    sizes = iter([PtySize(cols=120, rows=40)])

    def size() -> PtySize:
        os.write(stdin_w, b"exit 3")
        return next(sizes)

    code = terminal.pump(channel, stdin_fd=stdin_r, stdout_fd=stdout_w, winch_fd=winch_r, size=size)
    assert code == 3
    assert channel.sizes == [PtySize(cols=120, rows=40)]
    assert b"".join(channel.inputs) == b"ls\rexit 3"
    os.close(stdout_w)
    assert os.read(stdout_r, 1024) == b"$ ls\rexit 3"
    for fd in (stdin_r, stdin_w, stdout_r, winch_r, winch_w):
        os.close(fd)
    channel.close()


def test_pump_sends_ctrl_d_when_piped_input_runs_out() -> None:
    channel = FakeChannel()
    sent: list[bytes] = []

    def send_input(data: bytes) -> None:
        sent.append(data)
        FakeChannel.send_input(channel, b"exit 0" if data == terminal.EOT else data)  # the shell leaves at EOF

    channel.send_input = send_input  # type: ignore[method-assign]
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, b"echo piped\n")
    os.close(stdin_w)
    winch_r, winch_w = os.pipe()
    with open(os.devnull, "wb") as devnull:
        code = terminal.pump(
            channel, stdin_fd=stdin_r, stdout_fd=devnull.fileno(), winch_fd=winch_r, size=lambda: PtySize(1, 1)
        )
    assert (code, sent) == (0, [b"echo piped\n", terminal.EOT])
    for fd in (stdin_r, winch_r, winch_w):
        os.close(fd)
    channel.close()


def test_raw_mode_is_restored_even_on_errors() -> None:
    leader, follower = pty.openpty()
    try:
        before = termios.tcgetattr(follower)
        with pytest.raises(RuntimeError), terminal.raw_mode(follower):
            assert termios.tcgetattr(follower)[3] & termios.ECHO == 0  # lflag: no echo while raw
            raise RuntimeError("boom")
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)


def test_raw_mode_leaves_a_pipe_alone() -> None:
    read_fd, write_fd = os.pipe()
    with terminal.raw_mode(read_fd):
        pass
    os.close(read_fd)
    os.close(write_fd)


def test_local_size() -> None:
    leader, follower = pty.openpty()
    try:
        import fcntl
        import struct

        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        assert terminal.local_size(follower) == PtySize(cols=101, rows=33)
        read_fd, write_fd = os.pipe()
        assert terminal.local_size(read_fd) == terminal.DEFAULT_SIZE
        os.close(read_fd)
        os.close(write_fd)
    finally:
        os.close(leader)
        os.close(follower)


class PtyBackend:
    name = "fake"

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel
        self.opened: list[tuple[CommandSpec, PtySize]] = []

    def open_pty(self, spec: CommandSpec, size: PtySize) -> FakeChannel:
        self.opened.append((spec, size))
        return self.channel


def test_session_kills_the_shell_when_it_fails() -> None:
    channel = FakeChannel()

    def broken(data: bytes) -> None:
        raise ConnectionLost("gone")

    channel.send_input = broken  # type: ignore[method-assign]
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, b"x")
    backend = PtyBackend(channel)
    with open(os.devnull, "wb") as devnull, pytest.raises(ConnectionLost):
        terminal.session(backend, terminal.shell_spec("/tmp"), stdin_fd=stdin_r, stdout_fd=devnull.fileno())  # type: ignore[arg-type]
    assert channel.killed
    spec, size = backend.opened[0]
    assert (spec.cmd, spec.args, spec.cwd, size) == ("/bin/bash", ("-i", "-l"), "/tmp", terminal.DEFAULT_SIZE)
    os.close(stdin_r)
    os.close(stdin_w)


# -- the API's terminal WebSocket, against a tiny wsproto server on loopback ---------------------------------


class WsServer:
    """One connection: accept (or refuse), start, some output and a ping; "exit N" typed ends the session."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refuse = refuse
        self.request: ws.Request | None = None
        self.received: list[bytes | str] = []
        self.pongs = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        sock, _ = self.listener.accept()
        conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        with sock:
            while True:
                data = sock.recv(65536)
                conn.receive_data(data or None)
                for event in conn.events():
                    if isinstance(event, ws.Request):
                        self.request = event
                        if self.refuse:
                            sock.sendall(conn.send(ws.RejectConnection(status_code=403)))
                            return
                        sock.sendall(conn.send(ws.AcceptConnection()))
                        sock.sendall(conn.send(ws.Message(data=json.dumps({"type": "start", "pid": 5}))))
                        sock.sendall(conn.send(ws.Message(data=b"hello ")))
                        sock.sendall(conn.send(ws.Ping(payload=b"p")))
                    elif isinstance(event, ws.Pong):
                        self.pongs += 1
                    elif isinstance(event, ws.Message):
                        self.received.append(event.data)
                        if isinstance(event.data, bytes) and event.data.startswith(b"exit "):
                            code = int(event.data.split()[1])
                            exit_message = {"type": "exit", "exit_code": code, "status": f"exit status {code}"}
                            sock.sendall(conn.send(ws.Message(data=json.dumps(exit_message))))
                            sock.sendall(conn.send(ws.CloseConnection(code=1000)))
                    elif isinstance(event, ws.CloseConnection):
                        return
                if not data:
                    return


def ws_ref(port: int) -> SandboxRef:
    return SandboxRef(**{**REF.__dict__, "api_url": f"http://127.0.0.1:{port}/v1"})


def test_terminal_over_the_api_websocket() -> None:
    server = WsServer()
    channel = WsPty(ws_ref(server.port), terminal.shell_spec("/tmp"), PtySize(cols=90, rows=20))
    try:
        assert channel.pid == 5
        channel.resize(PtySize(cols=120, rows=40))
        channel.send_input(b"exit 3")
        got: list[ProcessEvent] = []
        while not any(isinstance(e, Ended) for e in got):
            select.select([channel.fileno()], [], [], 5)
            got.extend(channel.events())
    finally:
        channel.close()
    server.thread.join(5)
    assert got[0] == Output("pty", b"hello ") and got[-1] == Ended(3, True, "exit status 3")
    assert server.request is not None
    assert server.request.target == "/v1/sandboxes/sbx-unit/terminal?cols=90&rows=20&user=user&cwd=%2Ftmp"
    assert (b"x-api-key", KEY.encode()) in [(k.lower(), v) for k, v in server.request.extra_headers]
    assert server.received == ['{"type": "resize", "cols": 120, "rows": 40}', b"exit 3"]
    assert server.pongs == 1


def test_a_refused_terminal_is_one_error() -> None:
    server = WsServer(refuse=True)
    with pytest.raises(RemoteError, match=r"refused the terminal \(HTTP 403\)"):
        WsPty(ws_ref(server.port), terminal.shell_spec(), PtySize(cols=80, rows=24))
    server.thread.join(5)


def test_an_api_that_cannot_be_reached_is_unreachable() -> None:
    port = socket.create_server(("127.0.0.1", 0))
    closed = port.getsockname()[1]
    port.close()
    with pytest.raises(Unreachable):
        WsPty(ws_ref(closed), terminal.shell_spec(), PtySize(cols=80, rows=24))
