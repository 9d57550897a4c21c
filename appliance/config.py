"""`scalebox serve` settings: parsed from flags and environment into one frozen value."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.templates import BUILTIN
from controlplane.usage.meter import DEFAULT_INTERVAL as DEFAULT_METER_INTERVAL
from controlplane.usage.prices import PriceTable, load_prices
from gateway.tls.certs import normalise_domain
from gateway.wake import DEFAULT_WAKE_TIMEOUT

DEFAULT_DOMAIN = "sbx.localhost"
DEFAULT_LISTEN = "8443"
DEFAULT_DATA_DIR = "/var/lib/scalebox"
# Each pooled sandbox is a running container holding memory: a bound keeps a typo
# (`base=1000`) from exhausting the machine.
MAX_WARM_POOL = 64
MAX_GATEWAY_PROCESSES = 8
MAX_WAKE_TIMEOUT = 300.0
# Plain TCP host ports for clients that cannot do TLS (gateway/hostports.py); `off`
# switches them off. Above Linux's ephemeral ports (32768-60999 by default), which
# outgoing connections take: a client socket there would stop a host port binding.
DEFAULT_HOST_PORTS = "61000-61099"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ListenAddress:
    """host None means every interface, IPv4 and IPv6."""

    host: str | None
    port: int


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    domain: str
    listen: tuple[ListenAddress, ...]
    data_dir: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The port users put in URLs; defaults to the (first) listening port.
    public_port: int | None = None
    podman_socket: Path | None = None
    # Template id -> sandboxes kept ready to serve creates at once; empty: no pool.
    warm_pool: Mapping[str, int] = field(default_factory=dict)
    # Processes serving the gateway port, this one included (appliance/workers.py).
    gateway_processes: int = 1
    # Seconds a request for a sandbox auto_pause put to sleep is held while it is resumed.
    wake_timeout: float = DEFAULT_WAKE_TIMEOUT
    # Host ports a tcp or tls port may be forwarded from, inclusive; None: switched off.
    host_ports: tuple[int, int] | None = None
    # The appliance's nftables rules isolating sandboxes (controlplane/network/); off for
    # machines without nftables, and then sandboxes are not isolated from the host.
    firewall: bool = True
    # Where the sandboxes' resolver sends the queries it lets through (host, port); None:
    # the host's first IPv4 name server in /etc/resolv.conf.
    dns_upstream: tuple[str, int] | None = None
    # Multiplies the webhook retry delays (10 s, 1 min, ...): tests set it small through
    # SCALEBOX_WEBHOOK_RETRY_SCALE; not an option, nobody else should want it.
    webhook_retry_scale: float = 1.0
    # What usage costs (controlplane/usage/prices.py); all free unless --prices names a file.
    prices: PriceTable = field(default_factory=PriceTable)
    # Seconds between two passes of the usage meter (controlplane/usage/meter.py).
    meter_interval: float = DEFAULT_METER_INTERVAL

    @property
    def advertised_port(self) -> int:
        return self.public_port or self.listen[0].port


def parse_listen(text: str) -> tuple[ListenAddress, ...]:
    """`8443`, `:8443`, `127.0.0.1:8443`, `[::1]:8443`, comma-separated."""
    out: list[ListenAddress] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host: str | None
        if part.startswith("["):
            end = part.find("]:")
            if end < 0:
                raise ConfigError(f"--listen {part!r}: write IPv6 as [addr]:port")
            host, port_text = part[1:end], part[end + 2 :]
        elif ":" in part:
            host, port_text = part.rsplit(":", 1)
            host = host or None
        else:
            host, port_text = None, part
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"--listen {part!r}: the port must be 1-65535")
        out.append(ListenAddress(host, int(port_text)))
    if not out:
        raise ConfigError("--listen needs at least one address")
    return tuple(out)


def parse_warm_pool(text: str) -> dict[str, int]:
    """`base=4,code-interpreter=2` -> {"base": 4, "code-interpreter": 2}; empty -> no pool."""
    sizes: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, count = part.partition("=")
        name, count = name.strip(), count.strip()
        if not sep or not name:
            raise ConfigError(f"--warm-pool {part!r}: write TEMPLATE=N, e.g. base=4")
        template = BUILTIN.get(name) or BUILTIN.get(name.removeprefix("tpl-"))
        if template is None:
            known = ", ".join(sorted(BUILTIN))
            raise ConfigError(f"--warm-pool {part!r}: no template {name!r}; available: {known}")
        if not (count.isascii() and count.isdigit()) or int(count) > MAX_WARM_POOL:
            raise ConfigError(f"--warm-pool {part!r}: N must be a whole number from 0 to {MAX_WARM_POOL}")
        if template.id in sizes:
            raise ConfigError(f"--warm-pool: template {template.id!r} is given twice")
        sizes[template.id] = int(count)
    return sizes


def parse_host_ports(text: str, listen: tuple[ListenAddress, ...] = ()) -> tuple[int, int] | None:
    """`40000-40099` -> (40000, 40099); `off` or empty -> None (no host ports)."""
    text = text.strip()
    if text.lower() in ("", "off"):
        return None
    low_text, sep, high_text = text.partition("-")
    low_text, high_text = low_text.strip(), high_text.strip()
    if not (sep and low_text.isascii() and low_text.isdigit() and high_text.isascii() and high_text.isdigit()):
        raise ConfigError(f"--host-ports {text[:40]!r}: write LOW-HIGH, e.g. {DEFAULT_HOST_PORTS}, or off")
    low, high = int(low_text), int(high_text)
    # Below 1024 are the well-known ports, which services on the host expect to own.
    if not 1024 <= low <= high <= 65535:
        raise ConfigError(f"--host-ports {text!r}: need 1024 <= LOW <= HIGH <= 65535")
    clash = sorted({a.port for a in listen if low <= a.port <= high})
    if clash:
        raise ConfigError(
            f"--host-ports {text!r} contains the gateway's listening port {clash[0]}; pick a range without it"
        )
    return low, high


def parse_firewall(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ConfigError(f"SCALEBOX_FIREWALL {text[:20]!r}: on or off")
    return value == "on"


def parse_retry_scale(text: str) -> float:
    if not text.strip():
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.001 <= value <= 1000:
        raise ConfigError(f"SCALEBOX_WEBHOOK_RETRY_SCALE {text[:20]!r}: a number from 0.001 to 1000")
    return value


def parse_dns_upstream(text: str) -> tuple[str, int] | None:
    """`HOST` or `HOST:PORT`, HOST an IPv4 address; empty: None (the host's resolv.conf)."""
    value = text.strip()
    if not value:
        return None
    host, _, port_text = value.partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(f"--dns-upstream {text[:40]!r}: an IPv4 address, optionally :PORT (10.0.0.2:53)") from None
    if not port_text:
        return host, 53
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ConfigError(f"--dns-upstream {text[:40]!r}: the port must be 1-65535")
    return host, int(port_text)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--prices",
        default=env("SCALEBOX_PRICES", ""),
        metavar="FILE",
        help="price table for usage and invoices, JSON or TOML: currency, cpu_hour, memory_gb_hour,"
        " storage_gb_month, traffic_gb (env SCALEBOX_PRICES; default: everything free, USD)",
    )
    parser.add_argument(
        "--meter-interval",
        default=env("SCALEBOX_METER_INTERVAL", ""),
        metavar="SECONDS",
        help=f"seconds between usage samples of running sandboxes (env SCALEBOX_METER_INTERVAL;"
        f" default {DEFAULT_METER_INTERVAL:g})",
    )
    parser.add_argument(
        "--dns-upstream",
        default=env("SCALEBOX_DNS_UPSTREAM", ""),
        metavar="IP[:PORT]",
        help="the name server the sandboxes' resolver forwards allowed queries to"
        " (env SCALEBOX_DNS_UPSTREAM; default: the host's first IPv4 nameserver in /etc/resolv.conf)",
    )
    parser.add_argument(
        "--no-firewall",
        dest="firewall",
        action="store_const",
        const="off",
        default=env("SCALEBOX_FIREWALL", "on"),
        help="do not install the nftables rules that keep sandboxes from the host, each other and"
        " private networks, for machines without nftables (env SCALEBOX_FIREWALL=off)",
    )
    parser.add_argument(
        "--wake-timeout",
        default=env("SCALEBOX_WAKE_TIMEOUT", ""),
        metavar="SECONDS",
        help="how long a request for a sandbox that auto_pause paused is held while the sandbox is"
        f" resumed (env SCALEBOX_WAKE_TIMEOUT; default {DEFAULT_WAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--gateway-processes",
        default=env("SCALEBOX_GATEWAY_PROCESSES", ""),
        metavar="N",
        help=f"processes serving the gateway port, this one included (env SCALEBOX_GATEWAY_PROCESSES;"
        f" default: one per CPU, at most {MAX_GATEWAY_PROCESSES})",
    )
    parser.add_argument(
        "--domain",
        default=env("SCALEBOX_DOMAIN", DEFAULT_DOMAIN),
        help="base domain D: the API is api.D, sandboxes <id>.D (env SCALEBOX_DOMAIN)",
    )
    parser.add_argument(
        "--listen",
        default=env("SCALEBOX_LISTEN", DEFAULT_LISTEN),
        help="[host:]port[,...] for TLS and plain HTTP alike (env SCALEBOX_LISTEN)",
    )
    parser.add_argument(
        "--data-dir",
        default=env("SCALEBOX_DATA_DIR", DEFAULT_DATA_DIR),
        help="database, keys and certificates (env SCALEBOX_DATA_DIR)",
    )
    parser.add_argument(
        "--tls-cert",
        default=env("SCALEBOX_TLS_CERT"),
        help="your own certificate for D and *.D, PEM (env SCALEBOX_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", default=env("SCALEBOX_TLS_KEY"), help="its private key, PEM (env SCALEBOX_TLS_KEY)"
    )
    parser.add_argument(
        "--public-port",
        type=int,
        default=env("SCALEBOX_PUBLIC_PORT"),
        help="port shown in sandbox domains when a proxy in front changes it",
    )
    parser.add_argument(
        "--podman-socket",
        default=env("SCALEBOX_PODMAN_SOCKET"),
        help="Podman API socket to use or start (default <data-dir>/podman/podman.sock)",
    )
    parser.add_argument(
        "--warm-pool",
        default=env("SCALEBOX_WARM_POOL", ""),
        metavar="TEMPLATE=N[,TEMPLATE=N]",
        help="keep N sandboxes of a template started, served at once to creates with the default"
        " cpu_count and memory_mb and no env_vars (env SCALEBOX_WARM_POOL; default: none)",
    )
    parser.add_argument(
        "--host-ports",
        default=env("SCALEBOX_HOST_PORTS", DEFAULT_HOST_PORTS),
        metavar="LOW-HIGH",
        help="host ports that tcp and tls sandbox ports may ask for, forwarded as plain TCP"
        f" (env SCALEBOX_HOST_PORTS; default {DEFAULT_HOST_PORTS}; off: none)",
    )


