"""What the fakes share: an aiohttp app on 127.0.0.1 in a thread of its own, scripted steps and a log of requests.

Steps are scripted for a key (`ScriptBook`): the session a test opened (the server names it in every provider
request's correlation header, `providers.base.REQUEST_ID_HEADER`) or the credential of a server the test started for
itself. A request takes the next step scripted for its session, else for its credential, else behaves normally, so a
request that another test's session sends late can never take this test's steps.

Tests run in another thread (pytest's) than the fake's event loop: they script steps and read `requests`, plain
containers whose single appends and pops are atomic.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import numpy as np
from aiohttp import web

from providers.base import REQUEST_ID_HEADER


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by its name in any case (a request's headers, or the plain dict they were logged as)."""
    return next((value for key, value in headers.items() if key.lower() == name.lower()), None)


def session_of(headers: Mapping[str, str]) -> str | None:
    """The session a provider request is for: the first part of its correlation id (`sess_…:request`)."""
    value = _header(headers, REQUEST_ID_HEADER)
    return value.split(":", 1)[0] if value else None


def credential_of(headers: Mapping[str, str]) -> str | None:
    """The key a request presents, whichever header its provider uses for it."""
    authorization = _header(headers, "Authorization") or ""
    for scheme in ("Bearer ", "Token "):
        if authorization.startswith(scheme):
            return authorization[len(scheme) :]
    return _header(headers, "xi-api-key")


def keys_of(headers: Mapping[str, str]) -> list[str]:
    """What a request's steps may be scripted under, most specific first."""
    return [key for key in (session_of(headers), credential_of(headers)) if key]


class ScriptBook:
    """A fake's scripted steps by kind ("chat", "speech", …) and key. Steps scripted for no key go to whichever
    request of their kind comes next: only for providers whose requests carry nothing of ours (Edge TTS)."""

    def __init__(self) -> None:
        self._steps: defaultdict[tuple[str, str | None], deque[dict[str, Any]]] = defaultdict(deque)

    def add(self, kind: str, key: str | None, steps: Iterable[dict[str, Any]]) -> None:
        self._steps[(kind, key)].extend(steps)

    def take(self, kind: str, keys: Iterable[str]) -> dict[str, Any]:
        """The next step for the first of `keys` that has one, else an unkeyed one, else `{}` (normal behaviour)."""
        steps = self._queue(kind, keys)
        return steps.popleft() if steps else {}

    def peek(self, kind: str, keys: Iterable[str]) -> dict[str, Any]:
        """The step `take` would return, left in place."""
        steps = self._queue(kind, keys)
        return steps[0] if steps else {}

    def _queue(self, kind: str, keys: Iterable[str]) -> deque[dict[str, Any]] | None:
        return next((steps for key in (*keys, None) if (steps := self._steps.get((kind, key)))), None)

    def clear(self) -> None:
        self._steps.clear()


def tone(duration_s: float, sample_rate: int = 24_000, frequency: float = 330.0) -> bytes:
    """A quiet sine tone, PCM16 mono (recognisable, not silence)."""
    samples = np.arange(int(duration_s * sample_rate))
    wave = 0.2 * np.sin(2 * math.pi * frequency * samples / sample_rate)
    return (wave * 32767).astype(np.int16).tobytes()


async def stream_pcm(
    request: web.Request, audio: bytes, step: dict[str, Any], piece: int, headers: dict[str, str]
) -> web.StreamResponse:
    """Streams `audio` in pieces of `piece` bytes, as a TTS endpoint does, with the scripted faults of `step`:
    `drop_after_bytes` (the connection closes mid-stream), `stall_s` (a pause after the first piece)."""
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    for start in range(0, len(audio), piece):
        if step.get("drop_after_bytes") is not None and start >= step["drop_after_bytes"]:
            request.transport.close()  # type: ignore[union-attr]
            return response
        if step.get("stall_s") and start > 0:
            await asyncio.sleep(step["stall_s"])
        await response.write(audio[start : start + piece])
    await response.write_eof()
    return response


class BackgroundLoop:
    """An event loop on a daemon thread, for a fake server that synchronous test code starts and stops."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, startup: Callable[[], Awaitable[None]]) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = self.loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(startup())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            # Handlers still waiting (a scripted hang, a stream the server dropped) end here, not at exit.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5))
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        if failure:
            raise failure[0]

    def stop(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


class LoopbackFake:
    """A fake provider: subclasses add routes in `routes()`; `next_step()` takes the next scripted behaviour."""

    def __init__(self) -> None:
        self.steps = ScriptBook()
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._background = BackgroundLoop(type(self).__name__)

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def script(self, *steps: dict[str, Any], key: str | None) -> None:
        """Steps for the requests of session (or credential) `key`; None: for whichever requests come next."""
        self.steps.add("request", key, steps)

    def reset(self) -> None:
        self.steps.clear()
        self.requests.clear()

    def next_step(self, request: web.Request) -> dict[str, Any]:
        return self.steps.take("request", keys_of(request.headers))

    def peek_step(self, request: web.Request) -> dict[str, Any]:
        return self.steps.peek("request", keys_of(request.headers))

    def requests_for(self, key: str) -> list[dict[str, Any]]:
        """The requests of session (or credential) `key`, in order."""
        return [record for record in self.requests if key in keys_of(record["headers"])]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start_in_thread(self) -> LoopbackFake:
        self._background.start(self.start)
        return self

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop_thread(self) -> None:
        self._background.stop(self._cleanup)
