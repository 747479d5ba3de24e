"""The pipeline's LLM and STT stages: our own Pipecat processors over the providers' chat clients and transcribers.

The LLM stage is not Pipecat's `OpenAILLMService`: a Realtime response needs things that service does not expose —
per-response instructions, tools, token limits and temperature, tool-call arguments streamed as they arrive (the
client runs the tools), and the provider's token usage and finish reason. Provider failures end the response (or the
transcription) with the `ProviderFailure` that `providers.errors.provider_failure` makes of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from loguru import logger
from pipecat.frames.frames import Frame, LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from context_window import ContextOverflow, ContextWindow, Fitted
from pipeline_frames import (
    ResponseEndFrame,
    ResponseMessageStartFrame,
    ResponseRequestFrame,
    ResponseStartFrame,
    ResponseTextFrame,
    ResponseToolCallFrame,
    TranscribeFrame,
)
from providers.base import ChatClient, Transcriber, Transcript
from providers.errors import provider_failure
from session.commands import ProviderFailure, RunResponse, Transcribe, Usage
from tool_calls import FilterOutput, TextToolCallFilter

# --------------------------------------------------------------------------------------------------------------
# LLM
# --------------------------------------------------------------------------------------------------------------


class ChatLLMProcessor(FrameProcessor):
    """Runs a `ResponseRequestFrame` through a chat client and pushes what comes back as frames.

    Audio responses send their text to the TTS as `LLMTextFrame`s between `LLMFullResponseStart/EndFrame`; text
    responses send `ResponseTextFrame`s, which the TTS passes through untouched. An `InterruptionFrame` cancels
    the request in flight (Pipecat cancels the processing task), which closes the HTTP stream.
    """

    def __init__(self, client: ChatClient) -> None:
        super().__init__(name=f"llm-{client.name}")
        self._client = client
        self._message_started = False
        self._window = ContextWindow(client.context_tokens, self._count_tokens)
        self._dropped = 0  # items the previous request left out: a new truncation is logged once

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, ResponseRequestFrame):
            await self._generate(frame.run)
        else:
            await self.push_frame(frame, direction)

    async def _generate(self, run: RunResponse) -> None:
        response_id = run.response_id
        audio = run.modality == "audio"
        await self.push_frame(ResponseStartFrame(response_id))
        if audio:
            await self.push_frame(LLMFullResponseStartFrame())
        usage: Usage | None = None
        finish_reason: str | None = None
        failure: ProviderFailure | None = None
        if run.has_images and not self._client.supports_images:
            failure = ProviderFailure(
                "images_not_supported",
                f"The LLM provider '{self._client.name}' does not accept images; the image stays in the "
                "conversation but this response cannot use it.",
                error_type="invalid_request_error",
            )
        else:
            self._message_started = False
            text_calls = None
            if run.tools and run.tool_choice != "none":
                text_calls = TextToolCallFilter({tool["function"]["name"] for tool in run.tools})
            try:
                fitted = await self._fit(run)
                usage, finish_reason = await self._stream_reply(fitted.run, text_calls)
                self._window.calibrate(fitted, usage)
            except ContextOverflow as overflow:
                failure = ProviderFailure("context_length_exceeded", str(overflow), error_type="invalid_request_error")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = provider_failure("LLM", self._client.name, exc, self._client.secrets)
        if audio:
            await self.push_frame(LLMFullResponseEndFrame())
        await self.push_frame(ResponseEndFrame(response_id, usage, finish_reason, failure))

    async def _fit(self, run: RunResponse) -> Fitted:
        """The request as the context can hold it (the session's `truncation`, see `context_window.py`)."""
        fitted = await self._window.fit(run)
        if fitted.dropped_items != self._dropped and run.in_band:
            self._dropped = fitted.dropped_items
            if fitted.dropped_items:
                kept = sum(len(unit.item_ids) for unit in fitted.run.units)
                logger.info(
                    f"Session {run.session_id}: context truncated ({run.truncation.kind}): {fitted.dropped_items} "
                    f"oldest item(s) left out, {kept} kept; about {fitted.tokens_before} -> {fitted.tokens_after} "
                    f"tokens of {self._window.context_tokens}"
                )
        return fitted

    async def _count_tokens(self, run: RunResponse) -> int | None:
        try:
            return await self._client.count_tokens(run)
        except Exception as exc:  # counting is a refinement: the estimate stands without it
            logger.warning(f"{self._client.name}: could not count the prompt's tokens ({exc}); estimating")
            return None

    async def _stream_reply(
        self, run: RunResponse, text_calls: TextToolCallFilter | None
    ) -> tuple[Usage | None, str | None]:
        """Pushes the reply's text and tool calls as they stream in; returns the usage and finish reason."""
        response_id, audio = run.response_id, run.modality == "audio"
        usage: Usage | None = None
        finish_reason: str | None = None
        async with contextlib.aclosing(self._client.stream(run)) as chunks:
            async for chunk in chunks:
                if chunk.text and text_calls is None:
                    await self._push_text(response_id, chunk.text, audio)
                elif chunk.text and text_calls is not None:
                    await self._push_filtered(response_id, text_calls.feed(chunk.text), audio)
                    if text_calls.ended:  # leaving the loop closes the stream, which stops the generation
                        return usage, "tool_calls"
                for call in chunk.tool_calls:
                    frame = ResponseToolCallFrame(
                        response_id=response_id,
                        index=call.index,
                        call_id=call.call_id,
                        tool_name=call.name,
                        arguments=call.arguments,
                    )
                    await self.push_frame(frame)
                usage = chunk.usage or usage
                finish_reason = chunk.finish_reason or finish_reason
        if text_calls is not None:
            await self._push_filtered(response_id, text_calls.finish(), audio)
        return usage, finish_reason

    async def _push_text(self, response_id: str, text: str, audio: bool) -> None:
        if not self._message_started:
            self._message_started = True
            await self.push_frame(ResponseMessageStartFrame(response_id))
        if audio:
            await self.push_frame(LLMTextFrame(text))
        else:
            await self.push_frame(ResponseTextFrame(response_id, text))

    async def _push_filtered(self, response_id: str, output: FilterOutput, audio: bool) -> None:
        if output.text:
            await self._push_text(response_id, output.text, audio)
        for index, call in enumerate(output.calls or []):
            # Indices of their own, apart from the provider's structured calls.
            frame = ResponseToolCallFrame(
                response_id=response_id,
                index=TEXT_CALL_INDEX + index,
                call_id=call.call_id,
                tool_name=call.name,
                arguments=call.arguments,
            )
            await self.push_frame(frame)


TEXT_CALL_INDEX = 1_000_000  # the first index of tool calls found in a reply's text, clear of the provider's own


# --------------------------------------------------------------------------------------------------------------
# STT
# --------------------------------------------------------------------------------------------------------------


class TranscriptionPort(Protocol):
    async def on_transcription_delta(self, request_id: str, delta: str) -> None: ...

    async def on_transcription_done(
        self, request_id: str, transcript: Transcript | None, failure: ProviderFailure | None
    ) -> None: ...


class TranscriptionProcessor(FrameProcessor):
    """Transcribes committed user turns, each in a task of its own, so that the pipeline goes on meanwhile."""

    def __init__(self, transcriber: Transcriber, port: TranscriptionPort) -> None:
        super().__init__(name=f"stt-{transcriber.name}")
        self._transcriber = transcriber
        self._port = port
        self._tasks: set[asyncio.Task[None]] = set()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscribeFrame):
            task = asyncio.create_task(self._transcribe(frame.request), name=f"stt-{frame.request.request_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self.push_frame(frame, direction)

    async def _transcribe(self, request: Transcribe) -> None:
        async def on_delta(delta: str) -> None:
            await self._port.on_transcription_delta(request.request_id, delta)

        try:
            transcript = await self._transcriber.transcribe(request, on_delta)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = provider_failure("STT", self._transcriber.name, exc, self._transcriber.secrets)
            await self._port.on_transcription_done(request.request_id, None, failure)
            return
        await self._port.on_transcription_done(request.request_id, transcript, None)

    async def cleanup(self) -> None:
        await super().cleanup()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
