"""The Realtime transport: how a session's JSON events reach its client, and the two ends of its Pipecat pipeline.

* `EventChannel` is the seam a transport implements: client events in, server events out (bounded: a client that
  stops reading is told so by `send` returning False), and a close that says why (`Ending`). `WebSocketChannel` is
  the WebSocket's; a second transport (a WebRTC data channel, say) implements the same four methods, and
  `connection.RealtimeConnection` runs a session over either without knowing which.
* `RealtimeInputProcessor` (first in the pipeline) catches the errors that services push upstream;
  `RealtimeOutputProcessor` (last) turns what the LLM and TTS produced into session calls. Audio deltas leave as
  soon as the TTS produces them: nothing here paces output to real time, as the real API does not either.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from enum import Enum
from typing import Protocol

from pipecat.frames.frames import (
    AggregatedTextFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from audio_utils import PIPELINE_OUTPUT_RATE, StreamResampler
from pipeline_frames import (
    ResponseEndFrame,
    ResponseMessageStartFrame,
    ResponseStartFrame,
    ResponseTextFrame,
    ResponseToolCallFrame,
)
from realtime_session import RealtimeSession
from session.commands import EndAudio, PlayAudio
from session.output_audio import PlayedAudio

_NO_SPACE_NEEDED = re.compile(r"[\s\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


class SessionPort(Protocol):
    """What the pipeline's edge processors need from the connection."""

    session: RealtimeSession

    async def pump(self) -> None: ...

    async def on_response_end(self, response_id: str) -> None: ...

    async def on_interruption_done(self) -> None: ...

    async def on_pipeline_error(self, frame: ErrorFrame) -> None: ...


class RealtimeInputProcessor(FrameProcessor):
    """First processor of the pipeline: errors pushed upstream by the services end here."""

    def __init__(self, port: SessionPort) -> None:
        super().__init__(name="realtime-input")
        self._port = port

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame) and direction == FrameDirection.UPSTREAM:
            await self._port.on_pipeline_error(frame)
            return
        await self.push_frame(frame, direction)


class RealtimeOutputProcessor(FrameProcessor):
    """Last processor of the pipeline: reports each response's text, audio and tool calls to the session."""

    def __init__(self, port: SessionPort) -> None:
        super().__init__(name="realtime-output")
        self._port = port
        self._response_id: str | None = None
        self._resampler: StreamResampler | None = None
        self._last_spoken_char = ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        session = self._port.session
        response_id = self._response_id
        if isinstance(frame, ResponseStartFrame):
            self._response_id = frame.response_id
            self._resampler = None
            self._last_spoken_char = ""
        elif isinstance(frame, TTSAudioRawFrame):
            if response_id is not None:
                session.on_audio(response_id, self._to_output_rate(frame))
                await self._port.pump()
        elif isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame):
            if response_id is not None and frame.will_be_spoken and not frame.skip_tts:
                session.on_transcript(response_id, self._spaced(frame.text))
                await self._port.pump()
        elif isinstance(frame, ResponseTextFrame):
            session.on_text(frame.response_id, frame.text)
            await self._port.pump()
        elif isinstance(frame, ResponseMessageStartFrame):
            session.on_message_started(frame.response_id)
            await self._port.pump()
        elif isinstance(frame, ResponseToolCallFrame):
            session.on_tool_call(frame.response_id, frame.index, frame.call_id, frame.tool_name, frame.arguments)
            await self._port.pump()
        elif isinstance(frame, ResponseEndFrame):
            if frame.failure is not None:
                session.on_response_failed(frame.response_id, frame.failure)
            else:
                session.on_response_done(frame.response_id, frame.usage, frame.finish_reason)
            self._response_id = None
            await self._port.pump()
            await self._port.on_response_end(frame.response_id)
        elif isinstance(frame, InterruptionFrame):
            self._response_id = None
            await self.push_frame(frame, direction)
            await self._port.on_interruption_done()
        elif not isinstance(frame, TTSTextFrame):
            await self.push_frame(frame, direction)

    def _to_output_rate(self, frame: TTSAudioRawFrame) -> bytes:
        if frame.sample_rate == PIPELINE_OUTPUT_RATE:
            return frame.audio
        if self._resampler is None or self._resampler.in_rate != frame.sample_rate:
            self._resampler = StreamResampler(frame.sample_rate, PIPELINE_OUTPUT_RATE)
        return self._resampler.process(frame.audio)

    def _spaced(self, text: str) -> str:
        """Sentences come from the TTS without the space between them; put it back (not for CJK text)."""
        if not text:
            return text
        needs_space = (
            self._last_spoken_char
            and not _NO_SPACE_NEEDED.match(self._last_spoken_char)
            and not _NO_SPACE_NEEDED.match(text[0])
        )
        self._last_spoken_char = text[-1]
        return f" {text}" if needs_space else text


# --------------------------------------------------------------------------------------------------------------
# The seam between a session and its client
# --------------------------------------------------------------------------------------------------------------


class Ending(Enum):
    """Why a connection ended; each transport tells its client in its own way (a WebSocket by its close code)."""

    CLIENT_LEFT = "client closed"
    EXPIRED = "session expired"
    SERVER_SHUTDOWN = "server shutting down"
    STOPPED_READING = "client stopped reading (outgoing queue full)"
    SERVER_ERROR = "server error"


class EventChannel(Protocol):
    """How one session's events travel between the server and its client."""

    async def start(self) -> None:
        """Ready to send (called once, before the first `send`)."""

    async def receive(self) -> str | bytes | None:
        """The client's next event, as it arrived; None once the client has gone."""

    def send(self, text: str) -> bool:
        """Queues one server event (JSON text) without waiting; False when the queue is full (the client stopped
        reading), and the event is dropped."""

    async def close(self, ending: Ending) -> None:
        """Sends what is queued (within a bound), then ends the connection saying why. Safe to call twice."""


class MediaOutput(Protocol):
    """The outgoing audio track of a media transport (WebRTC): reply audio played in real time."""

    def play(self, command: PlayAudio) -> None:
        """Queues audio behind what is already queued."""

    def end(self, command: EndAudio) -> None:
        """The response's audio is all queued."""

    def clear(self) -> PlayedAudio | None:
        """Drops what is queued at once; what had played of the audio dropped (None: nothing was queued)."""


WEBSOCKET_CLOSE_CODES = {
    Ending.CLIENT_LEFT: 1000,
    Ending.EXPIRED: 1000,
    Ending.SERVER_SHUTDOWN: 1001,
    Ending.STOPPED_READING: 1008,
    Ending.SERVER_ERROR: 1011,
}
FLUSH_TIMEOUT_S = 1.0  # what is still queued at the end gets this long to go out
CLOSE_TIMEOUT_S = 2.0  # a client that stopped reading may never take the close frame either


class WebSocketChannel:
    """A Starlette WebSocket as an `EventChannel`: a bounded queue drained by a writer task."""

    def __init__(self, websocket: WebSocket, max_queued_events: int) -> None:
        self._websocket = websocket
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=max_queued_events)
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="websocket-writer")

    async def receive(self) -> str | bytes | None:
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    def send(self, text: str) -> bool:
        if self._closed:
            return True
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    async def close(self, ending: Ending) -> None:
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # the writer sends what is queued, then stops
            try:
                await asyncio.wait_for(asyncio.shield(writer), FLUSH_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        if self._websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._websocket.close(code=WEBSOCKET_CLOSE_CODES[ending]), CLOSE_TIMEOUT_S)

    async def _write_loop(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                return
            try:
                await self._websocket.send_text(text)
            except Exception:
                self._closed = True
                return
