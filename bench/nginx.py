"""nginx as the reference reverse proxy: same certificate, same upstream.

Started from a config written to a temporary prefix (nothing under /etc/nginx is
read or written), in the foreground as a child of this process, and stopped by
its pid. `worker_processes auto` (one worker per core), as nginx is deployed:
the baseline is nginx as people run it, whatever the gateway's own process model.

`Nginx` is the HTTP reverse proxy: upstream connections are kept alive and
WebSocket upgrades are passed through. `NginxStream` is nginx's stream module
(raw TCP): TLS ended by nginx on one port, TLS passed through on another, routed
by the ClientHello's SNI (`ssl_preread`), as the gateway routes its tcp and tls
ports. Debian builds the stream module as a dynamic module in a package of its
own (libnginx-mod-stream); `stream_directive` finds it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.procs import children

MISSING = "nginx not installed: apt-get install nginx"
STREAM_MISSING = "nginx has no stream module (with ssl and ssl_preread): apt-get install libnginx-mod-stream"

WORKERS = "auto"

CONFIG = """\
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}
    upstream sandbox {{
        server {upstream};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{plain_port};
        listen [::1]:{plain_port};
        listen 127.0.0.1:{tls_port} ssl;
        listen [::1]:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
        location / {{
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


# Stream defaults are kept (proxy_buffer_size 16k, tcp_nodelay on): nginx as deployed.
STREAM_CONFIG = """\
{load_module}
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
stream {{
    upstream sandbox_tcp {{
        server {tcp_upstream};
    }}
    upstream sandbox_tls {{
        server {tls_upstream};
    }}
    # Passthrough: the upstream is chosen by the SNI of the ClientHello, which nginx
    # peeks at and passes on untouched; an unknown name goes nowhere.
    map $ssl_preread_server_name $by_sni {{
        {tls_name} sandbox_tls;
        default "";
    }}
    server {{
        listen 127.0.0.1:{tcp_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass sandbox_tcp;
    }}
    server {{
        listen 127.0.0.1:{tls_port};
        ssl_preread on;
        proxy_pass $by_sni;
    }}
}}
"""


def nginx_path() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def stream_directive(build: str, exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """What a config needs for the stream module, from `nginx -V`'s output: "" when it is
    built in, a `load_module` line when it is a dynamic module that is installed, None
    when there is none (or it lacks TLS or ssl_preread)."""
    args = build.split()
    if not {"--with-stream_ssl_module", "--with-stream_ssl_preread_module"} <= set(args):
        return None
    if "--with-stream" in args:
        return ""
    if "--with-stream=dynamic" not in args:
        return None
    modules = next((a.split("=", 1)[1] for a in args if a.startswith("--modules-path=")), "/usr/lib/nginx/modules")
    module = f"{modules}/ngx_stream_module.so"
    return f"load_module {module};" if exists(module) else None


def nginx_stream() -> str | None:
    """`stream_directive` of the installed nginx; None without nginx."""
    binary = nginx_path()
    if binary is None:
        return None
    try:
        done = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return stream_directive(done.stdout + done.stderr)


class Nginx:
    def __init__(self, *, upstream: str, plain_port: int, tls_port: int, cert: Path, key: Path) -> None:
        self._setup(lambda prefix: CONFIG.format(
            prefix=prefix,
            workers=WORKERS,
            upstream=upstream,
            plain_port=plain_port,
            tls_port=tls_port,
            cert=cert,
            key=key,
        ))  # fmt: skip
        self.plain_port, self.tls_port = plain_port, tls_port

    def _setup(self, config: Callable[[Path], str]) -> None:
        """A fresh prefix and the config written into it (not started yet)."""
        binary = nginx_path()
        if binary is None:
            raise FileNotFoundError(MISSING)
        self.binary = binary
        self.prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-", dir="/tmp"))
        self.config_text = config(self.prefix)
        self.config = self.prefix / "nginx.conf"
        self.config.write_text(self.config_text)
        self.process: subprocess.Popen[bytes] | None = None
        self.workers: list[int] = []

    def start(self, timeout: float = 10.0) -> None:
        cmd = [self.binary, "-p", str(self.prefix), "-c", str(self.config)]
        check = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected its config: {check.stderr.strip()}")
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=1).close()
                self.workers = children(self.process.pid)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not listen within {timeout} s: {self.error_log()}") from None
                time.sleep(0.05)

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text()[-2000:]
        except OSError:
            return "(no error log)"

    @property
    def pids(self) -> list[int]:
        """The master and its workers (for CPU accounting)."""
        if self.process is None:
            return []
        self.workers = children(self.process.pid) or self.workers
        return [self.process.pid, *self.workers]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # Workers outlive a killed master: end any still there, by pid.
        for pid in self.workers:
            with contextlib.suppress(OSError):
                if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NginxStream(Nginx):
    """nginx's stream module: `tcp_port` ends TLS (the gateway's certificate) and passes
    plaintext to `tcp_upstream`; `tls_port` passes TLS through to `tls_upstream` when the
    SNI is `tls_name`. `start` waits for `tls_port`."""

    def __init__(
        self,
        *,
        load_module: str,
        tcp_upstream: str,
        tls_upstream: str,
        tls_name: str,
        tcp_port: int,
        tls_port: int,
        cert: Path,
        key: Path,
    ) -> None:
        self._setup(lambda prefix: STREAM_CONFIG.format(
            load_module=load_module,
            prefix=prefix,
            workers=WORKERS,
            tcp_upstream=tcp_upstream,
            tls_upstream=tls_upstream,
            tls_name=tls_name,
            tcp_port=tcp_port,
            tls_port=tls_port,
            cert=cert,
            key=key,
        ))  # fmt: skip
        self.tcp_port, self.tls_port = tcp_port, tls_port
