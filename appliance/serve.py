"""`scalebox serve`: wire the gateway, the control plane and the runtime into one Trio process."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import hypercorn.config
import hypercorn.trio
import trio

import agent
from appliance import log
from appliance.config import ListenAddress, ServeConfig
from appliance.router import make_router
from appliance.sandboxnet import SandboxNet
from appliance.vendor import prepare_vendor_dir
from appliance.workers import WorkerGroup, WorkerSettings, make_waker, reload_tls, run_workers
from controlplane.api.app import ApiSettings, create_app
from controlplane.api.schemas import HostLimits
from controlplane.apikeys import ensure_admin_key, random_id
from controlplane.hooks.webhooks import Deliverer, Webhooks
from controlplane.lifecycle.service import LABEL_INSTANCE, LABEL_MANAGED, LifecycleConfig, SandboxService
from controlplane.lifecycle.states import LIVE, State, wakes_on_traffic
from controlplane.network import nft
from controlplane.network.firewall import Firewall, NoFirewall, remove_tables
from controlplane.network.ruleset import FirewallSpec, bridge_name, network_name, table_name
from controlplane.runtime.base import NetworkInfo, RuntimeFailure
from controlplane.runtime.podman_runtime import PodmanRuntime
from controlplane.runtime.service import available_runtimes, gvisor_service, podman_service
from controlplane.store import Store
from controlplane.tokens import load_or_create_secret
from controlplane.usage.meter import Meter
from gateway.hostports import HostPortForwarder, HostPortLimits, PortedSandbox
from gateway.server import Gateway
from gateway.tls.certs import ensure_certificates, load_user_certificate
from gateway.tls.identity import load_server_tls
from gateway.traffic import TrafficCounter
from gateway.upstream import Pool, UnixAddress


class StartupError(Exception):
    """The appliance cannot start; the message says what to fix."""


def _lock_data_dir(data_dir: Path) -> TextIO:
    handle = open(data_dir / "appliance.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StartupError(f"another appliance is already running with data dir {data_dir}") from None
    return handle


def _instance_id(data_dir: Path) -> str:
    path = data_dir / "instance-id"
    if path.exists():
        return path.read_text().strip()
    value = random_id("", 12)
    path.write_text(value + "\n")
    return value


def _tls(config: ServeConfig) -> tuple[Path, Path, Path | None]:
    """The certificate and key the gateway serves, and our CA's certificate when we made them."""
    if config.tls_cert and config.tls_key:
        try:
            load_user_certificate(config.tls_cert, config.tls_key)
        except ValueError as exc:
            raise StartupError(f"--tls-cert/--tls-key: {exc}") from None
        return config.tls_cert, config.tls_key, None
    paths = ensure_certificates(config.data_dir / "tls", config.domain)
    return paths.cert, paths.key, paths.ca_cert


def _host_limits() -> HostLimits:
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    return HostLimits(max_cpu_count=cpus, max_memory_mb=int(memory_mb), default_cpu_count=1, default_memory_mb=512)


async def _open_listeners(addresses: tuple[ListenAddress, ...]) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    for address in addresses:
        try:
            listeners += await trio.open_tcp_listeners(address.port, host=address.host)
        except OSError as exc:
            where = f"{address.host or '*'}:{address.port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return listeners


def _banner(config: ServeConfig, ca: Path | None, admin_key_path: Path, new_key: bool) -> str:
    port = config.advertised_port
    suffix = "" if port == 443 else f":{port}"
    api = f"https://api.{config.domain}{suffix}"
    ca_text = str(ca) if ca else "(your own certificate)"
    cacert = f"--cacert {ca} " if ca else ""
    return "\n".join(
        [
            "ScaleBox appliance is running.",
            f"  API            {api}/v1",
            f"  Sandboxes      https://<sandbox-id>.{config.domain}{suffix}  and  https://<port>-<sandbox-id>.{config.domain}{suffix}",
            f"  CA certificate {ca_text}",
            f"  Admin API key  {admin_key_path}{'  (created now)' if new_key else ''}",
            "Try it:",
            f'  curl {cacert}-H "X-API-KEY: $(cat {admin_key_path})" {api}/v1/sandboxes',
            "Official Python SDK:",
            f"  export SBX_API_KEY=$(cat {admin_key_path}) SBX_DOMAIN=api.{config.domain}{suffix}/v1"
            + (f" SSL_CERT_FILE={ca}" if ca else ""),
            "",
        ]
    )


