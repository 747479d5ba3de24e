"""How the process serves, whichever way it was started: `python main.py`, `uvicorn main:app [--reload|--workers N]`.

Uvicorn's command line decides things the app cannot (the WebSocket size limit, the address, the workers' health
check), and uvicorn stops a server by failing every WebSocket with 1012. The app learns uvicorn's configuration
when the lifespan starts (`UvicornProbe`), logs the address really served and one warning per flag that would break
the API, and takes over the stop signals (`GracefulStop`) so that sessions end the same way under every launcher.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

# A worker of `uvicorn --workers` that exits with any other code is started again, forever.
UVICORN_STARTUP_FAILURE = STARTUP_FAILURE
# llama.cpp holds the interpreter for ~5 s while it loads (more on a busy machine): a worker's health check must wait.
WORKER_HEALTHCHECK_S = 60
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Scope = dict[str, Any]


def startup_exit_code(code: int) -> int:
    """The exit code for a server that cannot start: ours, except in a worker process of uvicorn's supervisor."""
    return UVICORN_STARTUP_FAILURE if multiprocessing.parent_process() is not None else code


@dataclass(frozen=True)
class Launch:
    """Uvicorn's configuration of this process (None under another ASGI server, which decides all this itself)."""

    config: uvicorn.Config | None

    def endpoint(self) -> str:
        config = self.config
        if config is None:
            return "/v1/realtime (served by a server other than uvicorn)"
        if config.uds:
            return f"ws+unix://{config.uds}:/v1/realtime"
        if config.fd is not None:
            return f"/v1/realtime on file descriptor {config.fd}"
        host = "localhost" if config.host in ("0.0.0.0", "::") else config.host
        scheme = "wss" if config.is_ssl else "ws"
        port = config.port if config.port else "(a port the OS picks)"
        return f"{scheme}://{host}:{port}/v1/realtime"

    def warnings(self, max_event_bytes: int, loads_local_llm: bool) -> list[str]:
        """One line for each of uvicorn's settings that keeps the API from working, with the flag that fixes it."""
        config = self.config
        if config is None:
            return []
        found = []
        if config.ws_max_size < max_event_bytes:
            found.append(
                f"uvicorn's WebSocket limit is {config.ws_max_size} bytes, below MAX_EVENT_BYTES ({max_event_bytes}):"
                f" larger events (an append may carry 15 MiB of audio) close the socket with 1009;"
                f" start uvicorn with --ws-max-size {2 * max_event_bytes}"
            )
        if config.workers > 1 and loads_local_llm and config.timeout_worker_healthcheck < WORKER_HEALTHCHECK_S:
            found.append(
                f"uvicorn restarts a worker that does not answer its health check within "
                f"{config.timeout_worker_healthcheck} s, and loading the local LLM can take longer:"
                f" start uvicorn with --timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}"
            )
        return found


def uvicorn_config(receive: Receive) -> uvicorn.Config | None:
    """Uvicorn's lifespan `receive` is a method of its lifespan handler, which holds the server's configuration."""
    config = getattr(getattr(receive, "__self__", None), "config", None)
    return config if isinstance(config, uvicorn.Config) else None


class UvicornProbe:
    """ASGI middleware: hands uvicorn's configuration to `on_launch` when the lifespan starts, before the app's own
    lifespan runs."""

    def __init__(self, app: Any, on_launch: Callable[[Launch], None]) -> None:
        self.app = app
        self._on_launch = on_launch

    async def __call__(self, scope: Scope, receive: Receive, send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            self._on_launch(Launch(uvicorn_config(receive)))
        await self.app(scope, receive, send)


class GracefulStop:
    """The first SIGINT or SIGTERM ends the sessions (`end_sessions`) before uvicorn's own handler stops the server;
    a second one goes to uvicorn at once (which then forces the exit)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, end_sessions: Callable[[], Awaitable[None]]) -> None:
        self._loop = loop
        self._end_sessions = end_sessions
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self._signalled = False
        self._stopping: asyncio.Task[None] | None = None

    def install(self) -> bool:
        """Wraps uvicorn's handlers; False where there are none to wrap (not the main thread, or not uvicorn's)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if isinstance(getattr(previous, "__self__", None), uvicorn.Server) and callable(previous):
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        return bool(self._previous)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:
            self._previous[sig](sig, frame)
            return
        self._signalled = True
        # A signal handler runs between two bytecodes of the loop's own thread: schedule, don't run, the work.
        self._loop.call_soon_threadsafe(self._begin, sig)

    def _begin(self, sig: int) -> None:
        self._stopping = self._loop.create_task(self._stop(sig), name="graceful-stop")

    async def _stop(self, sig: int) -> None:
        try:
            await self._end_sessions()
        finally:
            self._previous[sig](sig, None)