def parse_wake_timeout(text: str) -> float:
    if not text.strip():
        return DEFAULT_WAKE_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    # A client holds its request open meanwhile: minutes are past what any will wait.
    if not 0 < seconds <= MAX_WAKE_TIMEOUT:
        raise ConfigError(f"--wake-timeout {text[:20]!r}: seconds, more than 0 and at most {MAX_WAKE_TIMEOUT:g}")
    return seconds


def default_gateway_processes() -> int:
    """One per CPU, at most MAX_GATEWAY_PROCESSES: the gateway is CPU-bound Python."""
    return max(1, min(os.cpu_count() or 1, MAX_GATEWAY_PROCESSES))


def parse_prices(text: str) -> PriceTable:
    """The price table in the file `text` names (JSON, or TOML by its .toml suffix); empty: all free."""
    if not text.strip():
        return PriceTable()
    try:
        return load_prices(Path(text))
    except ValueError as exc:
        raise ConfigError(f"--prices: {exc}") from None


def parse_meter_interval(text: str) -> float:
    if not text.strip():
        return DEFAULT_METER_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    # Below a second the Podman stats calls would be most of what the appliance does.
    if not 1 <= seconds <= 3600:
        raise ConfigError(f"--meter-interval {text[:20]!r}: seconds, from 1 to 3600")
    return seconds


