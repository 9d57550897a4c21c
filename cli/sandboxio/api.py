"""Through the /v1 API: the way into a sandbox when its sandbox domain cannot be reached.

    start     POST   /v1/sandboxes/{id}/exec/stream   (Server-Sent Events, `sse.py`)
    kill      DELETE /v1/sandboxes/{id}/exec?pid=|tag=&signal=SIGKILL
    download  GET    /v1/sandboxes/{id}/files?path=&user=
    upload    PUT    /v1/sandboxes/{id}/files?path=&user=
    terminal  GET    /v1/sandboxes/{id}/terminal      (a WebSocket, with wsproto)

Compared with the direct path: output arrives as text (bytes that are not
UTF-8 are replaced), a command is killed after the API's longest timeout
(`MAX_EXEC_TIMEOUT`), uploads are capped by the API (256 MiB), and a directory
listing runs `remote_ls.py` inside the sandbox.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import wsproto
import wsproto.events as ws
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from cli.sandboxio.agent import (
    MAX_ERROR_BODY,
    TIMEOUT,
    explicit_path,
    map_transport_errors,
    read_error,
    read_timeout,
)
from cli.sandboxio.errors import ConnectionLost, ProtocolError, RemoteError, SandboxIoError, Unreachable
from cli.sandboxio.messages import (
    CommandSpec,
    Ended,
    Entry,
    Output,
    ProcessEvent,
    PtySize,
    Started,
    decode_entries,
    decode_json,
    error_from_body,
)
from cli.sandboxio.sse import SseParser, decode_exec_event
from cli.sandboxio.transport import Download, SandboxRef, Upload

MAX_EXEC_TIMEOUT = 3600  # the API's cap on a command's run time, in seconds
LISTER_SOURCE = (Path(__file__).parent / "remote_ls.py").read_text(encoding="utf-8")


class ApiBackend:
    name = "api"

    def __init__(self, ref: SandboxRef, *, transport: httpx.BaseTransport | None = None) -> None:
        self.ref = ref
        self._where = f"the API at {ref.api_url}"
        self._client = httpx.Client(
            base_url=f"{ref.api_url}/sandboxes/{quote(ref.sandbox_id, safe='')}",
            verify=ref.verify,
            timeout=TIMEOUT,
            transport=transport,
            headers={"X-API-KEY": ref.api_key, "User-Agent": "scalebox-cli"},
        )

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def start(self, spec: CommandSpec, *, tag: str) -> Iterator[Iterator[ProcessEvent]]:
        body: dict[str, Any] = {
            "cmd": spec.cmd,
            "args": list(spec.args),
            "envs": dict(spec.envs or {}),
            "user": self.ref.user,
            "timeout": MAX_EXEC_TIMEOUT,
            "tag": tag,
        }
        if spec.cwd is not None:
            body["cwd"] = spec.cwd
        # The API sends no keepalives on this stream: a quiet command is silence, not a dead link.
        timeout = read_timeout(None)
        with (
            map_transport_errors(self._where),
            self._client.stream("POST", "/exec/stream", json=body, timeout=timeout) as response,
        ):
            if response.status_code != 200:
                raise read_error(response)
            yield self._events(response)

    def _events(self, response: httpx.Response) -> Iterator[ProcessEvent]:
        parser = SseParser()
        with map_transport_errors(self._where):
            for chunk in response.iter_bytes():
                for sse in parser.feed(chunk):
                    event = decode_exec_event(sse)
                    if event is not None:
                        yield event
                        if isinstance(event, Ended):
                            return
        raise ConnectionLost(f"the command's stream from {self._where} ended before the command did")

    def kill(self, *, pid: int | None = None, tag: str | None = None) -> None:
        params: dict[str, str | int] = {"signal": "SIGKILL"}
        params.update({"pid": pid} if pid is not None else {"tag": tag or ""})
        with map_transport_errors(self._where):
            response = self._client.delete("/exec", params=params)
        if response.status_code != 200:
            error = error_from_body(response.status_code, response.content[:MAX_ERROR_BODY])
            if error.code != "not_found":  # it ended meanwhile: nothing left to kill
                raise error

    @contextmanager
    def download(self, path: str) -> Iterator[Download]:
        # The API strips a leading "/" before asking the agent, which then also tries
        # the home directory; a relative path at least means the home one alone.
        params = {"path": explicit_path(path), "user": self.ref.user}
        with map_transport_errors(self._where), self._client.stream("GET", "/files", params=params) as response:
            if response.status_code != 200:
                raise read_error(response)
            length = response.headers.get("content-length")
            yield Download(length=int(length) if length and length.isdigit() else None, chunks=self._chunks(response))

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        with map_transport_errors(self._where):
            yield from response.iter_bytes()

    def upload(self, path: str, upload: Upload) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if upload.length is not None:
            headers["Content-Length"] = str(upload.length)
        params = {"path": path, "user": self.ref.user}
        with map_transport_errors(self._where):
            response = self._client.put("/files", params=params, content=iter(upload.chunks), headers=headers)
        if response.status_code != 200:
            raise error_from_body(response.status_code, response.content[:MAX_ERROR_BODY])

    def list_dir(self, path: str, depth: int) -> list[Entry]:
        # The API has no listing: run the same one inside the sandbox (remote_ls.py).
        spec = CommandSpec(cmd="python3", args=("-c", LISTER_SOURCE, path, str(depth)))
        output = bytearray()
        tag = "scalebox-cli-ls-" + secrets.token_hex(6)
        with self.start(spec, tag=tag) as events:
            for event in events:
                if isinstance(event, Output) and event.stream == "stdout":
                    output += event.data
                elif isinstance(event, Ended):
                    break
        if not output.strip():
            raise RemoteError("internal", "the listing run through the API printed nothing (is python3 missing?)")
        answer = decode_json(bytes(output), "listing")
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            error = answer["error"]
            raise RemoteError(str(error.get("code") or "internal"), str(error.get("message") or "listing failed"))
        return decode_entries(answer)

    def open_pty(self, spec: CommandSpec, size: PtySize) -> WsPty:
        return WsPty(self.ref, spec, size)


class WsPty:
    """A terminal over the API's WebSocket, on one socket driven from one thread.

    TLS objects must not be read and written from two threads at once, so
    unlike the direct path there is no reader thread: the terminal's select()
    waits on the socket itself, which is non-blocking once the session is up.
    Messages: binary frames are output (ours are keystrokes); text frames are
    JSON (`start`, `exit`, `error` from the server; `resize` from us).
    """

    def __init__(self, ref: SandboxRef, spec: CommandSpec, size: PtySize, *, timeout: float = 10.0) -> None:
        url = httpx.URL(ref.api_url)
        secure = url.scheme == "https"
        host = url.host
        port = url.port or (443 if secure else 80)
        query: dict[str, str | int] = {"cols": size.cols, "rows": size.rows, "user": ref.user}
        if spec.cwd:
            query["cwd"] = spec.cwd
        target = f"{url.raw_path.decode().rstrip('/')}/sandboxes/{quote(ref.sandbox_id, safe='')}/terminal"
        self._where = f"the API at {ref.api_url}"
        self._conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._text = ""
        self._ended = False
        self._closed = False
        self._backlog: list[ProcessEvent] = []
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unreachable(f"cannot reach {self._where}: {exc}") from None
        try:
            self._sock: socket.socket = _tls(ref, raw, host) if secure else raw
            request = ws.Request(
                host=f"{host}:{port}",
                target=f"{target}?{urlencode(query)}",
                extra_headers=[(b"X-API-KEY", ref.api_key.encode())],
            )
            self._send(self._conn.send(request))
            self.pid = self._handshake()
            self._sock.setblocking(False)
        except BaseException:
            raw.close()
            raise

    def _handshake(self) -> int:
        """Wait for the upgrade and the shell's start; output read along with them is kept for `events`."""
        pid: int | None = None
        while pid is None:
            for event in self._receive(blocking=True):
                if isinstance(event, ws.RejectConnection):
                    raise RemoteError(
                        "permission_denied",
                        f"the API refused the terminal (HTTP {event.status_code}); is the sandbox running?",
                    )
                if isinstance(event, Started) and pid is None:
                    pid = event.pid
                elif isinstance(event, Output | Ended):
                    self._backlog.append(event)
        return pid

    def fileno(self) -> int:
        return self._sock.fileno()

    def events(self) -> list[ProcessEvent]:
        out, self._backlog = self._backlog, []
        out.extend(e for e in self._receive(blocking=False) if not isinstance(e, ws.Event))
        return out

    def _receive(self, *, blocking: bool) -> list[ProcessEvent | ws.Event]:
        """Read what the socket has (blocking: at least one read), as process and handshake events."""
        out: list[ProcessEvent | ws.Event] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return out
            except TimeoutError:
                raise ConnectionLost(f"{self._where} stopped answering") from None
            except OSError as exc:
                raise ConnectionLost(f"the terminal's connection to {self._where} broke: {exc}") from None
            try:
                self._conn.receive_data(data or None)
                for event in self._conn.events():
                    out.extend(self._on(event))
            except RemoteProtocolError as exc:
                raise ProtocolError(f"{self._where} broke the WebSocket protocol: {exc}") from None
            if not data:
                if not self._ended:
                    raise ConnectionLost(f"{self._where} closed the terminal before the shell ended")
                return out
            if blocking and out:
                return out

    def _on(self, event: ws.Event) -> list[ProcessEvent | ws.Event]:
        if isinstance(event, ws.AcceptConnection | ws.RejectConnection):
            return [event]
        if isinstance(event, ws.BytesMessage):
            return [Output(stream="pty", data=bytes(event.data))]
        if isinstance(event, ws.TextMessage):
            self._text += event.data
            if not event.message_finished:
                return []
            text, self._text = self._text, ""
            return self._control(text)
        if isinstance(event, ws.Ping):
            self._send(self._conn.send(event.response()))
        elif isinstance(event, ws.CloseConnection):
            with contextlib.suppress(LocalProtocolError, OSError):
                self._send(self._conn.send(event.response()))
            self._closed = True
            if not self._ended:
                reason = f": {event.reason}" if event.reason else ""
                raise ConnectionLost(f"{self._where} closed the terminal before the shell ended{reason}")
        return []

    def _control(self, text: str) -> list[ProcessEvent | ws.Event]:
        try:
            message = json.loads(text)
        except ValueError:
            return []
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "start":
            return [Started(pid=int(message.get("pid") or 0))]
        if kind == "exit":
            self._ended = True
            status = str(message.get("status") or "")
            code = int(message.get("exit_code") or 0)
            return [Ended(exit_code=code, exited=status.startswith("exit status"), status=status)]
        if kind == "error":
            raise RemoteError(str(message.get("code") or "unavailable"), str(message.get("message") or "error"))
        return []

    def _send(self, data: bytes) -> None:
        # Sends block (briefly) even when reads do not: a keystroke must not be dropped.
        blocking_timeout = self._sock.gettimeout()
        try:
            self._sock.settimeout(30.0)
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"the terminal's connection to {self._where} broke: {exc}") from None
        finally:
            self._sock.settimeout(blocking_timeout)

    def send_input(self, data: bytes) -> None:
        self._send(self._conn.send(ws.Message(data=data)))

    def resize(self, size: PtySize) -> None:
        message = json.dumps({"type": "resize", "cols": size.cols, "rows": size.rows})
        self._send(self._conn.send(ws.Message(data=message)))

    def kill(self) -> None:
        # The API kills the shell when its WebSocket closes.
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(LocalProtocolError, SandboxIoError):
            self._send(self._conn.send(ws.CloseConnection(code=1000)))

    def close(self) -> None:
        self.kill()
        self._sock.close()


def _tls(ref: SandboxRef, raw: socket.socket, host: str) -> socket.socket:
    if isinstance(ref.verify, ssl.SSLContext):
        context = ref.verify
    elif ref.verify:
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except ssl.SSLError as exc:
        raise Unreachable(f"cannot reach the API at {host}: {exc}") from None
    except OSError as exc:
        raise ConnectionLost(f"the connection to the API at {host} broke: {exc}") from None
