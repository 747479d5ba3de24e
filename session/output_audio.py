"""The output audio buffer of a session whose reply audio plays on a media track (WebRTC). Pure: no I/O.

Over WebRTC the server, not the client, plays the reply, so it knows what was heard: the track reports when a
response's audio starts playing, when it has played out, and how much had played when it was cut. This part turns
those reports into the `output_audio_buffer.started` / `.stopped` / `.cleared` events the API sends on that
transport, and decides when the queued audio is cut (the client's `output_audio_buffer.clear`, or the user speaking
over the reply).

States (`OutputBufferState`): `IDLE` while nothing plays; `PLAYING` from the track's first frame of a response's
audio until it has played out or is cleared.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocol import ServerEvent
from session.commands import ClearAudio
from session.outbox import Outbox


class OutputBufferState(Enum):
    IDLE = "idle"
    PLAYING = "playing"


@dataclass(frozen=True)
class PlayedAudio:
    """What the track had played of the audio it dropped: `played_ms` of item `item_id` (response `response_id`)."""

    response_id: str
    item_id: str
    played_ms: float


class OutputAudioBuffer:
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._playing: str | None = None  # the response whose audio is on the track

    @property
    def state(self) -> OutputBufferState:
        return OutputBufferState.IDLE if self._playing is None else OutputBufferState.PLAYING

    def clear(self) -> None:
        """Cut what is queued now; the track answers with `on_cleared`."""
        self._outbox.command(ClearAudio())

    def on_started(self, response_id: str) -> None:
        self._playing = response_id
        self._outbox.emit(ServerEvent.OUTPUT_AUDIO_BUFFER_STARTED, response_id=response_id)

    def on_stopped(self, response_id: str) -> None:
        if self._playing == response_id:
            self._playing = None
        self._outbox.emit(ServerEvent.OUTPUT_AUDIO_BUFFER_STOPPED, response_id=response_id)

    def on_cleared(self, played: PlayedAudio | None) -> None:
        """The track dropped what it held (None: it held nothing, and nothing is said)."""
        self._playing = None
        if played is not None:
            self._outbox.emit(ServerEvent.OUTPUT_AUDIO_BUFFER_CLEARED, response_id=played.response_id)
