"""bench.tcp: its service's protocol, the summaries and ratios, the table and the headline rows;
bench.nginx: finding the stream module."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from bench.__main__ import _clean
from bench.nginx import STREAM_CONFIG, stream_directive
from bench.report import tcp_table
from bench.results import NOT_MEASURED, Row, rows
from bench.tcp import TcpPlan, TcpResult, summarize
from bench.tcpupstream import DONE, handle, parse_command

# -- the service (bench/tcpupstream.py runs in the sandbox; its protocol is tested here) --


def test_commands() -> None:
    assert parse_command(b"echo") == ("echo", 0)
    assert parse_command(b"send 1048576\r") == ("send", 1 << 20)
    assert parse_command(b"sink 5") == ("sink", 5)
    for bad in (b"", b"send", b"send -1", b"sink x", b"echo 3", b"GET / HTTP/1.1"):
        with pytest.raises(ValueError):
            parse_command(bad)


@pytest.fixture
def service() -> Iterator[socket.socket]:
    """A client connected over loopback to one connection of the service."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        served, _ = listener.accept()
    worker = threading.Thread(target=handle, args=(served, None), daemon=True)
    worker.start()
    try:
        yield client
    finally:
        client.close()
        worker.join(5)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n and (more := sock.recv(n - len(data))):
        data += more
    return data


def test_send_then_sink_with_bytes_in_the_command_packet_then_echo(service: socket.socket) -> None:
    service.sendall(b"send 300000\n")
    assert _read(service, 300000) == b"x" * 300000
    # The first bytes of the upload arrive with the command line; the next command after them.
    service.sendall(b"sink 10\n0123456789echo\nhello")
    assert _read(service, len(DONE)) == DONE
    assert _read(service, 5) == b"hello"
    service.sendall(b"again")
    assert _read(service, 5) == b"again"


def test_a_bad_command_ends_the_connection(service: socket.socket) -> None:
    service.sendall(b"PING\n")
    assert service.recv(10) == b""


# -- summaries and ratios -------------------------------------------------------------------

NAMES = ["direct tcp", "nginx tcp", "gateway tcp", "direct tls", "nginx tls", "gateway tls"]


def _result() -> TcpResult:
    r = TcpResult(targets=NAMES, plan=TcpPlan(rtt_blocks=2, rtt_block=3, transfer_rounds=2, transfer_mib=64))
    r.rtt_ms = {
        "direct tcp": [[0.05, 0.05, 0.05], [0.06, 0.06, 0.06]],
        "nginx tcp": [[0.15, 0.15, 0.15], [0.16, 0.16, 0.16]],
        "gateway tcp": [[0.30, 0.30, 0.90], [0.36, 0.36, 0.36]],  # block medians 0.30, 0.36
        "direct tls": [[0.1, 0.1, 0.1]] * 2,
        "nginx tls": [[0.15, 0.15, 0.15]] * 2,
        "gateway tls": [[0.3, 0.3, 0.3]] * 2,
    }
    r.setup_ms = {"nginx tcp": [4.0, 5.0], "gateway tcp": [8.0, 5.0], "nginx tls": [4.0], "gateway tls": [6.0]}
    r.download_mb_s = {"direct tcp": [2000.0, 2200.0], "nginx tcp": [400.0, 300.0], "gateway tcp": [200.0, 300.0]}
    r.upload_mb_s = {"nginx tcp": [400.0, 400.0], "gateway tcp": [100.0, 120.0]}
    r.proxy_cpu_s_per_gb = {"nginx tcp": [2.0, 2.0], "gateway tcp": [6.0, 6.0]}
    r.client_busy = {"direct tcp": [0.95, 0.97], "nginx tcp": [0.4, 0.5]}
    return r


def test_ratios_pair_rounds_and_blocks() -> None:
    summ = summarize(_result())
    tcp = summ["ratios"]["tcp"]
    assert tcp["rtt_p50"] == pytest.approx(2.125)  # median of 0.30/0.15 and 0.36/0.16
    assert tcp["setup_p50"] == pytest.approx(1.5)  # median of 2.0 and 1.0
    assert tcp["download"] == pytest.approx(0.75)  # median of 0.5 and 1.0
    assert tcp["upload"] == pytest.approx(0.275)
    assert tcp["proxy_cpu_per_gb"] == pytest.approx(3.0)
    assert tcp["added_rtt_p50_us"]["gateway tcp"] == pytest.approx(275)  # median of 250 and 300
    assert tcp["added_rtt_p50_us"]["nginx tcp"] == pytest.approx(100)
    per = summ["targets"]["gateway tcp"]
    assert per["rtt_p50_ms"] == pytest.approx(0.36) and per["rtt_p99_ms"] == pytest.approx(0.90)
    assert per["rtt_n"] == 6 and per["download_mb_s"] == pytest.approx(250)
    assert summ["ratios"]["tls"]["rtt_p50"] == pytest.approx(2.0)
    assert summ["ratios"]["tls"]["download"] is None  # no transfer measured there
    assert summ["client_bound"] == ["direct tcp"]


