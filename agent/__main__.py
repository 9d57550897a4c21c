"""Entry point: ``python3 /opt/scalebox/agent`` (the container command) or ``python3 -m agent``."""

import os
import sys

if not __package__:
    # Run as a directory: sys.path[0] is the agent folder itself, where the
    # package cannot be imported as `agent` and its module names could shadow
    # the standard library. Its parent takes that place instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The pure-Python packages the agent uses (h11) are mounted read-only here,
# since nothing is installed in a sandbox. They go ahead of the image's own
# site-packages, so the agent always runs the versions it was tested with.
# SCALEBOX_AGENT_VENDOR points elsewhere (development, tests).
_vendor = os.environ.get("SCALEBOX_AGENT_VENDOR") or "/opt/scalebox/vendor"
if os.path.isdir(_vendor):
    sys.path.insert(1, _vendor)

# The agent serves plain HTTP; the gateway terminates TLS. asyncio imports ssl
# only if it can, and OpenSSL would cost every sandbox about 4 MB of memory.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

try:
    from agent.main import main  # after the lines above
except ModuleNotFoundError as exc:
    if exc.name != "h11":
        raise
    from agent import log

    log.event("vendor_missing", package="h11", vendor=_vendor, error=str(exc))
    sys.exit(2)

sys.exit(main())
