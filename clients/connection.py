"""What both clients need to reach a Realtime server: where it is, and how to open and close the socket.

Kept in one place so that the scripted client and the voice chat connect and fail the same way, and say the same
thing when a server cannot be reached (the flags that choose the server are in `clients.command_line`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

DEFAULT_URL = "ws://localhost:8000/v1/realtime"
OPENAI_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_MODEL = "gpt-realtime"
TRANSCRIPTION_MODEL = "whisper-1"  # input transcription, turned on so that the user sees what the server heard
CONNECT_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 3.0


class CannotConnect(Exception):
    """The server could not be reached or refused the socket; the message is one line for the user."""


def realtime_connection(url: str, model: str, api_key: str, dialect: str = "ga") -> Any:
    """The official SDK's connection manager for a Realtime URL (`ws[s]://host[:port]/v1/realtime[?…]`).

    The SDK builds the socket URL from a base URL plus `/realtime?model=…`, so the URL's path is split off there;
    any other query parameters of the URL are kept."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise ValueError(f"not a WebSocket URL: {url!r} (expected ws://host:port/v1/realtime)")
    path = parts.path.rstrip("/")
    path = path[: -len("/realtime")] if path.endswith("/realtime") else path
    query = dict(parse_qsl(parts.query))
    model = query.pop("model", model)
    ws_scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    http_scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    client = AsyncOpenAI(
        api_key=api_key,
        base_url=urlunsplit((http_scheme, parts.netloc, path, "", "")),
        websocket_base_url=urlunsplit((ws_scheme, parts.netloc, path, "", "")),
    )
    realtime = client.realtime if dialect == "ga" else client.beta.realtime
    return realtime.connect(model=model, extra_query=query)


def describe_connect_error(url: str, exc: BaseException) -> str:
    """One line saying why the socket could not be opened, and what to do about it."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = {
            401: " (wrong or missing API key: pass --api-key)",
            403: " (this origin is not allowed)",
            404: " (no Realtime endpoint at that path)",
            503: " (the server is full or still loading its models)",
        }.get(status, "")
        return f"{url} refused the connection: HTTP {status}{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused (is the server running? start it with `make run`)"
    if isinstance(exc, TimeoutError):
        return f"cannot connect to {url}: timed out"
    if isinstance(exc, ValueError):
        return str(exc)
    reason = str(exc) or type(exc).__name__
    return f"cannot connect to {url}: {reason}"


# What opening a socket can raise (a bad URL is a ValueError).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError)


async def open_connection(url: str, model: str, api_key: str, dialect: str = "ga") -> tuple[Any, Any]:
    """(manager, connection), or `CannotConnect` with a message that says what to do.

    The manager is what `close_quietly(manager.__aexit__(None, None, None))` closes; the connection alone can be
    closed too (`close_quietly(connection.close())`)."""
    try:
        manager = realtime_connection(url, model, api_key, dialect)
        connection = await asyncio.wait_for(manager.__aenter__(), CONNECT_TIMEOUT_S)
    except CONNECT_ERRORS as exc:
        raise CannotConnect(describe_connect_error(url, exc)) from None
    return manager, connection


async def close_quietly(closing: Awaitable[Any]) -> None:
    """Waits a moment for a socket to close: a client that is quitting has nothing to do about a close that fails
    or hangs (the server is gone, or the network), so those are not errors."""
    with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
        await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
