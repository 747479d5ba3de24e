"""`AllocatorTrim`: glibc's malloc_trim when the server goes idle or once per interval, off the event loop."""

from __future__ import annotations

import threading

from process_memory import AllocatorTrim


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_this_c_library_has_malloc_trim() -> None:
    assert AllocatorTrim().available  # glibc (Debian, the container): otherwise the server never trims


async def test_trims_when_the_server_goes_idle_and_at_most_once_per_interval_otherwise() -> None:
    clock = Clock()
    calls: list[tuple[int, bool]] = []

    def trim(pad: int) -> int:
        calls.append((pad, threading.current_thread() is threading.main_thread()))
        return 1

    allocator = AllocatorTrim(interval_s=30, clock=clock, trim=trim)
    allocator.session_closed(open_sessions=3)  # others open, within the interval: nothing
    clock.now = 31
    allocator.session_closed(open_sessions=3)
    allocator.session_closed(open_sessions=0)  # one is running: nothing more
    await allocator.close()
    clock.now = 45
    allocator.session_closed(open_sessions=2)  # 14 s after the last: nothing
    await allocator.close()
    clock.now = 46
    allocator.session_closed(open_sessions=0)  # idle: at once
    await allocator.close()
    assert calls == [(0, False), (0, False)]  # in a worker thread, never on the loop
