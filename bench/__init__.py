"""Benchmarks of the appliance, side by side with raw Podman and nginx in one run.

`make bench` (`python -m bench --results bench/RESULTS.md`) runs every phase and
writes issue 6's targets, met or not, to bench/RESULTS.md; `python -m bench
--quick` is a smoke run. Every number is reported beside its baseline measured
in the same run, in alternating order, because the machine is shared and noisy.

    create     create-to-ready vs raw podman create+start      bench.create
    gateway    HTTP/TLS req/s, added latency, TLS handshakes   bench.gateway (on bench.rig)
    websocket  WebSocket echo messages/s                       bench.wsecho (on bench.rig)
    tcp        TCP behind TLS, TLS passthrough (nginx stream)  bench.tcp (on bench.tcprig)
    agent      commands.run("true"), transfers, via the SDK    bench.agent
    memory     memory per idle sandbox, 100 idle               bench.memory
    warm       create-to-ready with a warm pool                bench.warmpool
"""
