"""Playing a reply's audio in the clients, and the sound card helpers they share (PortAudio through sounddevice).

Client-only: the server never plays audio, so this lives apart from `audio_utils` (the server's codecs, which it
uses for resampling). sounddevice is imported only when a sound card is opened (`import_sounddevice`), so that the
scripted client runs without PortAudio and tests can play through `AudioPlayer.read()` themselves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from audio_utils import WIRE_PCM_RATE, StreamResampler

_SAMPLE_WIDTH = 2  # bytes per PCM16 sample

PORTAUDIO_ADVICE = (
    "PortAudio, the sound library that sounddevice uses, is missing. Install it with "
    "`sudo apt-get install libportaudio2` (Debian/Ubuntu), `sudo dnf install portaudio` (Fedora) or "
    "`brew install portaudio` (macOS), then try again."
)


class AudioUnavailable(RuntimeError):
    """No usable sound library or device: the message says what to install or which device to pick."""


class ClosableStream(Protocol):
    """All the clients need of a device stream (a PortAudio stream, or a test's fake): closing it when they quit."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class PlaybackStop:
    """Where playback of an item was when `AudioPlayer.stop()` cut it: what `conversation.item.truncate` needs."""

    item_id: str | None
    played_ms: int  # of the item's audio, as heard (never more than was received)
    received_ms: int  # of the item's audio received so far

    @property
    def interrupted(self) -> bool:
        """Some of the item's audio was received but not heard."""
        return self.item_id is not None and self.played_ms < self.received_ms


@dataclass
class _ItemProgress:
    """Bytes of one item received and played: kept apart because the two sides run at different rates."""

    received_bytes: int = 0  # at the source rate
    played_bytes: int = 0  # at the output rate


class AudioPlayer:
    """Plays PCM16 mono as it arrives without blocking the caller, and knows how much of each item was heard.

    A Realtime reply's audio arrives faster than real time. When the user talks over it, the client must stop at once
    and tell the server how many milliseconds were actually played (`conversation.item.truncate`), so that the
    conversation keeps only what the user heard. So the player tags queued audio with its item id, counts what the
    device consumed per item, and `stop()` drops everything queued and returns that count. After `stop()`, late audio
    for the stopped item (deltas already in flight when the server cancelled the response) is ignored.

    Thread-safe: the event loop calls `write()`/`stop()`, the audio device's callback thread calls `read()`. The
    device is attached separately (see `open_sounddevice_player`), so that tests can pull from `read()` themselves.
    Audio is written at `sample_rate` and played at `output_rate` (resampled per item when the device can't do the
    wire rate). `latency_ms` is the device's own buffering: audio handed to it that far back is not yet heard.
    """

    def __init__(
        self,
        sample_rate: int = WIRE_PCM_RATE,
        output_rate: int | None = None,
        latency_ms: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sample_rate = sample_rate
        self.output_rate = output_rate or sample_rate
        self.latency_ms = latency_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[tuple[str | None, bytes]] = deque()  # chunks at the output rate, tagged with their item
        self._queued_bytes = 0
        self._progress: dict[str | None, _ItemProgress] = {}
        self._resamplers: dict[str | None, StreamResampler] = {}
        self._muted: set[str] = set()
        self._current: str | None = None  # the item playing, or last played
        self._last_read_at: float | None = None
        self._stream: ClosableStream | None = None
        self._closed = False

    # ---- writer side (event loop) -----------------------------------------------------------------------------

    def write(self, pcm: bytes, item_id: str | None = None) -> None:
        """Queues audio of `item_id` (PCM16 mono at `sample_rate`); ignored if that item was stopped."""
        with self._lock:
            if self._closed or (item_id is not None and item_id in self._muted):
                return
            progress = self._item(item_id)
            progress.received_bytes += len(pcm)
            if self.output_rate != self.sample_rate:
                resampler = self._resamplers.get(item_id)
                if resampler is None:
                    resampler = self._resamplers[item_id] = StreamResampler(self.sample_rate, self.output_rate)
                pcm = resampler.process(pcm)
            if pcm:
                self._queue.append((item_id, pcm))
                self._queued_bytes += len(pcm)
            if self._current is None or (self._current != item_id and not self._queue_has(self._current)):
                self._current = self._queue[0][0] if self._queue else item_id

    def end_item(self, item_id: str | None = None) -> None:
        """The item's audio is complete: releases what the resampler still holds back (nothing at the wire rate)."""
        with self._lock:
            resampler = self._resamplers.pop(item_id, None)
            if resampler is not None and not self._closed and item_id not in self._muted:
                tail = resampler.flush()
                if tail:
                    self._queue.append((item_id, tail))
                    self._queued_bytes += len(tail)

    def stop(self) -> PlaybackStop:
        """Stops playback now: drops all queued audio, mutes the item that was playing, and says how much of it was
        heard. Audio the device already holds (`latency_ms`) still sounds; it is counted as heard."""
        with self._lock:
            item_id = self._current
            position = self._position(item_id)
            self._queue.clear()
            self._queued_bytes = 0
            self._resamplers.clear()
            if item_id is not None:
                self._muted.add(item_id)
            return position

    def close(self) -> None:
        """Stops playback and closes the attached device stream (idempotent)."""
        self.stop()
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def attach(self, stream: ClosableStream) -> None:
        """The device stream that pulls from `read()`; `close()` closes it."""
        self._stream = stream

    # ---- device side (audio callback thread) ------------------------------------------------------------------

    def read(self, nbytes: int) -> bytes:
        """Exactly `nbytes` of PCM16 at `output_rate` for the device: queued audio, then silence."""
        out = bytearray()
        with self._lock:
            while len(out) < nbytes and self._queue:
                item_id, chunk = self._queue[0]
                take = chunk[: nbytes - len(out)]
                if len(take) < len(chunk):
                    self._queue[0] = (item_id, chunk[len(take) :])
                else:
                    self._queue.popleft()
                self._queued_bytes -= len(take)
                self._item(item_id).played_bytes += len(take)
                self._current = item_id
                out += take
            self._last_read_at = self._clock()
        if len(out) < nbytes:
            out += bytes(nbytes - len(out))
        return bytes(out)

    # ---- state ------------------------------------------------------------------------------------------------

    @property
    def current_item(self) -> str | None:
        """The item playing, or the one that played last."""
        with self._lock:
            return self._current

    @property
    def buffered_ms(self) -> float:
        """Audio queued and not yet handed to the device."""
        with self._lock:
            return self._queued_bytes / _SAMPLE_WIDTH / self.output_rate * 1000

    @property
    def is_playing(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def played_ms(self, item_id: str | None) -> int:
        """Milliseconds of the item heard so far."""
        with self._lock:
            return self._position(item_id).played_ms

    def _item(self, item_id: str | None) -> _ItemProgress:
        progress = self._progress.get(item_id)
        if progress is None:
            progress = self._progress[item_id] = _ItemProgress()
            while len(self._progress) > 16:  # only recent items can still be truncated
                oldest = next(iter(self._progress))
                del self._progress[oldest]
                self._muted.discard(oldest)  # type: ignore[arg-type]
        return progress

    def _queue_has(self, item_id: str | None) -> bool:
        return any(queued == item_id for queued, _ in self._queue)

    def _position(self, item_id: str | None) -> PlaybackStop:
        progress = self._progress.get(item_id)
        if progress is None:
            return PlaybackStop(item_id, 0, 0)
        played_ms = progress.played_bytes / _SAMPLE_WIDTH / self.output_rate * 1000
        if item_id == self._current and self._last_read_at is not None and self.latency_ms:
            # The device still holds what it took in the last `latency_ms`: not heard yet.
            in_device = max(0.0, self.latency_ms - (self._clock() - self._last_read_at) * 1000)
            played_ms = max(0.0, played_ms - in_device)
        received_ms = int(progress.received_bytes / _SAMPLE_WIDTH / self.sample_rate * 1000)
        return PlaybackStop(item_id, min(int(played_ms), received_ms), received_ms)


def supported_sample_rate(sounddevice: object, device: int | str | None, kind: str, preferred: int) -> int:
    """`preferred` if the device can open a mono PCM16 stream at that rate, else the device's default rate."""
    sd: Any = sounddevice
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=device, samplerate=preferred, channels=1, dtype="int16")
        return preferred
    except Exception:
        return int(sd.query_devices(device, kind)["default_samplerate"])


def import_sounddevice() -> Any:
    """The `sounddevice` module, or `AudioUnavailable` saying what to install (PortAudio is a system library that
    pip does not install; without it the import raises OSError)."""
    try:
        import sounddevice
    except OSError:
        raise AudioUnavailable(PORTAUDIO_ADVICE) from None
    except ImportError:
        raise AudioUnavailable(
            "The sounddevice package is missing: install it with `pip install -r requirements.txt`."
        ) from None
    return sounddevice


def open_sounddevice_player(
    device: int | str | None = None, sample_rate: int = WIRE_PCM_RATE, block_ms: int = 20
) -> AudioPlayer:
    """An `AudioPlayer` playing on a sound card through a callback-driven (non-blocking) PortAudio stream.

    Raises `AudioUnavailable` when PortAudio or an output device is missing."""
    sd = import_sounddevice()
    try:
        rate = supported_sample_rate(sd, device, "output", sample_rate)
        player = AudioPlayer(sample_rate, output_rate=rate)

        def callback(outdata: Any, _frames: int, _time: Any, _status: Any) -> None:
            outdata[:] = player.read(len(outdata))

        stream = sd.RawOutputStream(
            samplerate=rate,
            blocksize=rate * block_ms // 1000,
            channels=1,
            dtype="int16",
            device=device,
            callback=callback,
            latency="low",
        )
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        raise AudioUnavailable(f"Cannot play audio on output device {device or '(default)'}: {exc}") from None
    player.latency_ms = float(stream.latency) * 1000
    player.attach(stream)
    return player
