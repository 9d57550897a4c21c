"""agent/fs end to end: a real agent process on 127.0.0.1, driven by the official
Python SDK (Connect RPCs, /download, /upload) and by raw HTTP.

The agent runs on this venv's Python and, when pyenv has one, on Python 3.9
with h11 vendored the way the appliance mounts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import h11
import httpx
import pytest
import urllib3
from scalebox.connection_config import ConnectionConfig
from scalebox.exceptions import InvalidArgumentException, NotFoundException
from scalebox.sandbox.filesystem.filesystem import FileType
from scalebox.sandbox.filesystem.watch_handle import FilesystemEventType
from scalebox.sandbox.main import SandboxSetup
from scalebox.sandbox_async.filesystem.filesystem import Filesystem as AsyncFilesystem
from scalebox.sandbox_sync.filesystem.filesystem import Filesystem

from tests.unit.agent_helpers import python39

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fs-test-token"


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def request(
        self, method: str, target: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module", params=["venv", "python3.9"])
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    work = tmp_path_factory.mktemp("agent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEBOX_")}
    port = _free_port()
    env.update({"SCALEBOX_AGENT_PORT": str(port), "SCALEBOX_ACCESS_TOKEN": TOKEN})
    if request.param == "venv":
        python = sys.executable
    else:
        python = python39()
        vendor = work / "vendor"
        shutil.copytree(Path(h11.__file__).parent, vendor / "h11")
        env["SCALEBOX_AGENT_VENDOR"] = str(vendor)
    log = work / "agent.err"
    with log.open("wb") as err:
        proc = subprocess.Popen([python, "-m", "agent"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stderr=err)
    running = Agent(proc, port, log)
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if running.request("GET", "/health")[0] == 204:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    try:
        yield running
    finally:
        proc.terminate()
        proc.wait(10)
        assert '"event":"rpc_error"' not in log.read_text()  # no handler failed unexpectedly


def sdk_headers(user: str = "root") -> dict[str, str]:
    return {"Authorization": f"Bearer {user}", "X-Access-Token": TOKEN}  # what the SDK sends


@pytest.fixture
def files(agent: Agent) -> Iterator[Filesystem]:
    headers = sdk_headers()
    config = ConnectionConfig(api_key="unused", domain="unused", headers=headers)
    with httpx.Client(base_url=agent.url, headers=headers) as envd:
        yield Filesystem(agent.url, None, config, urllib3.PoolManager(headers=headers), envd)


@pytest.fixture
def shared() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="agent-fs-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- the SDK ----------------------------------------------------------------------


def test_sdk_write_read_and_metadata(files: Filesystem, tmp_path: Path) -> None:
    target = str(tmp_path / "new" / "dir" / "hello.txt")
    info = files.write(target, "héllo")
    assert (info.path, info.name) == (target, "hello.txt")
    assert files.read(target) == "héllo"
    assert files.read(target, format="bytes") == bytearray("héllo".encode())
    assert b"".join(files.read(target, format="stream")) == "héllo".encode()
    assert files.exists(target)
    assert not files.exists(str(tmp_path / "missing"))
    entry = files.get_info(target)
    assert (entry.type, entry.size, entry.permissions, entry.owner) == (FileType.FILE, 6, "-rw-r--r--", "root")
    assert entry.symlink_target is None
    assert abs(entry.modified_time.timestamp() - (tmp_path / "new" / "dir" / "hello.txt").stat().st_mtime) < 1


def test_sdk_directories(files: Filesystem, tmp_path: Path) -> None:
    assert files.make_dir(str(tmp_path / "a" / "b")) is True
    assert files.make_dir(str(tmp_path / "a" / "b")) is False  # "directory already exists"
    files.write(
        [{"path": str(tmp_path / "a" / "one"), "data": b"1"}, {"path": str(tmp_path / "a" / "b" / "two"), "data": "2"}]
    )
    (tmp_path / "a" / "link").symlink_to("one")
    listed = files.list(str(tmp_path / "a"))
    assert [(e.name, e.type) for e in listed] == [("b", FileType.DIR), ("link", FileType.FILE), ("one", FileType.FILE)]
    assert listed[1].symlink_target == str(tmp_path / "a" / "one")
    assert [e.name for e in files.list(str(tmp_path / "a"), depth=2)] == ["b", "two", "link", "one"]
    moved = files.rename(str(tmp_path / "a" / "b"), str(tmp_path / "c" / "b2"))
    assert (moved.path, moved.type) == (str(tmp_path / "c" / "b2"), FileType.DIR)
    files.remove(str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_sdk_errors(files: Filesystem, tmp_path: Path) -> None:
    with pytest.raises(NotFoundException) as caught:
        files.read(str(tmp_path / "missing.txt"))
    assert "no such file or directory" in str(caught.value)
    with pytest.raises(InvalidArgumentException):
        files.read(str(tmp_path))  # a directory
    with pytest.raises(Exception, match="no such file or directory"):
        files.get_info(str(tmp_path / "missing.txt"))
    with pytest.raises(Exception, match="no such file or directory"):
        files.remove(str(tmp_path / "missing.txt"))


def test_sdk_relative_paths_round_trip_through_home(files: Filesystem) -> None:
    name = f"agent-fs-test-{os.getpid()}.txt"
    try:
        files.write(name, "relative")  # under the user's home (root: /root)
        assert Path("/root", name).read_text() == "relative"
        assert files.read(name) == "relative"  # /download/<name>: not at /, found under home
        assert files.exists(name)
    finally:
        Path("/root", name).unlink(missing_ok=True)


def test_sdk_polling_watcher(files: Filesystem, tmp_path: Path) -> None:
    handle = files.watch_dir(str(tmp_path), recursive=True)
    try:
        (tmp_path / "d").mkdir()
        time.sleep(0.2)
        (tmp_path / "d" / "f").write_text("x")
        time.sleep(0.2)
        events = [(e.name, e.type) for e in handle.get_new_events()]
        assert events == [
            ("d", FilesystemEventType.CREATE),
            ("d/f", FilesystemEventType.CREATE),
            ("d/f", FilesystemEventType.WRITE),
        ]
        assert handle.get_new_events() == []
    finally:
        handle.stop()


def test_sdk_streaming_watch(agent: Agent, tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        headers = sdk_headers()
        config = ConnectionConfig(api_key="unused", domain="unused", headers=headers)
        events: list[tuple[str, Any]] = []
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            httpx.AsyncClient(base_url=agent.url, headers=headers) as envd,
        ):
            files = AsyncFilesystem(agent.url, None, config, session, envd)
            handle = await files.watch_dir(str(tmp_path), lambda e: events.append((e.name, e.type)), recursive=True)
            (tmp_path / "s.txt").write_text("streamed")
            (tmp_path / "s.txt").rename(tmp_path / "t.txt")
            for _ in range(100):
                if len(events) >= 4:
                    break
                await asyncio.sleep(0.02)
            await handle.stop()
        return events

    assert asyncio.run(scenario()) == [
        ("s.txt", FilesystemEventType.CREATE),
        ("s.txt", FilesystemEventType.WRITE),
        ("s.txt", FilesystemEventType.RENAME),
        ("t.txt", FilesystemEventType.CREATE),
    ]


def test_sdk_as_another_user(agent: Agent, shared: Path) -> None:
    headers = sdk_headers("nobody")
    config = ConnectionConfig(api_key="unused", domain="unused", headers=headers)
    with httpx.Client(base_url=agent.url, headers=headers) as envd:
        files = Filesystem(agent.url, None, config, urllib3.PoolManager(headers=headers), envd)
        files.write(str(shared / "mine.txt"), "m")
        assert files.get_info(str(shared / "mine.txt")).owner == "nobody"
        with pytest.raises(Exception, match="permission denied"):
            files.write("/root/not-yours.txt", "x")
        with pytest.raises(Exception, match="permission denied"):
            files.make_dir("/root/not-yours")
    assert not Path("/root/not-yours.txt").exists()


# --- raw HTTP ---------------------------------------------------------------------


class Urls(SandboxSetup):
    """The SDK's own signed-URL builder, pointed at the test agent."""

    def __init__(self, url: str) -> None:
        self._url = url

    connection_config = property(lambda self: None)  # type: ignore[assignment]
    _envd_access_token = property(lambda self: TOKEN)  # type: ignore[assignment]
    envd_api_url = property(lambda self: self._url)  # type: ignore[assignment]
    sandbox_id = property(lambda self: "sbx-test")  # type: ignore[assignment]
    sandbox_domain = property(lambda self: "test")  # type: ignore[assignment]


