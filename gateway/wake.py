"""Wake on traffic, the gateway's side: have the control plane resume a sleeping sandbox.

A request or connection for a sandbox that auto_pause put to sleep gets the verdict
`Wake` (gateway/access.py). The gateway holds it, calls the control plane's
`POST /v1/sandboxes/{id}/wake` (controlplane/api/wake.py) over the API's unix socket
with the sandbox's own access token, and decides again once the sandbox runs. Every
gateway process can do this (appliance/workers.py): each has the socket and the
secret that mints the token, none has an API key.

Wakes of one sandbox that overlap in one process share one call: a page opening
six connections at once resumes its sandbox once. A wake is bounded by `timeout`;
past it the held request is refused (503, with the message returned here) while
the control plane finishes the resume on its own, so a retry finds it running.
Each call leaves one `gateway.wake` line in the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import h11
import trio

from appliance import log
from gateway.streams import CHUNK
from gateway.upstream import Address, UpstreamUnavailable, open_stream

DEFAULT_WAKE_TIMEOUT = 30.0
# The answer is a small JSON envelope; anything longer is not worth reading.
_MAX_ANSWER = 64 * 1024


class _Call:
    """One wake in flight, and what it came to, for every request waiting on it."""

    def __init__(self, sandbox_id: str) -> None:
        self.done = trio.Event()
        # Stays so when the caller that made the call was cancelled (e.g. shutdown).
        self.failure: str | None = f"the wake of sandbox {sandbox_id} was interrupted; retry shortly"
        self.waiters = 0


class ApiWaker:
    """A `gateway.proxy.Waker` that asks the control plane at `api`."""

    def __init__(
        self,
        *,
        api: Address,
        token_for: Callable[[str], str],
        timeout: float = DEFAULT_WAKE_TIMEOUT,
        worker: int = 0,
    ) -> None:
        self.api = api
        # sandbox id -> its access token (controlplane/tokens.py, under the appliance's secret).
        self.token_for = token_for
        self.timeout = timeout
        self.worker = worker
        self._calls: dict[str, _Call] = {}

    async def __call__(self, sandbox_id: str) -> str | None:
        """None once the sandbox runs; else why it does not, for the client."""
        call = self._calls.get(sandbox_id)
        if call is not None:
            call.waiters += 1
            await call.done.wait()
            return call.failure
        call = self._calls[sandbox_id] = _Call(sandbox_id)
        started = trio.current_time()
        outcome = "interrupted"
        try:
            outcome, call.failure = await self._wake(sandbox_id)
        finally:
            del self._calls[sandbox_id]
            call.done.set()
            log.event(
                "gateway.wake",
                sandbox=sandbox_id,
                outcome=outcome,
                waiters=call.waiters,
                worker=self.worker,
                ms=round((trio.current_time() - started) * 1000, 1),
            )
        return call.failure

    async def _wake(self, sandbox_id: str) -> tuple[str, str | None]:
        """(outcome for the log, failure message or None)."""
        with trio.move_on_after(self.timeout):
            try:
                status, body = await self._post(sandbox_id)
            except (UpstreamUnavailable, OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                return "unreachable", f"the control plane could not be asked to wake sandbox {sandbox_id}: {exc}"
            if status == 200:
                return "ok", None
            return f"refused_{status}", _message(body) or f"the control plane answered {status} to the wake"
        return "timeout", f"sandbox {sandbox_id} did not wake within {self.timeout:g} s; retry shortly"

    async def _post(self, sandbox_id: str) -> tuple[int, bytes]:
        """One POST on a fresh connection: wakes are rare, a pool would only hold sockets."""
        stream = await open_stream(self.api, timeout=self.timeout)
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="POST",
                target=f"/v1/sandboxes/{quote(sandbox_id, safe='')}/wake",
                headers=[
                    (b"host", b"scalebox-gateway"),
                    (b"x-access-token", self.token_for(sandbox_id).encode()),
                    (b"content-length", b"0"),
                    (b"connection", b"close"),
                ],
            )
            await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(CHUNK)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data[: _MAX_ANSWER - len(body)]
                elif isinstance(event, h11.EndOfMessage):
                    return status, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise UpstreamUnavailable("the connection closed before an answer")
        finally:
            await trio.aclose_forcefully(stream)


def _message(body: bytes) -> str | None:
    """The `message` of the control plane's error envelope, if it is one."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    message = payload.get("message") if isinstance(payload, dict) else None
    return message if isinstance(message, str) and message else None
