"""Working inside a sandbox from the CLI: commands, terminals, files.

Pure (bytes or dicts in, values out; unit-tested without a network):

    envelope.py     Connect stream envelopes (5-byte header, end-of-stream flag)
    messages.py     the agent's messages in proto3 JSON: requests out, typed events in
    command.py      argv -> the process to start; an end -> the exit code to leave with
    sse.py          Server-Sent Events of the API's exec stream (the fallback path)
    multipart.py    the one-file multipart body of an upload, framed around a stream
    listing.py      directory entries as table rows
    errors.py       the exception tree, and the one line a user sees

I/O:

    transport.py    the Backend and PtyChannel interfaces both ways implement
    agent.py        straight to the sandbox domain (Connect + /download + /upload, httpx)
    api.py          through the /v1 API (exec stream, files, terminal WebSocket)
    route.py        which of the two, per command (SCALEBOX_SANDBOX_ROUTE)
    execute.py      `exec`: stream output, exit code, Ctrl-C kills
    terminal.py     `terminal`: raw mode, select loop, SIGWINCH
    transfer.py     `upload` / `download`: chunked, progress meter
"""
