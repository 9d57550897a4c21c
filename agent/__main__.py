"""Entry point: ``python3 /opt/scalebox/agent`` (the container command) or ``python3 -m agent``."""

import os
import sys

if not __package__:
    # Run as a directory: sys.path[0] is the agent folder itself, where the
    # package cannot be imported as `agent` and its module names could shadow
    # the standard library. Its parent takes that place instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The agent serves plain HTTP; the gateway terminates TLS. asyncio imports ssl
# only if it can, and OpenSSL would cost every sandbox about 4 MB of memory.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from agent.main import main  # noqa: E402 - after the two lines above

sys.exit(main())
