"""Straight to a sandbox's agent on its sandbox domain, with synchronous httpx.

The agent speaks Connect over HTTP/1.1 with the JSON codec (what the
JavaScript SDK sends): unary calls are `application/json` both ways, server
streams `application/connect+json` with 5-byte envelopes (`envelope.py`), and
files travel over plain `GET /download/<path>` and multipart `POST /upload`.
Every request carries the sandbox's token (`X-Access-Token`) and selects the
user with `Authorization: Basic base64("<user>:")`.

httpx's exceptions become ours in one place, `map_transport_errors`: a failure
to connect is `Unreachable` (nothing was sent, so the API path may be taken
instead), anything later `ConnectionLost`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from cli.sandboxio.envelope import EnvelopeDecoder, encode
from cli.sandboxio.errors import ConnectionLost, ProtocolError, RemoteError, SandboxIoError, Unreachable
from cli.sandboxio.messages import (
    FILESYSTEM,
    PROCESS,
    CommandSpec,
    Ended,
    Entry,
    ProcessEvent,
    PtySize,
    Started,
    decode_entries,
    decode_event,
    decode_json,
    end_of_stream_error,
    error_from_body,
    kill_request,
    list_dir_request,
    send_input_request,
    start_request,
    update_request,
)
from cli.sandboxio.multipart import MultipartFile
from cli.sandboxio.transport import Download, SandboxRef, Upload

# The agent sends a keepalive message after this many idle seconds on a process
# stream, so a read that stays silent for STREAM_READ_TIMEOUT means the
# connection is gone rather than the command being quiet.
KEEPALIVE_SECONDS = 15
STREAM_READ_TIMEOUT = 4 * KEEPALIVE_SECONDS
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


def read_timeout(seconds: float | None) -> httpx.Timeout:
    """TIMEOUT with another read timeout (None: wait forever)."""
    return httpx.Timeout(connect=TIMEOUT.connect, read=seconds, write=TIMEOUT.write, pool=TIMEOUT.pool)


MAX_ERROR_BODY = 64 * 1024


@contextmanager
def map_transport_errors(where: str) -> Iterator[None]:
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
        raise Unreachable(f"cannot reach {where}: {exc or type(exc).__name__}") from None
    except httpx.TimeoutException:
        raise ConnectionLost(f"{where} stopped answering") from None
    except httpx.TransportError as exc:
        raise ConnectionLost(f"the connection to {where} broke: {exc or type(exc).__name__}") from None


def auth_headers(token: str, user: str) -> dict[str, str]:
    basic = base64.b64encode(f"{user}:".encode()).decode("ascii")
    return {"X-Access-Token": token, "Authorization": f"Basic {basic}"}


def explicit_path(path: str) -> str:
    """`path` with a relative one made explicitly relative to the home directory ("~/...")."""
    return path if path.startswith(("/", "~")) else "~/" + path


def download_target(path: str) -> str:
    """The URL path of `/download` for `path`, meaning exactly that file.

    The agent tries "/" + <rest of the URL> first and the user's home second (the
    SDKs strip the leading "/"); keeping the "/" (or a "~") makes both the same,
    so a missing absolute path is never quietly served from the home directory.
    """
    return "/download/" + quote(explicit_path(path), safe="/~")


def read_error(response: httpx.Response) -> RemoteError:
    """A streamed non-200 answer as a RemoteError, reading no more of it than an error needs."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return error_from_body(response.status_code, bytes(body))