async def _firewall(config: ServeConfig, store: Store, network: NetworkInfo, instance_id: str) -> Firewall | None:
    """The firewall of this appliance's network (not yet installed), or None when switched off."""
    table = table_name(instance_id)
    if not config.firewall:
        if nft.available():
            # Rules an earlier run left would keep restricting sandboxes the operator meant to free.
            try:
                await remove_tables(table)
            except RuntimeFailure as exc:
                log.event("firewall.error", error=str(exc))
        log.event("firewall.off", network=network.name)
        return None
    if not nft.available():
        raise StartupError(
            "nft is not installed: install nftables (`make setup` does), or start with --no-firewall"
            " (SCALEBOX_FIREWALL=off), and sandboxes then reach the host, each other and private networks"
        )
    try:
        spec = FirewallSpec(
            table=table,
            interface=network.interface,
            subnet=network.subnet,
            gateway=network.gateway,
            public_ports=tuple(sorted({address.port for address in config.listen})),
        )
    except ValueError as exc:
        raise StartupError(f"Podman network {network.name}: {exc}") from None
    return Firewall(
        spec=spec,
        sandboxes=lambda: store.sandboxes_in(LIVE | {State.TERMINATING}),
        connecting=store.connecting_projects,
    )


def _ported_sandboxes(store: Store) -> list[PortedSandbox]:
    """The live sandboxes as the host port forwarder (gateway/hostports.py) may see them."""
    return [
        PortedSandbox(
            id=rec.id,
            running=rec.state is State.RUNNING,
            ip=rec.ip,
            wakeable=rec.auto_pause and wakes_on_traffic(rec.state, rec.reason),
            host_ports={int(p["host_port"]): int(p["port"]) for p in rec.custom_ports if p.get("host_port")},
        )
        for rec in store.sandboxes_in(LIVE)
    ]


