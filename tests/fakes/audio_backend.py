"""A fake sound card for the Textual client: a microphone that plays scripted audio and a speaker that records.

Both run on their own threads at real-time pace, like PortAudio's callbacks, so the client's thread hand-off
(`call_soon_threadsafe`) and its playback accounting are exercised as they are with a real device. The microphone
sends silence when nothing is scripted (a live microphone never stops); `say()` queues audio to be "spoken" next.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from clients.playback import AudioPlayer


class _Clocked:
    """A thread calling `tick()` every `block_ms`, on a schedule that does not drift."""

    def __init__(self, name: str, block_ms: int, tick: Callable[[], None]) -> None:
        self.block_ms = block_ms
        self._tick = tick
        self._stopped = threading.Event()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self.block_ms / 1000
        next_at = time.monotonic()
        while not self._stopped.is_set():
            self._tick()
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stopped.wait(delay)
            elif delay < -0.5:  # far behind (a stalled machine): skip ahead rather than burst
                next_at = time.monotonic()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(2)
        self.closed = True


class FakeMicrophone(_Clocked):
    def __init__(self, callback: Callable[[bytes], None], rate: int, block_ms: int) -> None:
        self.rate = rate
        self.block_bytes = rate * block_ms // 1000 * 2
        self._callback = callback
        self._pending: deque[bytes] = deque()
        self._lock = threading.Lock()
        self.sent_ms = 0.0
        self.speech_done = threading.Event()
        self.speech_done.set()
        super().__init__("fake-microphone", block_ms, self._next_block)

    def say(self, pcm: bytes) -> None:
        with self._lock:
            size = self.block_bytes
            self._pending.extend(pcm[start : start + size] for start in range(0, len(pcm), size))
            self.speech_done.clear()

    def _next_block(self) -> None:
        with self._lock:
            block = self._pending.popleft() if self._pending else b""
            if not self._pending:
                self.speech_done.set()
        block = block.ljust(self.block_bytes, b"\x00")
        self.sent_ms += len(block) / 2 / self.rate * 1000
        self._callback(block)


class FakeSpeaker(_Clocked):
    """Pulls from the player every block, like a sound card's callback; keeps what it played."""

    def __init__(self, player: AudioPlayer, block_ms: int = 20) -> None:
        self.player = player
        self.block_bytes = player.output_rate * block_ms // 1000 * 2
        self.played = bytearray()
        super().__init__("fake-speaker", block_ms, self._pull)

    def _pull(self) -> None:
        self.played += self.player.read(self.block_bytes)

    def audible_ms(self, start_byte: int = 0) -> float:
        """How much of what was played (from `start_byte` on) was not silence, in 10 ms steps."""
        samples = np.frombuffer(bytes(self.played[start_byte:]), dtype=np.int16)
        block = self.player.output_rate // 100
        samples = samples[: len(samples) // block * block].reshape(-1, block)
        return float(np.count_nonzero(np.abs(samples).max(axis=1) > 0) * 10)


class FakeAudioBackend:
    """Implements clients.voice_chat.AudioBackend without a sound card."""

    def __init__(self) -> None:
        self.microphone: FakeMicrophone | None = None
        self.speaker: FakeSpeaker | None = None
        self.opened = threading.Event()

    def open_input(self, callback: Callable[[bytes], None], rate: int, block_ms: int) -> FakeMicrophone:
        self.microphone = FakeMicrophone(callback, rate, block_ms)
        self.opened.set()
        return self.microphone

    def open_output(self, rate: int) -> AudioPlayer:
        player = AudioPlayer(rate)
        self.speaker = FakeSpeaker(player)
        player.attach(self.speaker)
        return player

    def say(self, pcm: bytes) -> None:
        assert self.microphone is not None, "the app has not opened the microphone"
        self.microphone.say(pcm)