def parse_gateway_processes(text: str) -> int:
    if not text:
        return default_gateway_processes()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_GATEWAY_PROCESSES):
        raise ConfigError(f"--gateway-processes {text[:20]!r}: a number from 1 to {MAX_GATEWAY_PROCESSES}")
    return int(text)


def config_from_args(ns: argparse.Namespace) -> ServeConfig:
    try:
        domain = normalise_domain(ns.domain)
    except ValueError as exc:
        raise ConfigError(f"--domain: {exc}") from None
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    public_port = int(ns.public_port) if ns.public_port else None
    if public_port is not None and not 0 < public_port < 65536:
        raise ConfigError("--public-port must be 1-65535")
    listen = parse_listen(str(ns.listen))
    return ServeConfig(
        domain=domain,
        listen=listen,
        data_dir=Path(ns.data_dir).absolute(),
        tls_cert=Path(ns.tls_cert) if ns.tls_cert else None,
        tls_key=Path(ns.tls_key) if ns.tls_key else None,
        public_port=public_port,
        podman_socket=Path(ns.podman_socket) if ns.podman_socket else None,
        warm_pool=parse_warm_pool(str(ns.warm_pool or "")),
        gateway_processes=parse_gateway_processes(str(ns.gateway_processes or "")),
        wake_timeout=parse_wake_timeout(str(ns.wake_timeout or "")),
        host_ports=parse_host_ports(str(ns.host_ports or ""), listen),
        firewall=parse_firewall(str(ns.firewall)),
        dns_upstream=parse_dns_upstream(str(ns.dns_upstream or "")),
        prices=parse_prices(str(ns.prices or "")),
        meter_interval=parse_meter_interval(str(ns.meter_interval or "")),
        webhook_retry_scale=parse_retry_scale(os.environ.get("SCALEBOX_WEBHOOK_RETRY_SCALE", "")),
    )