class AgentBackend:
    name = "direct"

    def __init__(self, ref: SandboxRef, *, transport: httpx.BaseTransport | None = None) -> None:
        self.ref = ref
        self._where = f"the sandbox at {ref.domain}"
        self._transport = transport
        self._client = self.new_client()

    def new_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.ref.agent_url,
            verify=self.ref.verify,
            timeout=TIMEOUT,
            transport=self._transport,
            headers={**auth_headers(self.ref.token, self.ref.user), "User-Agent": "scalebox-cli"},
        )

    def close(self) -> None:
        self._client.close()

    def probe(self) -> None:
        """Raise Unreachable when the sandbox domain cannot be connected to; any answer will do."""
        with map_transport_errors(self._where):
            self._client.get("/health").close()

    # -- Connect ---------------------------------------------------------------------------

    def unary(self, method: str, request: dict[str, Any]) -> Any:
        with map_transport_errors(self._where):
            response = self._client.post(
                f"/{method}",
                content=json.dumps(request).encode(),
                headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
            )
        if response.status_code != 200:
            raise error_from_body(response.status_code, response.content[:MAX_ERROR_BODY])
        return decode_json(response.content, f"{method} answer")

    @contextmanager
    def stream(
        self, method: str, request: dict[str, Any], client: httpx.Client | None = None
    ) -> Iterator[Iterator[ProcessEvent]]:
        """A server stream of process events.

        A refusal before the call (HTTP status) raises on entry; the call's own
        error (the end-of-stream message) raises from the iteration.
        """
        headers = {
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
            "Keepalive-Ping-Interval": str(KEEPALIVE_SECONDS),
        }
        timeout = read_timeout(STREAM_READ_TIMEOUT)
        payload = encode(json.dumps(request).encode())
        with (
            map_transport_errors(self._where),
            (client or self._client).stream(
                "POST", f"/{method}", content=payload, headers=headers, timeout=timeout
            ) as response,
        ):
            if response.status_code != 200:
                raise read_error(response)
            yield self._events(response)

    def _events(self, response: httpx.Response) -> Iterator[ProcessEvent]:
        decoder = EnvelopeDecoder()
        with map_transport_errors(self._where):
            for chunk in response.iter_bytes():
                decoder.feed(chunk)
                while (frame := decoder.next()) is not None:
                    if frame.end_stream:
                        error = end_of_stream_error(frame.payload)
                        if error is not None:
                            raise error
                        return
                    yield decode_event(decode_json(frame.payload, "process event"))
        raise ConnectionLost(f"the stream from {self._where} ended before its last message")

    # -- processes -----------------------------------------------------------------------------

    def start(self, spec: CommandSpec, *, tag: str) -> contextlib.AbstractContextManager[Iterator[ProcessEvent]]:
        return self.stream(f"{PROCESS}/Start", start_request(spec, tag=tag))

    def kill(self, *, pid: int | None = None, tag: str | None = None) -> None:
        try:
            self.unary(f"{PROCESS}/SendSignal", kill_request(pid=pid, tag=tag))
        except RemoteError as exc:
            if exc.code != "not_found":  # it ended meanwhile: nothing left to kill
                raise

    def open_pty(self, spec: CommandSpec, size: PtySize) -> AgentPty:
        return AgentPty(self, spec, size)

    # -- files -----------------------------------------------------------------------------------

    def list_dir(self, path: str, depth: int) -> list[Entry]:
        return decode_entries(self.unary(f"{FILESYSTEM}/ListDir", list_dir_request(path, depth)))

    @contextmanager
    def download(self, path: str) -> Iterator[Download]:
        with map_transport_errors(self._where), self._client.stream("GET", download_target(path)) as response:
            if response.status_code != 200:
                raise read_error(response)
            length = response.headers.get("content-length")
            yield Download(
                length=int(length) if length and length.isdigit() else None,
                chunks=self._chunks(response),
            )

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        with map_transport_errors(self._where):
            yield from response.iter_bytes()

    def upload(self, path: str, upload: Upload) -> None:
        form = MultipartFile(filename=upload.filename)
        headers = {"Content-Type": form.content_type}
        if upload.length is not None:
            # Known up front, so no chunked encoding: any proxy on the way takes it.
            headers["Content-Length"] = str(form.length(upload.length))
        with map_transport_errors(self._where):
            response = self._client.post(
                "/upload", params={"path": path}, content=form.stream(upload.chunks), headers=headers
            )
        if response.status_code != 200:
            raise error_from_body(response.status_code, response.content[:MAX_ERROR_BODY])


class AgentPty:
    """A PTY process on the agent: its stream read by a thread, input and resizes as unary calls.

    The stream blocks in httpx, so a thread reads it and hands events over
    through a queue, waking the terminal's select() with a byte on a pipe. The
    thread has its own httpx client: the main thread's unary calls never share
    a connection pool with it.
    """

    def __init__(self, backend: AgentBackend, spec: CommandSpec, size: PtySize) -> None:
        self._backend = backend
        self._stack = ExitStack()
        self._queue: queue.SimpleQueue[ProcessEvent | SandboxIoError | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._ended = False
        try:
            client = self._stack.enter_context(backend.new_client())
            events = self._stack.enter_context(
                backend.stream(f"{PROCESS}/Start", start_request(spec, pty=size), client=client)
            )
            first = next(events, None)
            if not isinstance(first, Started):
                raise ProtocolError("the sandbox's terminal stream did not begin with the process's start")
        except BaseException:
            self._stack.close()
            self._close_pipe()
            raise
        self.pid = first.pid
        self._thread = threading.Thread(target=self._read, args=(events,), name="pty-reader", daemon=True)
        self._thread.start()

    def _read(self, events: Iterator[ProcessEvent]) -> None:
        try:
            for event in events:
                self._queue.put(event)
                self._wake()
        except SandboxIoError as exc:
            self._queue.put(exc)
        finally:
            self._queue.put(None)
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed during shutdown
            os.write(self._wake_w, b"\0")

    def fileno(self) -> int:
        return self._wake_r

    def events(self) -> list[ProcessEvent]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        out: list[ProcessEvent] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, SandboxIoError):
                raise item
            if item is None:
                if not self._ended:
                    raise ConnectionLost("the terminal's stream ended before the shell did")
                return out
            if isinstance(item, Ended):
                self._ended = True
            out.append(item)

    def send_input(self, data: bytes) -> None:
        self._backend.unary(f"{PROCESS}/SendInput", send_input_request(self.pid, data, pty=True))

    def resize(self, size: PtySize) -> None:
        self._backend.unary(f"{PROCESS}/Update", update_request(self.pid, size))

    def kill(self) -> None:
        self._backend.kill(pid=self.pid)

    def close(self) -> None:
        # The reader ends once the process has (the agent closes the stream after
        # its end); closing the response under a thread still reading would race.
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self._stack.close()
            self._close_pipe()
        # else the pipe stays open: a descriptor closed under the thread could be
        # reused by another file, which its wake-up byte would then corrupt.

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
