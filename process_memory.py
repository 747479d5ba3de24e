"""Giving freed memory back to the system as sessions come and go.

Under session churn the server's RSS grows although nothing leaks: the Python objects, tasks, threads and file
descriptors stay flat (bench/churn_memory.py, bench/soak.py), and glibc's allocator keeps the pages that the
models' threads freed in its per-thread arenas. `malloc_trim(0)` hands them back (on the offline default it took
RSS below where it stood after the first round of sessions). `AllocatorTrim` does that when the last session closes,
and at most once per interval while others stay open, in a thread (a trim walks every arena: milliseconds).
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

from loguru import logger

TRIM_INTERVAL_S = 30.0


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` from this process's own symbols; None under another C library (musl, macOS), whose
    allocators hand memory back themselves."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class AllocatorTrim:
    def __init__(
        self,
        interval_s: float = TRIM_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        """`trim` is glibc's `malloc_trim` unless given; None where the C library has none."""
        self._trim = trim or _glibc_malloc_trim()
        self._interval_s = interval_s
        self._clock = clock
        self._last = clock()
        self._running: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def session_closed(self, open_sessions: int) -> None:
        """Trims in the background when the server has gone idle, or when no trim ran within the interval."""
        if self._trim is None or (self._running is not None and not self._running.done()):
            return
        now = self._clock()
        if open_sessions and now - self._last < self._interval_s:
            return
        self._last = now
        self._running = asyncio.get_running_loop().create_task(self._run(self._trim), name="malloc-trim")

    async def _run(self, trim: Callable[[int], int]) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(trim, 0)
        logger.debug(f"malloc_trim took {1000 * (time.perf_counter() - started):.1f} ms")

    async def close(self) -> None:
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)
