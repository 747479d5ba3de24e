"""The Realtime transport: WebSocket messages in → session → frames, and frames → session → WebSocket messages out.

`RealtimeConnection` owns one socket, its `RealtimeSession` and its `PipelineManager`. The two processors at the
ends of the pipeline report to it: `RealtimeInputProcessor` (first) catches errors that services push upstream,
`RealtimeOutputProcessor` (last) turns what the LLM and TTS produced into session calls. Audio deltas leave as soon
as the TTS produces them: nothing here paces output to real time, as the real API does not either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass
from typing import Protocol

from loguru import logger
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
from pipeline_manager import PipelineManager
from protocol import JsonDict, ProtocolError
from providers.base import Transcript
from providers.errors import ProviderError, provider_failure
from realtime_session import RealtimeSession
from service_providers import Providers
from session.commands import CancelResponse, ProviderFailure
from turn_detection import TurnEvent, TurnEventKind

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


@dataclass(frozen=True)
class ConnectionLimits:
    max_outgoing_events: int = 10_000
    max_event_bytes: int = 24 * 1024 * 1024
    lifetime_s: float = 30 * 60


class RealtimeConnection:
    """One WebSocket connection: reads client events, writes server events, runs the session's pipeline.

    The connection ends when the client leaves, or when the server ends it (`end`): its lifetime is over, it stopped
    reading (its outgoing queue is full), or the server shuts down. Either way the pipeline stops with it."""

    def __init__(
        self,
        websocket: WebSocket,
        session: RealtimeSession,
        providers: Providers,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.websocket = websocket
        self.session = session
        self.limits = limits or ConnectionLimits()
        self._providers = providers
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue(maxsize=self.limits.max_outgoing_events)
        self._closing = False  # no more events are queued for the client
        self._ended = False
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._end_tasks: set[asyncio.Task[None]] = set()
        self.close_reason = "client closed"
        self.pipeline = PipelineManager(providers, self, RealtimeInputProcessor(self), RealtimeOutputProcessor(self))

    async def run(self) -> None:
        """Serves the connection until it ends; the pipeline never outlives it."""
        started = time.monotonic()
        writer = self._writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.session.id}")
        expiry: asyncio.Task[None] | None = None
        try:
            await self.pipeline.start()
            self.session.open()
            await self.pump()
            self._reader = asyncio.create_task(self._read_loop(), name=f"reader-{self.session.id}")
            expiry = asyncio.create_task(self._expire(), name=f"expiry-{self.session.id}")
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader  # cancelled by `end`; a cancellation of `run` itself propagates below
            if self._reader.cancelled() and not self._ended:
                raise asyncio.CancelledError
        except Exception:
            logger.exception(f"Session {self.session.id} failed")
            self.close_reason = "server error"
        finally:
            self._closing = True
            for task in (expiry, self._reader):
                if task is not None:
                    task.cancel()
            await self.pipeline.stop()
            await self._stop_writer(writer)
            await self._close_socket(1011 if self.close_reason == "server error" else 1000)
            await asyncio.gather(*self._end_tasks, return_exceptions=True)
            logger.info(
                f"Session {self.session.id} closed after {time.monotonic() - started:.1f}s: {self.close_reason}"
            )

    async def end(self, code: int, reason: str, final_events: list[JsonDict] | None = None) -> None:
        """Ends the connection from the server side: the final events go out, then the close frame."""
        if self._ended:
            return
        self._ended = True
        self.close_reason = reason
        for event in final_events or []:
            self._send(event)
        self._closing = True
        if self._writer is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._outgoing.put_nowait(None)  # the writer sends what is queued, then stops
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), timeout=1.0)
        await self._close_socket(code)
        if self._reader is not None:
            self._reader.cancel()

    async def shutdown(self) -> None:
        """The server is stopping: responses in progress fail with an error saying so, and the socket closes 1001."""
        self.session.fail_all_responses(
            ProviderFailure("server_shutting_down", "The server is shutting down; reconnect to continue.")
        )
        await self.pump()
        await self.end(1001, "server shutting down", self.session.take_events())

    async def _expire(self) -> None:
        await asyncio.sleep(self.limits.lifetime_s)
        minutes = self.limits.lifetime_s / 60
        error = ProtocolError(f"Your session hit the maximum duration of {minutes:g} minutes.", code="session_expired")
        await self.end(1000, "session expired", [error.to_event()])

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            data = text if text is not None else (message.get("bytes") or b"")
            if len(data) > self.limits.max_event_bytes:
                self.session.report_error(
                    ProtocolError(
                        f"The event is {len(data)} bytes; the largest this server accepts is "
                        f"{self.limits.max_event_bytes} bytes (15 MiB of audio per append).",
                        code="event_too_large",
                    )
                )
            else:
                try:
                    self.session.receive(data)
                except Exception:
                    logger.exception(f"Session {self.session.id}: unexpected error handling a client event")
                    self.session.report_error(
                        ProtocolError(
                            "The server failed to handle the event.", code="server_error", type="server_error"
                        )
                    )
            await self.pump()

    async def pump(self) -> None:
        """Sends the session's pending events and hands its pending commands to the pipeline."""
        for event in self.session.take_events():
            self._send(event)
        for command in self.session.take_commands():
            await self.pipeline.execute(command)

    def _send(self, event: JsonDict) -> None:
        if self._closing:
            return
        try:
            self._outgoing.put_nowait(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        except asyncio.QueueFull:
            # The client stopped reading: end the connection rather than buffer without bound.
            self._closing = True
            task = asyncio.create_task(self.end(1008, "client stopped reading (outgoing queue full)"))
            self._end_tasks.add(task)
            task.add_done_callback(self._end_tasks.discard)

    async def _write_loop(self) -> None:
        while True:
            text = await self._outgoing.get()
            if text is None:
                return
            try:
                await self.websocket.send_text(text)
            except Exception:
                self._closing = True
                return

    async def _stop_writer(self, writer: asyncio.Task[None]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._outgoing.put_nowait(None)
        try:
            await asyncio.wait_for(writer, timeout=1.0)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _close_socket(self, code: int = 1000) -> None:
        if self.websocket.client_state == WebSocketState.CONNECTED:
            # Bounded: a client that stopped reading may never take the close frame either.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.websocket.close(code=code), timeout=2.0)

    # ---- SessionPort -------------------------------------------------------------------------------------------

    async def on_response_end(self, response_id: str) -> None:
        await self.pipeline.on_response_end(response_id)

    async def on_interruption_done(self) -> None:
        await self.pipeline.on_interruption_done()

    async def on_turn_events(self, events: list[TurnEvent], analysed_ms: float) -> None:
        for event in events:
            if event.kind is TurnEventKind.SPEECH_STARTED:
                self.session.on_speech_started(event.at_ms)
            elif event.kind is TurnEventKind.SPEECH_PAUSED:
                self.session.on_speech_paused(event.at_ms)
            else:
                self.session.on_speech_stopped(event.at_ms, event.speech_end_ms)
        self.session.on_audio_analysed(analysed_ms)
        await self.pump()

    async def on_transcription_delta(self, request_id: str, delta: str) -> None:
        self.session.on_transcription_delta(request_id, delta)
        await self.pump()

    async def on_transcription_done(
        self, request_id: str, transcript: Transcript | None, failure: ProviderFailure | None
    ) -> None:
        if transcript is not None:
            self.session.on_transcription_completed(request_id, transcript.text)
        elif failure is not None:
            logger.warning(f"Session {self.session.id}: transcription failed: {failure.message}")
            self.session.on_transcription_failed(request_id, failure)
        await self.pump()

    async def on_pipeline_error(self, frame: ErrorFrame) -> None:
        """A service reported an error (the TTS, usually): the response in progress fails, the session goes on."""
        response_id = self.pipeline.current_response_id
        # Our TTS services raise `ProviderError`s, which Pipecat passes on as the frame's `exception`; an error of
        # Pipecat's own (a reply that produced no audio, say) carries only its text.
        exception = frame.exception if frame.exception is not None else ProviderError(frame.error)
        failure = provider_failure("TTS", self._providers.tts.name, exception, self._providers.secrets)
        logger.warning(f"Session {self.session.id}: pipeline error: {failure.message}")
        if response_id is None:
            return
        self.session.on_response_failed(response_id, failure)
        await self.pump()
        await self.pipeline.execute(CancelResponse(response_id))
