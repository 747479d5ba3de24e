"""The command-line flags that choose the server, shared by both clients: `--url`, `--model`, `--api-key` and
`--openai`, with their defaults from the environment (REALTIME_URL, REALTIME_MODEL, REALTIME_API_KEY,
USE_LOCAL_SERVER, OPENAI_API_KEY).

One definition, so that the two clients switch to OpenAI's own API the same way and neither ever sends the user's
OpenAI key to the local server.
"""

from __future__ import annotations

import argparse
import os

from clients.connection import DEFAULT_MODEL, DEFAULT_URL, OPENAI_URL


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """`--url`, `--model` and `--api-key`, with their defaults from REALTIME_URL, REALTIME_MODEL and
    REALTIME_API_KEY (`--url` and `--api-key` are filled in by `resolve_server`, which knows about `--openai`)."""
    env = os.environ
    parser.add_argument("--url", default=env.get("REALTIME_URL"), help=f"Realtime WebSocket URL ({DEFAULT_URL})")
    parser.add_argument("--model", default=env.get("REALTIME_MODEL", DEFAULT_MODEL), help="model name")
    parser.add_argument("--api-key", default=env.get("REALTIME_API_KEY"), help="API key for the server")


def add_openai_argument(parser: argparse.ArgumentParser) -> None:
    """`--openai`, on by default when USE_LOCAL_SERVER is false (a separate call from `add_server_arguments` so that
    each client keeps its flags in the order its help lists them)."""
    parser.add_argument(
        "--openai",
        action="store_true",
        default=os.environ.get("USE_LOCAL_SERVER", "true").strip().lower() in ("0", "false", "no", "off"),
        help="use OpenAI's own API (key from OPENAI_API_KEY) instead of the local server",
    )


def resolve_server(parser: argparse.ArgumentParser, args: argparse.Namespace, prog: str) -> tuple[str, str]:
    """The (url, api_key) to connect with. With `--openai`: OpenAI's URL unless `--url` says otherwise, and a key
    that must be there (exit 2 naming `prog` if not). Otherwise the local server, whose key is never the user's
    OpenAI key."""
    if args.openai:
        api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            parser.exit(2, f"{prog}: --openai needs a key: set OPENAI_API_KEY or pass --api-key\n")
        return args.url or OPENAI_URL, api_key
    # The SDK wants some key; a server without keys ignores it.
    return args.url or DEFAULT_URL, args.api_key or "local"
