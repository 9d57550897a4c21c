"""`scalebox serve`: run the appliance in the foreground.

The `scalebox` console script is the click group in cli/main.py; its `serve`
command forwards its raw arguments here, so the appliance's options, their
environment defaults and help stay argparse's, in appliance/config.py.
`python -m appliance.cli serve ...` still works without the client side.
"""

from __future__ import annotations

import argparse
import sys

import trio

from appliance.config import ConfigError, add_serve_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalebox", description="ScaleBox self-hosted appliance")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the appliance: gateway, API and sandboxes")
    add_serve_arguments(serve_parser)
    ns = parser.parse_args(argv)

    if ns.command == "serve":
        from appliance.serve import StartupError, serve

        try:
            config = config_from_args(ns)
            trio.run(serve, config)
        except (ConfigError, StartupError) as exc:
            print(f"scalebox: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
