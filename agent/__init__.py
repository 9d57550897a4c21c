"""The in-sandbox agent: runs as PID 1 inside every sandbox container.

It runs on the container's own ``python3`` (3.9 or newer), so it uses the
standard library only and imports little: idle memory is paid per sandbox.

    __main__.py  entry point for ``python3 /opt/scalebox/agent`` and ``python3 -m agent``
    main.py      wiring: config, signals, start command, HTTP server, shutdown
    config.py    SCALEBOX_* environment variables parsed into a Config
    init.py      PID 1 duties: reaping every child, signal plumbing
    startcmd.py  the sandbox's start command in its own process group
    http1.py     HTTP/1.1 wire format (pure: bytes in, requests out)
    server.py    asyncio HTTP/1.1 server with deadlines and a routes table
    routes.py    the agent's HTTP routes
    log.py       one JSON line per event on stderr
"""