async def _watch_signals(shutdown: trio.Event, cancel: trio.CancelScope, hangup: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                hangup()
            elif not shutdown.is_set():
                log.event("appliance.stopping", signal=signal.Signals(signum).name)
                shutdown.set()
            else:
                # A second signal: stop waiting for the drain.
                cancel.cancel()


async def serve(config: ServeConfig) -> None:
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(f"cannot create data dir {config.data_dir}: {exc.strerror}") from None
    lock = _lock_data_dir(config.data_dir)
    try:
        await _serve_locked(config)
    finally:
        lock.close()


async def _serve_locked(config: ServeConfig) -> None:
    data_dir = config.data_dir
    cert, key, ca = _tls(config)
    tls = load_server_tls(cert, key)
    store = Store(data_dir / "scalebox.db")
    admin_key_path = data_dir / "admin-api-key"
    new_key = ensure_admin_key(store, admin_key_path) is not None
    secret = load_or_create_secret(data_dir / "secret.key")
    listeners = await _open_listeners(config.listen)
    socket_path = config.podman_socket or data_dir / "podman" / "podman.sock"
    api_socket = data_dir / "api.sock"
    api_socket.unlink(missing_ok=True)

    limits = _host_limits()

    runtimes = await available_runtimes()
    log.event("appliance.runtimes", available=sorted(runtimes))
    try:
        async with (
            podman_service(socket_path) as podman_url,
            gvisor_service(socket_path, runtimes) as gvisor_url,
        ):
            runtime = PodmanRuntime(podman_url, gvisor_url=gvisor_url)
            instance_id = _instance_id(data_dir)
            network = await runtime.ensure_network(
                network_name(instance_id),
                interface=bridge_name(instance_id),
                labels={LABEL_MANAGED: "true", LABEL_INSTANCE: instance_id},
            )
            firewall = await _firewall(config, store, network, instance_id)
            service = SandboxService(
                store=store,
                runtime=runtime,
                network_policy=firewall or NoFirewall(),
                config=LifecycleConfig(
                    instance_id=instance_id,
                    agent_dir=Path(agent.__file__).parent,
                    vendor_dir=prepare_vendor_dir(data_dir / "agent-vendor"),
                    access_secret=secret,
                    # Pooled sandboxes get the API's defaults: only such creates can take one.
                    warm_pool=config.warm_pool,
                    pool_cpu_count=limits.default_cpu_count,
                    pool_memory_mb=limits.default_memory_mb,
                    host_ports=config.host_ports,
                    network=network.name,
                    dns=(network.gateway,),
                    runtimes=runtimes,
                ),
            )
            sandboxnet = SandboxNet(
                gateway=network.gateway,
                sandboxes=lambda: store.sandboxes_in(LIVE),
                version=lambda: store.sandboxes_version,
                upstream=config.dns_upstream,
                proxy_port=None if firewall is None else firewall.spec.proxy_port,
            )
            await service.reconcile()
            if firewall is not None:
                # After reconcile: the rules are made from the rows it repaired.
                await firewall.install()
            webhooks = Webhooks(store.hooks)
            deliverer = Deliverer(webhooks, retry_scale=config.webhook_retry_scale)
            # Usage metering: this process's gateway counts traffic straight into the meter.
            traffic = TrafficCounter()
            meter = Meter(service=service, usage=store.usage, interval=config.meter_interval)
            meter.pull_traffic_from(traffic.take)
            app = create_app(
                service=service,
                store=store,
                webhooks=webhooks,
                meter=meter,
                settings=ApiSettings(
                    domain=config.domain,
                    public_port=config.advertised_port,
                    secret=secret,
                    limits=limits,
                    prices=config.prices,
                ),
            )

            router = make_router(
                domain=config.domain,
                secret=secret,
                api_address=UnixAddress(str(api_socket)),
                record=store.get_sandbox,
                version=lambda: store.sandboxes_version,
            )
            waker = make_waker(api_socket=str(api_socket), secret=secret, timeout=config.wake_timeout, worker=0)
            gateway = Gateway(
                router=router.http, streams=router.stream, tls=tls, pool=Pool(), waker=waker, traffic=traffic
            )
            workers = WorkerGroup()

            def hangup() -> None:
                """SIGHUP: reload the certificate here, then in every worker."""
                log.event("appliance.reloading", signal="SIGHUP")
                try:
                    # Our own certificate is renewed here if it is close to expiry.
                    _tls(config)
                except (StartupError, ValueError, OSError) as exc:
                    log.event("gateway.tls_reload_failed", worker=0, error=str(exc))
                else:
                    reload_tls(gateway, cert, key)
                workers.send_signal(signal.SIGHUP)

            hyper = hypercorn.config.Config()
            hyper.bind = [f"unix:{api_socket}"]
            hyper.accesslog = None
            hyper.errorlog = None
            hyper.graceful_timeout = gateway.limits.drain_timeout

            shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope, hangup)
                if firewall is not None:
                    nursery.start_soon(firewall.watch)
                try:
                    await nursery.start(sandboxnet.run)
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen on the sandbox network's gateway {network.gateway} (port 53 for the"
                        f" sandboxes' resolver, {firewall.spec.proxy_port if firewall else '-'} for the egress"
                        f" proxy): {exc.strerror or exc}. An older Podman network {network.name} with"
                        " aardvark-dns may hold it: remove the appliance's sandboxes, then"
                        f" `podman network rm {network.name}`"
                    ) from None
                await nursery.start(service.run)
                await nursery.start(deliverer.run)
                await nursery.start(meter.run)
                api_stopped = trio.Event()

                async def run_api() -> None:
                    try:
                        await hypercorn.trio.serve(app, hyper, shutdown_trigger=shutdown.wait)
                    finally:
                        api_stopped.set()

                nursery.start_soon(run_api)
                await nursery.start(gateway.serve, listeners, shutdown)
                if config.host_ports is not None:
                    # Here only, not in the workers: one listener per host port, and this
                    # process writes the sandbox table, so it sees each change first.
                    forwarder = HostPortForwarder(
                        sandboxes=lambda: _ported_sandboxes(store),
                        version=lambda: store.sandboxes_version,
                        hosts=[address.host for address in config.listen],
                        waker=waker,
                        traffic=traffic,
                        limits=HostPortLimits(
                            tunnel_idle_timeout=gateway.limits.http.tunnel_idle_timeout,
                            connect_timeout=gateway.pool.connect_timeout,
                            max_per_address=gateway.limits.connections.max_per_address,
                        ),
                    )
                    await nursery.start(forwarder.run)
                workers_stopped = trio.Event()

                async def run_gateway_workers() -> None:
                    try:
                        await run_workers(
                            [
                                WorkerSettings(
                                    index=i,
                                    listen_fds=[lst.socket.fileno() for lst in listeners],
                                    database=str(data_dir / "scalebox.db"),
                                    secret_path=str(data_dir / "secret.key"),
                                    api_socket=str(api_socket),
                                    domain=config.domain,
                                    tls_cert=str(cert),
                                    tls_key=str(key),
                                    drain_timeout=gateway.limits.drain_timeout,
                                    parent_pid=os.getpid(),
                                    wake_timeout=config.wake_timeout,
                                )
                                for i in range(1, config.gateway_processes)
                            ],
                            shutdown,
                            workers,
                        )
                    finally:
                        workers_stopped.set()

                nursery.start_soon(run_gateway_workers)
                log.event(
                    "appliance.ready", domain=config.domain, ports=[lst.socket.getsockname()[1] for lst in listeners]
                )
                sys.stdout.write(_banner(config, ca, admin_key_path, new_key))
                sys.stdout.flush()
                await shutdown.wait()
                # gateway.serve returns once drained; then the API and the reaper stop.
                with trio.move_on_after(gateway.limits.drain_timeout + 2):
                    await api_stopped.wait()
                    await workers_stopped.wait()
                # A last pass: the usage and traffic since the previous one are kept.
                with trio.move_on_after(5):
                    await meter.sample_once()
                nursery.cancel_scope.cancel()
            # A clean stop only: after a crash the rules stay (see Firewall.stop).
            if firewall is not None:
                await firewall.stop()
    except RuntimeFailure as exc:
        raise StartupError(str(exc)) from None
    finally:
        store.close()
    log.event("appliance.stopped")