def test_without_nginx_there_are_no_ratios() -> None:
    r = _result()
    r.targets = [n for n in NAMES if not n.startswith("nginx")]
    summ = summarize(r)
    assert summ["ratios"] == {}
    assert "nginx tcp" not in summ["targets"]


def test_json_has_no_nan() -> None:
    data = _clean(TcpResult(targets=NAMES).to_json())
    json.dumps(data, allow_nan=False)
    assert data["summary"]["targets"]["gateway tcp"]["rtt_p50_ms"] is None


# -- the table and the headline ---------------------------------------------------------------


def test_table_shows_every_target_and_the_ratios() -> None:
    r = _result()
    r.notes.append("a note")
    r.failed.append("transfer: boom")
    text = tcp_table(_clean(r.to_json()))
    lines = text.splitlines()
    assert all(name in lines[1] for name in NAMES)
    row = next(line for line in lines if line.strip().startswith("download MB/s (64 MiB x 2)"))
    assert row.split()[-6:] == ["2100", "350", "250", "-", "-", "-"]
    ratio = next(line for line in lines if line.strip().startswith("round trip p50 "))
    assert ratio.split()[-2:] == ["2.12x", "2.00x"]
    added = next(line for line in lines if "added over direct" in line)
    assert "275 / 100" in added
    assert "transfers of direct tcp" in text
    assert "  note: a note" in lines and "  FAILED: transfer: boom" in lines


def test_table_without_nginx_or_numbers() -> None:
    text = tcp_table(_clean(TcpResult(targets=["direct tcp", "gateway tcp"]).to_json()))
    assert "gateway / nginx" not in text
    assert "nginx tcp" not in text.splitlines()[1]


def _by_metric(table: list[Row], start: str) -> Row:
    return next(r for r in table if r.metric.startswith(start))


def test_headline_rows() -> None:
    table = rows({"tcp": _clean(_result().to_json())})
    down = _by_metric(table, "raw TCP throughput behind TLS, download 64 MiB")
    assert (down.ours, down.baseline, down.ratio, down.target, down.met) == (
        "250 MB/s",
        "350 MB/s",
        "0.75x",
        ">= 0.9x",
        "no",
    )
    assert _by_metric(table, "raw TCP throughput behind TLS, upload").met == "no"
    passthrough = _by_metric(table, "TLS passthrough throughput, download")
    assert (passthrough.ours, passthrough.met) == ("-", "-")
    rtt = _by_metric(table, "TCP behind TLS echo round trip p50")
    assert (rtt.ours, rtt.baseline, rtt.ratio) == ("0.36 ms", "0.15 ms", "2.12x")
    assert _by_metric(table, "TLS passthrough new connection + first echo p50").ratio == "1.50x"


def test_headline_without_the_phase() -> None:
    row = _by_metric(rows({}), "raw TCP throughput behind TLS, download")
    assert (row.ours, row.met) == ("-", NOT_MEASURED)


# -- nginx's stream module -------------------------------------------------------------------

DEBIAN = (
    "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.11\nconfigure arguments: --prefix=/usr/share/nginx"
    " --modules-path=/usr/lib/nginx/modules --with-stream=dynamic --with-stream_ssl_module"
    " --with-stream_ssl_preread_module --with-http_ssl_module"
)


def test_stream_module_dynamic_static_or_missing() -> None:
    found = stream_directive(DEBIAN, exists=lambda path: path == "/usr/lib/nginx/modules/ngx_stream_module.so")
    assert found == "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
    assert stream_directive(DEBIAN, exists=lambda _: False) is None  # libnginx-mod-stream not installed
    static = DEBIAN.replace("--with-stream=dynamic", "--with-stream")
    assert stream_directive(static, exists=lambda _: False) == ""
    assert stream_directive(DEBIAN.replace(" --with-stream_ssl_preread_module", ""), exists=lambda _: True) is None
    assert stream_directive("nginx version: nginx/1.22.1", exists=lambda _: True) is None


def test_stream_config_routes_passthrough_by_sni() -> None:
    text = STREAM_CONFIG.format(
        load_module="",
        prefix="/tmp/p",
        workers="auto",
        tcp_upstream="10.88.0.2:9000",
        tls_upstream="10.88.0.2:9443",
        tls_name="9443-sbx-x.sbx.localhost",
        tcp_port=1,
        tls_port=2,
        cert="/c",
        key="/k",
    )
    assert "9443-sbx-x.sbx.localhost sandbox_tls;" in text
    assert "ssl_preread on;" in text and "listen 127.0.0.1:1 ssl;" in text
