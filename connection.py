"""One client's connection to one session: events in and out over an `EventChannel`, the session's pipeline, and
the limits that keep a connection from costing more than it should.

`RealtimeConnection` knows no transport: the WebSocket endpoint gives it a `transport.WebSocketChannel`, and a
second transport gives it its own channel. It feeds client events to the `RealtimeSession`, hands the session's
commands to the `PipelineManager`, sends the session's events, and reports what the pipeline's stages find back to
the session (it is the pipeline's port).

States (`ConnectionState`): `OPEN` while events flow; `ENDING` once the server has decided to end it (its lifetime
is over, the client stopped reading, the server is shutting down), when only the final events still go out; `CLOSED`
once the channel is closed and the pipeline stopped. A client that leaves closes it from `OPEN` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from enum import Enum

import orjson
from loguru import logger
from pipecat.frames.frames import ErrorFrame

from mcp_client import McpLimits, McpSessions
from metrics import SessionMetrics
from pipeline_manager import PipelineManager
from protocol import JsonDict, ProtocolError
from providers.base import Transcript
from providers.errors import ProviderError, VoiceLanguageUnavailable, provider_failure
from realtime_session import RealtimeSession
from service_providers import Providers
from session.commands import (
    CallMcpTool,
    CancelResponse,
    ClearAudio,
    EndAudio,
    FeedAudio,
    ListMcpTools,
    McpCallError,
    PlayAudio,
    ProviderFailure,
)
from transport import Ending, EventChannel, MediaOutput, RealtimeInputProcessor, RealtimeOutputProcessor
from turn_detection import TurnEvent, TurnEventKind


@dataclass(frozen=True)
class ConnectionLimits:
    max_event_bytes: int = 24 * 1024 * 1024
    lifetime_s: float = 30 * 60
    mcp: McpLimits = field(default_factory=McpLimits)


class ConnectionState(Enum):
    OPEN = "open"
    ENDING = "ending"
    CLOSED = "closed"


def _dumps(event: JsonDict) -> str:
    """An event as compact JSON text: orjson (several times faster; every audio delta goes through here), or the
    standard library for what orjson does not encode (integers past 64 bits)."""
    try:
        return orjson.dumps(event).decode()
    except TypeError:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class RealtimeConnection:
    """Serves one session over one channel until the client leaves or the server ends it (`end`); the pipeline
    never outlives it."""

    def __init__(
        self,
        channel: EventChannel,
        session: RealtimeSession,
        providers: Providers,
        limits: ConnectionLimits | None = None,
        media: MediaOutput | None = None,
    ) -> None:
        self.channel = channel
        self.media = media  # the outgoing audio track of a media transport (WebRTC); None on a WebSocket
        self.opened = asyncio.Event()  # the session has sent its first events: media input may flow
        self.session = session
        self.limits = limits or ConnectionLimits()
        self.state = ConnectionState.OPEN
        self.ending = Ending.CLIENT_LEFT
        self._providers = providers
        self._reader: asyncio.Task[None] | None = None
        self._end_tasks: set[asyncio.Task[None]] = set()
        self.pipeline = PipelineManager(
            providers, self, RealtimeInputProcessor(self), RealtimeOutputProcessor(self), session.id
        )
        self.mcp = McpSessions(self, self.limits.mcp, session.id)
        self.metrics = SessionMetrics()

    async def run(self) -> None:
        started = time.monotonic()
        self.metrics.opened()
        await self.channel.start()
        expiry: asyncio.Task[None] | None = None
        try:
            await self.pipeline.start()
            self.session.open()
            await self.pump()
            self.opened.set()
            self._reader = asyncio.create_task(self._read_loop(), name=f"reader-{self.session.id}")
            expiry = asyncio.create_task(self._expire(), name=f"expiry-{self.session.id}")
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader  # cancelled by `end`; a cancellation of `run` itself propagates below
            if self._reader.cancelled() and self.state is ConnectionState.OPEN:
                raise asyncio.CancelledError
        except Exception:
            logger.exception(f"Session {self.session.id} failed")
            self.ending = Ending.SERVER_ERROR
        finally:
            if self.state is ConnectionState.OPEN:
                self.state = ConnectionState.ENDING
            for task in (expiry, self._reader):
                if task is not None:
                    task.cancel()
            await self.mcp.close()
            await self.pipeline.stop()
            await self.channel.close(self.ending)
            await asyncio.gather(*self._end_tasks, return_exceptions=True)
            self.state = ConnectionState.CLOSED
            self.metrics.closed()
            logger.info(
                f"Session {self.session.id} closed after {time.monotonic() - started:.1f}s: {self.ending.value}"
            )

    async def end(self, ending: Ending, final_events: list[JsonDict] | None = None) -> None:
        """Ends the connection from the server side: the final events go out, then the channel closes."""
        if self.state is not ConnectionState.OPEN:
            return
        for event in final_events or []:
            self._send(event)
        if self.state is ConnectionState.OPEN:
            self.state, self.ending = ConnectionState.ENDING, ending
            await self._close_channel()

    async def _close_channel(self) -> None:
        await self.channel.close(self.ending)
        if self._reader is not None:
            self._reader.cancel()

    async def shutdown(self) -> None:
        """The server is stopping: responses in progress fail with an error saying so, and the channel closes."""
        self.session.fail_all_responses(
            ProviderFailure("server_shutting_down", "The server is shutting down; reconnect to continue.")
        )
        await self.pump()
        await self.end(Ending.SERVER_SHUTDOWN, self.session.take_events())

    async def _expire(self) -> None:
        await asyncio.sleep(self.limits.lifetime_s)
        minutes = self.limits.lifetime_s / 60
        error = ProtocolError(f"Your session hit the maximum duration of {minutes:g} minutes.", code="session_expired")
        await self.end(Ending.EXPIRED, [error.to_event()])

    async def _read_loop(self) -> None:
        while (data := await self.channel.receive()) is not None:
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
        reported = False  # the track reported what had played of the audio it dropped: the session's answer
        audio: list[FeedAudio] = []
        for command in self.session.take_commands():
            if isinstance(command, FeedAudio):
                audio.append(command)
                continue
            if isinstance(command, PlayAudio | EndAudio | ClearAudio):
                reported = self._play(command) or reported
                continue
            if isinstance(command, ListMcpTools | CallMcpTool):
                await self.mcp.execute(command)
                continue
            if isinstance(command, CancelResponse):
                await self.mcp.execute(command)
            await self.pipeline.execute(command)
        # Audio is analysed last: the turn events it leads to make commands (and a pump) of their own, which must
        # come after the ones the same client event made.
        for command in audio:
            await self.pipeline.execute(command)
        if reported:
            await self.pump()

    def _play(self, command: PlayAudio | EndAudio | ClearAudio) -> bool:
        """Hands a command to the track; True when the session was told what the track dropped."""
        media = self.media
        if media is None:
            return False
        if isinstance(command, PlayAudio):
            media.play(command)
        elif isinstance(command, EndAudio):
            media.end(command)
        else:
            self.session.on_output_audio_cleared(media.clear())
            return True
        return False

    def _send(self, event: JsonDict) -> None:
        if self.state is not ConnectionState.OPEN:
            return
        self.metrics.sent(event)
        if not self.channel.send(_dumps(event)):
            # The client stopped reading: end the connection rather than buffer without bound.
            self.state, self.ending = ConnectionState.ENDING, Ending.STOPPED_READING
            task = asyncio.create_task(self._close_channel())
            self._end_tasks.add(task)
            task.add_done_callback(self._end_tasks.discard)

    # ---- the pipeline's port ---------------------------------------------------------------------------------

    async def on_response_end(self, response_id: str) -> None:
        await self.pipeline.on_response_end(response_id)

    async def on_interruption_done(self) -> None:
        await self.pipeline.on_interruption_done()

    async def on_mcp_tools_listed(self, request_id: str, tools: list[JsonDict] | None, failure: str | None) -> None:
        self.session.on_mcp_tools_listed(request_id, tools, failure)
        await self.pump()

    async def on_mcp_call_done(self, request_id: str, output: str | None, error: McpCallError | None) -> None:
        self.session.on_mcp_call_done(request_id, output, error)
        await self.pump()

    async def on_turn_events(self, events: list[TurnEvent], analysed_ms: float) -> None:
        for event in events:
            if event.kind is TurnEventKind.SPEECH_STARTED:
                self.session.on_speech_started(event.at_ms)
            elif event.kind is TurnEventKind.SPEECH_PAUSED:
                self.session.on_speech_paused(event.at_ms)
            elif event.kind is TurnEventKind.SPEECH_RESUMED:
                self.session.on_speech_resumed()
            elif event.kind is TurnEventKind.LIKELY_COMPLETE:
                self.session.on_turn_likely_complete()
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
        if isinstance(exception, VoiceLanguageUnavailable):
            self.session.on_reply_not_spoken(response_id, failure)
            await self.pump()
            return
        self.session.on_response_failed(response_id, failure)
        await self.pump()
        await self.pipeline.execute(CancelResponse(response_id))
