"""The in-sandbox agent: runs as PID 1 inside every sandbox container.

It runs on the container's own ``python3`` (3.9 or newer), so it uses the
standard library plus the vendored h11 only, and imports little: idle
memory is paid per sandbox.

    __main__.py  entry point for ``python3 /opt/scalebox/agent`` and ``python3 -m agent``
    main.py      wiring: config, signals, start command, HTTP server, shutdown
    config.py    SCALEBOX_* environment variables parsed into a Config
    init.py      PID 1 duties: reaping every child, signal plumbing
    startcmd.py  the sandbox's start command in its own process group
    http/        asyncio + h11 HTTP/1.1 server: streamed bodies, routes, deadlines
    connect/     the Connect protocol and the RPC registry
    auth.py      access token, signed URLs, the user a request acts as
    users.py     sandbox users, and acting as one
    routes.py    /health, and the routes table the services join
    proto/       protobuf messages
    fs/          the Filesystem service, /download/ and /upload
    process/     the Process service
    log.py       one JSON line per event on stderr
"""
