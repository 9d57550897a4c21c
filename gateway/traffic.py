"""Bytes through the gateway per sandbox: counted on the hot path, reported in batches.

Every gateway process adds the bytes of each request and stream it forwards to a
sandbox to an in-memory count (`TrafficCounter.add`: a dict lookup and two
additions, when the request or connection ends). `report_traffic` takes the counts
every few seconds and hands them to a sink: in the appliance's own process the
meter itself (controlplane/usage/meter.py); in a worker process (appliance/workers.py)
`ApiTrafficSink`, a `POST /v1/internal/traffic` on the API's unix socket signed with
the appliance's secret (controlplane/tokens.py `sign_report`). A report that fails is
merged back and sent with the next, so nothing a process counted is lost while the
control plane restarts; a process that dies loses what it held (seconds' worth).

A tunnel (WebSocket, CONNECT-like upgrade, tcp or tls port) is counted when it closes.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable

import h11
import trio

from appliance import log
from controlplane.tokens import sign_report
from gateway.streams import CHUNK
from gateway.upstream import Address, UpstreamUnavailable, open_stream

DEFAULT_REPORT_INTERVAL = 5.0
TRAFFIC_PATH = "/v1/internal/traffic"
SIGNATURE_HEADER = "x-scalebox-signature"

# sandbox id -> (bytes from the client, bytes to the client)
Counts = dict[str, tuple[int, int]]
Sink = Callable[[Counts], Awaitable[None]]


class ReportRefused(Exception):
    """The control plane answered a report with an error."""


_REPORT_FAILURES = (
    UpstreamUnavailable,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    h11.ProtocolError,
    ReportRefused,
)


class TrafficCounter:
    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}

    def add(self, sandbox_id: str, bytes_in: int, bytes_out: int) -> None:
        held = self._counts.get(sandbox_id)
        if held is None:
            self._counts[sandbox_id] = [bytes_in, bytes_out]
        else:
            held[0] += bytes_in
            held[1] += bytes_out

    def take(self) -> Counts:
        """Everything counted since the last take, and start again from zero."""
        counts, self._counts = self._counts, {}
        return {sid: (c[0], c[1]) for sid, c in counts.items() if c[0] or c[1]}

    def give_back(self, counts: Counts) -> None:
        for sandbox_id, (bytes_in, bytes_out) in counts.items():
            self.add(sandbox_id, bytes_in, bytes_out)


async def flush(counter: TrafficCounter, sink: Sink) -> bool:
    """Hand what is counted to `sink`; on failure keep it for the next flush."""
    counts = counter.take()
    if not counts:
        return True
    try:
        await sink(counts)
    except (
        UpstreamUnavailable,
        OSError,
        trio.BrokenResourceError,
        trio.TooSlowError,
        h11.ProtocolError,
        ReportRefused,
    ) as exc:
        counter.give_back(counts)
        log.event("gateway.traffic_report_failed", sandboxes=len(counts), error=str(exc) or type(exc).__name__)
        return False
    return True


async def report_traffic(counter: TrafficCounter, sink: Sink, interval: float = DEFAULT_REPORT_INTERVAL) -> None:
    """Flush every `interval` seconds until cancelled (then the caller flushes once more)."""
    while True:
        await trio.sleep(interval)
        await flush(counter, sink)


class ApiTrafficSink:
    """Reports to the control plane over `api`, one short POST per report."""

    def __init__(self, *, api: Address, secret: bytes, timeout: float = 10.0) -> None:
        self.api = api
        self.secret = secret
        self.timeout = timeout

    async def __call__(self, counts: Counts) -> None:
        body = json.dumps({"traffic": {sid: list(c) for sid, c in counts.items()}}, separators=(",", ":")).encode()
        signature = sign_report(self.secret, body, now=time.time(), nonce=secrets.token_hex(12))
        with trio.fail_after(self.timeout):
            status = await self._post(body, signature)
        if status != 200:
            raise ReportRefused(f"the control plane answered {status} to a traffic report")

    async def _post(self, body: bytes, signature: str) -> int:
        stream = await open_stream(self.api, timeout=self.timeout)
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="POST",
                target=TRAFFIC_PATH,
                headers=[
                    (b"host", b"scalebox-gateway"),
                    (b"content-type", b"application/json"),
                    (SIGNATURE_HEADER.encode(), signature.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            )
            out = (conn.send(request) or b"") + (conn.send(h11.Data(data=body)) or b"")
            await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(CHUNK)))
                elif isinstance(event, h11.Response):
                    return event.status_code
                elif isinstance(event, h11.ConnectionClosed):
                    raise UpstreamUnavailable("the connection closed before an answer")
        finally:
            await trio.aclose_forcefully(stream)
