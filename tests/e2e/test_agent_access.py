"""End to end: signed file URLs, the API's exec and file routes, and bad input to the agent."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.appliance import Appliance
from tests.e2e.helpers import create

pytestmark = pytest.mark.podman


@pytest.fixture
def running(appliance: Appliance) -> Iterator[tuple[Appliance, dict[str, Any]]]:
    with appliance.client() as api:
        yield appliance, create(appliance, api)


def _multipart(boundary: str, name: str, data: bytes, chunk: int = 1 << 20) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]
    yield f"\r\n--{boundary}--\r\n".encode()


def test_signed_urls_move_100_mb_without_headers(running: tuple[Appliance, dict[str, Any]]) -> None:
    from scalebox.sandbox.signature import get_signature

    app, sbx = running
    sid, token = sbx["sandbox_id"], sbx["envd_access_token"]
    base = app.url(sid)
    data = os.urandom(100 * 1024 * 1024)

    def signed(path: str, op: str, expires_in: int | None) -> dict[str, str]:
        sig = get_signature(path, op, "root", token, expires_in)
        query = {"username": "root", "signature": sig["signature"]}
        if sig["expiration"]:
            query["signature_expiration"] = str(sig["expiration"])
        return query

    with app.client(api_key=None, timeout=120) as anon:
        up = anon.post(
            f"{base}upload",
            params={"path": "/tmp/signed.bin", **signed("/tmp/signed.bin", "write", 60)},
            content=_multipart("sbxboundary", "signed.bin", data),
            headers={"Content-Type": "multipart/form-data; boundary=sbxboundary"},
        )
        assert up.status_code == 200, up.text
        digest = hashlib.sha256()
        size = 0
        with anon.stream("GET", f"{base}download/tmp/signed.bin", params=signed("/tmp/signed.bin", "read", 60)) as down:
            assert down.status_code == 200
            for chunk in down.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
        assert size == len(data) and digest.digest() == hashlib.sha256(data).digest()

        # A signature that expired, or was tampered with, or signs another path, is refused.
        expired = signed("/tmp/signed.bin", "read", -10)
        assert anon.get(f"{base}download/tmp/signed.bin", params=expired).status_code == 401
        tampered = signed("/tmp/signed.bin", "read", 60)
        tampered["signature"] = tampered["signature"][:-2] + (
            "AA" if not tampered["signature"].endswith("AA") else "BB"
        )
        assert anon.get(f"{base}download/tmp/signed.bin", params=tampered).status_code == 401
        other_path = signed("/etc/shadow", "read", 60)
        assert anon.get(f"{base}download/tmp/signed.bin", params=other_path).status_code == 401
        # And without a signature or a token, nothing.
        assert anon.get(f"{base}download/tmp/signed.bin").status_code == 401


def test_api_exec_and_files(running: tuple[Appliance, dict[str, Any]]) -> None:
    app, sbx = running
    root = f"{app.api_url}/sandboxes/{sbx['sandbox_id']}"
    with app.client() as api:
        ran = api.post(f"{root}/exec", json={"command": "echo hi; echo err >&2; whoami", "user": "user"})
        assert ran.status_code == 200, ran.text
        data = ran.json()["data"]
        assert (data["stdout"], data["stderr"], data["exit_code"]) == ("hi\nuser\n", "err\n", 0)
        failed = api.post(f"{root}/exec", json={"cmd": "/bin/sh", "args": ["-c", "exit 3"]}).json()["data"]
        assert failed["exit_code"] == 3 and failed["timed_out"] is False
        slow = api.post(f"{root}/exec", json={"command": "sleep 30", "timeout": 1}).json()["data"]
        assert slow["timed_out"] is True and slow["exit_code"] is None

        # A background process: listed as active, then killed by tag.
        bg = api.post(f"{root}/exec", json={"command": "sleep 300", "tag": "sleeper", "background": True})
        assert bg.json()["data"]["pid"]
        active = api.get(f"{root}/exec/active").json()["data"]["processes"]
        assert any(p["tag"] == "sleeper" for p in active)
        assert api.delete(f"{root}/exec", params={"tag": "sleeper"}).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not any(p["tag"] == "sleeper" for p in api.get(f"{root}/exec/active").json()["data"]["processes"]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the killed process is still listed")
        missing = api.delete(f"{root}/exec", params={"tag": "sleeper"})
        assert missing.status_code == 404 and missing.json()["success"] is False

        # Server-Sent Events.
        with api.stream("GET", f"{root}/exec/stream", params={"command": "echo a; sleep 0.2; echo b >&2"}) as sse:
            assert sse.headers["content-type"].startswith("text/event-stream")
            events = [line for line in sse.iter_lines() if line.startswith("event: ")]
        assert events[0] == "event: start" and events[-1] == "event: end"
        assert "event: stdout" in events and "event: stderr" in events

        # Files through the API.
        blob = os.urandom(5 * 1024 * 1024)
        put = api.put(f"{root}/files", params={"path": "/home/user/api.bin"}, content=blob)
        assert put.status_code == 200, put.text
        got = api.get(f"{root}/files", params={"path": "/home/user/api.bin"})
        assert got.status_code == 200 and got.content == blob
        nothing = api.get(f"{root}/files", params={"path": "/home/user/none.bin"})
        assert nothing.status_code == 404 and "no such file" in nothing.json()["message"]
        bad = api.post(f"{root}/exec", json={"command": "true", "cmd": "true"})
        assert bad.status_code == 400 and "exactly one" in bad.json()["message"]


def test_bad_input_to_the_agent(running: tuple[Appliance, dict[str, Any]]) -> None:
    app, sbx = running
    base = app.url(sbx["sandbox_id"])
    good = {"X-Access-Token": sbx["envd_access_token"]}
    with app.client(api_key=None) as anon:
        unknown = anon.post(
            f"{base}sandboxagent.Filesystem/Explode", content=b"", headers={**good, "Content-Type": "application/proto"}
        )
        assert unknown.status_code == 404 and unknown.json()["code"] == "unimplemented"
        garbage = anon.post(
            f"{base}sandboxagent.Filesystem/Stat",
            content=b"\xff\xff\xff",
            headers={**good, "Content-Type": "application/proto"},
        )
        assert garbage.status_code == 400 and garbage.json()["code"] == "invalid_argument"
        not_json = anon.post(
            f"{base}sandboxagent.Filesystem/Stat",
            content=b"{nope",
            headers={**good, "Content-Type": "application/json"},
        )
        assert not_json.status_code == 400 and not_json.json()["code"] == "invalid_argument"
        wrong_json = {"X-Access-Token": "sbt_wrong", "Content-Type": "application/json"}
        wrong = anon.post(f"{base}sandboxagent.Filesystem/Stat", content=json.dumps({"path": "/"}), headers=wrong_json)
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthenticated"
        wrong_stream = {"X-Access-Token": "sbt_wrong", "Content-Type": "application/connect+proto"}
        stream = anon.post(f"{base}sandboxagent.Process/Start", content=b"\x00" * 5, headers=wrong_stream)
        assert stream.status_code == 200 and stream.content[0] == 0x02
        assert json.loads(stream.content[5:])["error"]["code"] == "unauthenticated"
        # An oversized message is refused from its declared length, not buffered.
        too_big = b"\x00" + (1 << 30).to_bytes(4, "big")  # flags, then a length far over the cap
        stream_headers = {**good, "Content-Type": "application/connect+proto"}
        over = anon.post(f"{base}sandboxagent.Process/StreamInput", content=too_big, headers=stream_headers)
        assert over.status_code == 200 and json.loads(over.content[5:])["error"]["code"] == "resource_exhausted"
