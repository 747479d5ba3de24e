"""Audio conversions between the wire formats of the Realtime API and the pipeline's internal PCM.

Wire formats: PCM16 mono 24 kHz (`pcm16`, `audio/pcm`), G.711 μ-law and A-law at 8 kHz (`g711_ulaw`/`audio/pcmu`,
`g711_alaw`/`audio/pcma`). Inside the pipeline, input audio is PCM16 mono 16 kHz and output audio PCM16 mono 24 kHz.
Rates are converted with soxr's streaming resampler (no clicks at chunk boundaries); G.711 with the C codec of
`audioop` (the `audioop-lts` package on Python ≥ 3.13).
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
import warnings
import wave
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import soxr

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 and gone in 3.13, where the `audioop-lts` package provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

WIRE_PCM_RATE = 24_000
G711_RATE = 8_000
PIPELINE_INPUT_RATE = 16_000
PIPELINE_OUTPUT_RATE = 24_000
_SAMPLE_WIDTH = 2  # bytes per PCM16 sample


class AudioFormat(StrEnum):
    PCM16 = "pcm16"
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"

    @classmethod
    def from_wire(cls, ga_format: Mapping[str, Any]) -> AudioFormat:
        """The format named by a GA format object (`{"type": "audio/pcm", "rate": 24000}` and the like)."""
        return {"audio/pcm": cls.PCM16, "audio/pcmu": cls.G711_ULAW, "audio/pcma": cls.G711_ALAW}[ga_format["type"]]

    @property
    def sample_rate(self) -> int:
        return WIRE_PCM_RATE if self is AudioFormat.PCM16 else G711_RATE

    @property
    def bytes_per_ms(self) -> float:
        """Bytes of encoded audio per millisecond (PCM16 has 2 bytes a sample, G.711 one)."""
        width = _SAMPLE_WIDTH if self is AudioFormat.PCM16 else 1
        return self.sample_rate * width / 1000

    def duration_ms(self, encoded_bytes: int) -> float:
        return encoded_bytes / self.bytes_per_ms


class InvalidAudio(ValueError):
    """Audio bytes that cannot be decoded."""


def decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAudio("The audio is not valid base64.") from None


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """One-shot resampling of a whole PCM16 mono clip."""
    if in_rate == out_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype=np.int16)
    return soxr.resample(samples, in_rate, out_rate, quality="HQ").astype(np.int16).tobytes()


class StreamResampler:
    """Chunk-by-chunk PCM16 mono resampling that keeps filter state between chunks.

    `quality` trades delay for fidelity. soxr releases output in blocks, so what is held back after a chunk varies:
    for 20 ms chunks from 24 kHz, "HQ" and "MQ" hold back 21 ms on average (up to 38), "QQ" 0.1 ms; upsampling
    G.711's 8 kHz, "MQ" held back up to 118 ms. For the VAD, "QQ" gave the same turn boundaries as "HQ" on our
    fixtures but one speech start 32 ms later: every turn's end is detected ~21 ms sooner for it."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality) if in_rate != out_rate else None
        )
        self._odd_byte = b""

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        data = self._odd_byte + pcm
        usable = len(data) - len(data) % _SAMPLE_WIDTH
        self._odd_byte = data[usable:]
        data = data[:usable]
        if self._stream is None:
            return data
        samples = np.frombuffer(data, dtype=np.int16)
        return self._stream.resample_chunk(samples, last=last).tobytes()

    def flush(self) -> bytes:
        return self.process(b"", last=True)


class OutputEncoder:
    """Turns the pipeline's PCM16 24 kHz output into the session's output format, chunk by chunk."""

    def __init__(self, audio_format: AudioFormat) -> None:
        self.format = audio_format
        self._resampler = StreamResampler(PIPELINE_OUTPUT_RATE, audio_format.sample_rate)

    def encode(self, pcm: bytes, last: bool = False) -> bytes:
        pcm = self._resampler.process(pcm, last=last)
        return pcm_to_format(pcm, self.format)

    def flush(self) -> bytes:
        return self.encode(b"", last=True)


class InputDecoder:
    """Turns audio in the session's input format into PCM16 mono at `out_rate`, chunk by chunk, with little delay
    (it feeds voice activity detection, where every millisecond held back delays the end of a turn)."""

    def __init__(self, audio_format: AudioFormat, out_rate: int = PIPELINE_INPUT_RATE) -> None:
        self.format = audio_format
        self._resampler = StreamResampler(audio_format.sample_rate, out_rate, quality="QQ")

    def decode(self, encoded: bytes) -> bytes:
        return self._resampler.process(format_to_pcm(encoded, self.format))


def format_to_pcm(encoded: bytes, audio_format: AudioFormat) -> bytes:
    """Encoded wire audio → PCM16 at the format's own rate."""
    if audio_format is AudioFormat.G711_ULAW:
        return audioop.ulaw2lin(encoded, _SAMPLE_WIDTH)
    if audio_format is AudioFormat.G711_ALAW:
        return audioop.alaw2lin(encoded, _SAMPLE_WIDTH)
    if len(encoded) % _SAMPLE_WIDTH:
        raise InvalidAudio("PCM16 audio must have an even number of bytes.")
    return encoded


def pcm_to_format(pcm: bytes, audio_format: AudioFormat) -> bytes:
    """PCM16 already at the format's rate → encoded wire audio."""
    if audio_format is AudioFormat.G711_ULAW:
        return audioop.lin2ulaw(pcm, _SAMPLE_WIDTH)
    if audio_format is AudioFormat.G711_ALAW:
        return audioop.lin2alaw(pcm, _SAMPLE_WIDTH)
    return pcm


def pcm16_duration_ms(pcm: bytes, sample_rate: int) -> float:
    return len(pcm) / _SAMPLE_WIDTH / sample_rate * 1000


def pcm16_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """PCM16 mono as a WAV file (what transcription APIs take)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_SAMPLE_WIDTH)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


# ---- playback, for the clients (push_to_talk_app.py, test_client.py) -------------------------------------------------

PORTAUDIO_ADVICE = (
    "PortAudio, the sound library that sounddevice uses, is missing. Install it with "
    "`sudo apt-get install libportaudio2` (Debian/Ubuntu), `sudo dnf install portaudio` (Fedora) or "
    "`brew install portaudio` (macOS), then try again."
)


class AudioUnavailable(RuntimeError):
    """No usable sound library or device: the message says what to install or which device to pick."""


class ClosableStream(Protocol):
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