def multipart_body(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, dict[str, str]]:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += b"--bnd\r\ncontent-disposition: " + disposition.encode() + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--bnd--\r\n", {"Content-Type": "multipart/form-data; boundary=bnd"}


def test_signed_urls(agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = Urls(agent.url)
    target = str(tmp_path / "signed.bin")
    upload = urllib.parse.urlsplit(urls.upload_url(target, user="root", use_signature_expiration=60))
    body, headers = multipart_body(("file", "whatever.bin", b"signed data"))
    status, _, answer = agent.request("POST", f"{upload.path}?{upload.query}", body, headers)
    assert status == 200, answer
    assert json.loads(answer) == {"name": "signed.bin", "type": "file", "path": target}
    download = urllib.parse.urlsplit(urls.download_url(target, user="root"))
    status, headers, data = agent.request("GET", f"{download.path}?{download.query}")
    assert (status, data) == (200, b"signed data")
    assert headers["content-disposition"] == 'attachment; filename="signed.bin"'
    # The signature covers the path: another one is refused.
    status, _, _ = agent.request("GET", f"/download/etc/hostname?{download.query}")
    assert status == 401
    capsys.readouterr()  # the SDK prints what it signs


def test_download_responses(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"abc")
    (tmp_path / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(tmp_path / "fifo")
    auth = sdk_headers()
    status, headers, data = agent.request("GET", f"/download{tmp_path}/f.txt", headers=auth)
    assert (status, data, headers["content-type"], headers["content-length"]) == (
        200,
        b"abc",
        "application/octet-stream",
        "3",
    )
    status, headers, data = agent.request("GET", f"/download{tmp_path}/missing", headers=auth)
    assert (status, headers["content-type"]) == (404, "application/json")
    assert "no such file or directory" in json.loads(data)["message"]
    for name in ("", "fifo"):
        status, _, data = agent.request("GET", f"/download{tmp_path}/{name}", headers=auth)
        assert (status, json.loads(data)["code"]) == (400, "invalid_argument")
    status, _, data = agent.request("GET", "/download/etc/hostname", headers=sdk_headers("no-such-user"))
    assert status == 400 and "no-such-user" in json.loads(data)["message"]
    status, _, data = agent.request("GET", "/download/etc/hostname")
    assert status == 401
    status, headers, data = agent.request("GET", "/download/proc/self/status", headers=auth)
    assert status == 200 and b"Name:" in data


def test_upload_javascript_style_and_errors(agent: Agent, tmp_path: Path) -> None:
    auth = sdk_headers()
    target = str(tmp_path / "js" / "file.txt")
    body, headers = multipart_body(("file", target, b"from js"), ("path", None, target.encode()))
    status, headers_out, answer = agent.request("POST", "/upload", body, {**headers, **auth})
    assert (status, headers_out["content-type"]) == (200, "application/json")
    assert json.loads(answer) == {"name": "file.txt", "type": "file", "path": target}
    assert Path(target).read_bytes() == b"from js"
    status, _, answer = agent.request("POST", "/upload", b"x", {"Content-Type": "text/plain", **auth})
    assert (status, json.loads(answer)["code"]) == (400, "invalid_argument")
    body, headers = multipart_body(("path", None, b"/tmp/x"))
    status, _, answer = agent.request("POST", "/upload", body, {**headers, **auth})
    assert status == 400 and "no file part" in json.loads(answer)["message"]
    status, _, answer = agent.request("POST", "/upload", body[:-9], {**headers, **auth})
    assert (status, json.loads(answer)["code"]) == (400, "invalid_argument")


def test_large_files_stream_both_ways(agent: Agent, tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256(block * 100).hexdigest()
    baseline = agent.peak_rss_kb()
    head = b'--bnd\r\ncontent-disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    tail = b"\r\n--bnd--\r\n"

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(100):
            yield block
        yield tail

    target = tmp_path / "big.bin"
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=120)
    try:
        conn.putrequest("POST", "/upload?path=" + urllib.parse.quote(str(target)))
        for name, value in {**sdk_headers(), "Content-Type": "multipart/form-data; boundary=bnd"}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        conn.endheaders()
        for chunk in body():
            conn.send(chunk)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        conn.close()
    assert target.stat().st_size == size
    with target.open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest

    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=120)
    try:
        conn.request("GET", f"/download{target}", headers=sdk_headers())
        response = conn.getresponse()
        assert (response.status, response.getheader("content-length")) == (200, str(size))
        hasher = hashlib.sha256()
        while chunk := response.read(1024 * 1024):
            hasher.update(chunk)
        assert hasher.hexdigest() == digest
    finally:
        conn.close()
    assert agent.peak_rss_kb() - baseline < 20 * 1024  # neither way held the file in memory
