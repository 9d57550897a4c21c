"""Wake on traffic: the gateway asks the control plane to resume a sleeping sandbox.

    POST /v1/sandboxes/{id}/wake     X-Access-Token: the sandbox's own access token

    200  running (at once when it already was)
    401  missing or wrong token
    404  no such sandbox
    409  not asleep by auto_pause: paused through the API (it stays paused), or gone
    503  the container engine failed to resume it

Authenticated by the sandbox's access token, not an API key: the gateway processes
(appliance/workers.py) hold the appliance's secret but no API key, and whoever holds
the token can reach the sandbox anyway, so waking it grants nothing more. That makes
the route safe to leave reachable through api.<D> like the rest of /v1.
"""

from __future__ import annotations

import re

import trio
from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.wire import json_response
from controlplane.errors import Unauthorized
from controlplane.lifecycle.service import SandboxService
from controlplane.tokens import verify_access_token

_WAKE_PATH = re.compile(r"/v1/sandboxes/[^/]+/wake")


def takes_access_token(method: str, path: str) -> bool:
    """Whether a request is the wake route, which checks its own token instead of an API key."""
    return method == "POST" and _WAKE_PATH.fullmatch(path) is not None


def register(app: QuartTrio, *, service: SandboxService, secret: bytes) -> None:
    @app.post("/v1/sandboxes/<sandbox_id>/wake")
    async def wake(sandbox_id: str) -> Response:
        # The token first: it needs no database read, and a caller without one learns
        # nothing, not even whether the sandbox exists.
        if not verify_access_token(secret, sandbox_id, request.headers.get("X-Access-Token")):
            raise Unauthorized(
                f"waking sandbox {sandbox_id} needs its access token in X-Access-Token", code="invalid_access_token"
            )
        was = service.get(sandbox_id).state
        # Shielded: Quart cancels a handler whose client hangs up, and a resume cut
        # short would leave the row `resuming` with the container unpaused or not.
        with trio.CancelScope(shield=True):
            rec = await service.wake(sandbox_id)
        data = {"sandbox_id": rec.id, "status": rec.state.value, "woken": was is not rec.state}
        return json_response(success(data, "sandbox woken" if data["woken"] else "sandbox already running"))
