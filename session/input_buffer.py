"""A session's input audio buffer and its clock. Pure: bytes in, bytes out.

The clock counts milliseconds of audio received since the session began (`input_audio_buffer.append` after
`input_audio_buffer.append`), which is what the Realtime API's `audio_start_ms` / `audio_end_ms` are measured in.
The buffer holds the audio not yet committed, in the session's wire format; while nobody speaks under server VAD
it keeps only the recent past the next turn may need (its prefix padding), so an open microphone costs nothing.
"""

from __future__ import annotations

from audio_utils import PIPELINE_INPUT_RATE, AudioFormat, InputDecoder, format_to_pcm, resample

# Audio kept while quiet, beyond the prefix padding: covers the VAD's start confirmation.
_QUIET_MARGIN_MS = 500


class InputAudioBuffer:
    def __init__(self, audio_format: AudioFormat) -> None:
        self.format = audio_format
        self._decoder = InputDecoder(audio_format)
        self._buffer = bytearray()
        self.start_ms = 0.0  # clock position of the first buffered byte
        self.clock_ms = 0.0  # clock position just after the last byte received

    @property
    def buffered_ms(self) -> float:
        return self.clock_ms - self.start_ms

    def set_format(self, audio_format: AudioFormat) -> None:
        """A new input format: what was buffered in the old one is dropped (the two cannot be mixed)."""
        if audio_format is not self.format:
            self.format = audio_format
            self._decoder = InputDecoder(audio_format)
            self.clear()

    def append(self, audio: bytes) -> bytes:
        """Adds audio in the wire format; returns it as PCM16 mono 16 kHz for turn detection."""
        self._buffer.extend(audio)
        self.clock_ms += self.format.duration_ms(len(audio))
        return self._decoder.decode(audio)

    def clear(self) -> None:
        self._buffer.clear()
        self.start_ms = self.clock_ms

    def forget_before(self, keep_ms: float, analysed_ms: float) -> None:
        """While nobody speaks: drop audio older than `keep_ms` (plus a margin) before `analysed_ms`, how far the
        VAD has got. The client may send faster than real time, so the VAD can lag the clock by seconds."""
        cutoff = min(analysed_ms, self.clock_ms) - keep_ms - _QUIET_MARGIN_MS
        if cutoff > self.start_ms:
            self._drop_until(cutoff)

    def peek(self, start_ms: float, end_ms: float) -> bytes:
        """The audio from `start_ms` to `end_ms`, left in the buffer."""
        return bytes(self._buffer[self._offset(start_ms) : self._offset(end_ms)])

    def take(self, start_ms: float | None = None, end_ms: float | None = None) -> bytes:
        """Removes and returns the audio from `start_ms` to `end_ms` (clock positions; default: all of it).
        Audio before `start_ms` is dropped, audio after `end_ms` stays for the next turn."""
        if start_ms is not None and start_ms > self.start_ms:
            self._drop_until(start_ms)
        end = len(self._buffer) if end_ms is None else self._offset(end_ms)
        taken = bytes(self._buffer[:end])
        del self._buffer[:end]
        self.start_ms += self.format.duration_ms(len(taken))
        return taken

    def _offset(self, position_ms: float) -> int:
        offset = int(round((position_ms - self.start_ms) * self.format.bytes_per_ms))
        offset -= offset % self._sample_width
        return max(0, min(offset, len(self._buffer)))

    def _drop_until(self, position_ms: float) -> None:
        offset = self._offset(position_ms)
        del self._buffer[:offset]
        self.start_ms += self.format.duration_ms(offset)

    @property
    def _sample_width(self) -> int:
        return 2 if self.format is AudioFormat.PCM16 else 1


def to_pipeline_pcm(audio: bytes, audio_format: AudioFormat) -> bytes:
    """A whole clip in a wire format as PCM16 mono 16 kHz (what speech-to-text takes)."""
    return resample(format_to_pcm(audio, audio_format), audio_format.sample_rate, PIPELINE_INPUT_RATE)
