"""The LLM and TTS providers, chosen by configuration, created once per process and shared by all sessions.

`Providers.from_settings` checks the configuration (a provider without its key stops the server at startup) and
holds the process-wide clients (HTTP connection pools, loaded models). Each session's pipeline asks it for its
processors: `create_llm()` and `create_tts()`.

The LLM side is our own small Pipecat processor over an OpenAI-compatible chat client rather than Pipecat's
`OpenAILLMService`: a Realtime response needs things that service does not expose — per-response instructions,
tools, token limits and temperature, tool-call arguments streamed as they arrive (the client runs the tools), and
the provider's token usage and finish reason. Text-to-speech uses Pipecat's services as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import httpx2
import openai
from pipecat.frames.frames import (
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.frames.frames import Frame as PipecatFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.tts import VALID_VOICES as OPENAI_TTS_VOICES
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator
from pipecat.utils.text.transforms.strip_markdown import strip_markdown
from pipecat.utils.types import NOT_GIVEN, NotGiven

import local_models
from audio_utils import PIPELINE_INPUT_RATE, pcm16_to_wav
from config import Settings
from pipeline_frames import (
    ResponseEndFrame,
    ResponseMessageStartFrame,
    ResponseRequestFrame,
    ResponseStartFrame,
    ResponseTextFrame,
    ResponseToolCallFrame,
    TranscribeFrame,
)
from session.commands import ProviderFailure, RunResponse, Transcribe, Usage
from tool_calls import FilterOutput, TextToolCallFilter
from turn_detection import TurnModels


class ConfigurationError(RuntimeError):
    """The configuration cannot work (a provider without its key, an unknown provider): the server won't start."""


# --------------------------------------------------------------------------------------------------------------
# Failures → what the client is told
# --------------------------------------------------------------------------------------------------------------

_SECRET_PATTERN = re.compile(r"(sk|ek|key|Bearer)[-_ ]?[A-Za-z0-9_\-\.]{8,}", re.IGNORECASE)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_PATTERN.sub("***", text)


def _status_failure(stage: str, provider: str, status: int, detail: str) -> ProviderFailure:
    if status in (401, 403):
        code, what = "provider_authentication_failed", "rejected the credentials"
    elif status == 429:
        code, what = "provider_rate_limited", "is rate limiting requests"
    elif 400 <= status < 500:
        code, what = "provider_rejected_request", "rejected the request"
    else:
        code, what = "provider_error", "had an internal error"
    message = f"The {stage} provider '{provider}' {what} (HTTP {status})"
    if detail and status not in (401, 403):
        message += f": {detail[:300]}"
    return ProviderFailure(code=code, message=message + ".")


def provider_failure(stage: str, provider: str, exc: BaseException, secrets: list[str]) -> ProviderFailure:
    """A provider exception as the failure reported to the client, with any credentials removed."""
    if isinstance(exc, openai.APIStatusError):
        detail = redact(_error_detail(exc), secrets)
        return _status_failure(stage, provider, exc.status_code, detail)
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | httpx2.TimeoutException | TimeoutError):
        return ProviderFailure("provider_timeout", f"The {stage} provider '{provider}' timed out.")
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | httpx2.TransportError):
        return ProviderFailure(
            "provider_unavailable", f"The {stage} provider '{provider}' could not be reached or dropped the connection."
        )
    detail = redact(str(exc), secrets)[:300]
    return ProviderFailure("provider_error", f"The {stage} provider '{provider}' failed: {detail}")


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return exc.message or ""


_STATUS_IN_MESSAGE = re.compile(r"status(?: code)?[:= ]+(\d{3})", re.IGNORECASE)


def failure_from_error_text(stage: str, provider: str, text: str, secrets: list[str]) -> ProviderFailure:
    """A failure from a Pipecat `ErrorFrame` that carries only a message."""
    text = redact(text, secrets)
    match = _STATUS_IN_MESSAGE.search(text)
    if match:
        return _status_failure(stage, provider, int(match.group(1)), "")
    lowered = text.lower()
    if "timeout" in lowered or "timed out" in lowered:
        return ProviderFailure("provider_timeout", f"The {stage} provider '{provider}' timed out.")
    if "connect" in lowered:
        return ProviderFailure(
            "provider_unavailable", f"The {stage} provider '{provider}' could not be reached or dropped the connection."
        )
    return ProviderFailure("provider_error", f"The {stage} provider '{provider}' failed: {text[:300]}")


# --------------------------------------------------------------------------------------------------------------
# LLM
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ToolCallDelta:
    index: int
    call_id: str | None
    name: str | None
    arguments: str


@dataclass
class ChatChunk:
    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


class ChatClient(Protocol):
    """A streaming chat-completions client shared by every session."""

    name: str
    supports_images: bool
    secrets: list[str]

    def stream(self, run: RunResponse) -> AsyncIterator[ChatChunk]: ...

    async def close(self) -> None: ...


class OpenAICompatibleChat:
    """Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Ollama, vLLM, SiliconFlow, llama.cpp …)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_s: float,
        *,
        token_limit_field: str = "max_tokens",
        supports_images: bool = True,
    ) -> None:
        self.name = name
        self.model = model
        self.supports_images = supports_images
        self.secrets = [api_key] if api_key else []
        self._token_limit_field = token_limit_field
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "no-key", max_retries=0, http_client=_http_client(timeout_s)
        )

    async def stream(self, run: RunResponse) -> AsyncIterator[ChatChunk]:
        # The SDK's low-level `post` rather than `chat.completions.create`: the latter re-validates and copies the
        # whole conversation on every request (milliseconds per response for long conversations, all of it on the
        # event loop) and builds a pydantic model per streamed chunk. Errors are the SDK's own either way.
        params: dict[str, Any] = {
            "model": self.model,
            "messages": run.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": run.temperature,
            self._token_limit_field: run.max_tokens,
        }
        if run.tools:
            params["tools"] = run.tools
            params["tool_choice"] = run.tool_choice
        stream = await self._client.post(
            "/chat/completions", body=params, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
        )
        async with stream:
            async for chunk in stream:
                if isinstance(chunk, dict):
                    yield _chat_chunk_from_dict(chunk)

    async def close(self) -> None:
        await self._client.close()


def _http_client(timeout_s: float) -> httpx2.AsyncClient:
    """The SDK's own client class (httpx2: httpx's connection pool scans every pooled connection with a syscall on
    each request, which dominated the server's CPU with 50 sessions)."""
    return openai.DefaultAsyncHttpxClient(
        timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
    )


class LocalChat:
    """The in-process llama.cpp model (`local_models.LocalLLM`): same chunks as an OpenAI-compatible endpoint."""

    name = "local"
    supports_images = False

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self._settings = settings
        self.model_path = local_models.llm_model_path(settings.local_llm_model, _cache_dir(settings), _log_progress)
        self._llm: local_models.LocalLLM | None = None

    async def load(self) -> None:
        settings = self._settings
        self._llm = await asyncio.to_thread(
            local_models.LocalLLM.load,
            self.model_path,
            n_ctx=settings.local_llm_context,
            max_concurrent=settings.local_llm_parallel,
            n_threads=settings.local_llm_threads,
            default_max_tokens=settings.llm_max_tokens,
        )
        # Every llama.cpp slot starts holding the default instructions: a new conversation's first turn then
        # reuses their KV cache instead of evaluating them (a few hundred ms on two cores).
        primer = {
            "messages": [{"role": "system", "content": settings.llm_system_prompt}, {"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        }
        await asyncio.gather(*(self._drain(primer) for _ in range(self._llm.max_concurrent)))

    async def _drain(self, request: dict[str, Any]) -> None:
        assert self._llm is not None
        async for _ in self._llm.stream(request):
            pass

    async def stream(self, run: RunResponse) -> AsyncIterator[ChatChunk]:
        if self._llm is None:
            raise RuntimeError("the local LLM is not loaded")
        request: dict[str, Any] = {
            "messages": run.messages,
            "max_tokens": run.max_tokens,
            "temperature": run.temperature,
        }
        if run.tools:
            request["tools"] = run.tools
            request["tool_choice"] = run.tool_choice
        async for chunk in self._llm.stream(request):
            yield _chat_chunk_from_dict(chunk)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.close()


def _chat_chunk_from_dict(chunk: dict[str, Any]) -> ChatChunk:
    result = ChatChunk()
    usage = chunk.get("usage")
    if usage:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        result.usage = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached)
    choices = chunk.get("choices") or []
    if choices:
        choice = choices[0]
        result.finish_reason = choice.get("finish_reason")
        delta = choice.get("delta") or {}
        result.text = delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            result.tool_calls.append(
                ToolCallDelta(
                    call.get("index", 0), call.get("id"), function.get("name"), function.get("arguments") or ""
                )
            )
    return result


def _cache_dir(settings: Settings) -> Path:
    return settings.model_cache_dir or local_models.default_cache_dir()


def _log_progress(message: str) -> None:
    from loguru import logger

    logger.info(message)


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
                usage, finish_reason = await self._stream_reply(run, text_calls)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = provider_failure("LLM", self._client.name, exc, self._client.secrets)
        if audio:
            await self.push_frame(LLMFullResponseEndFrame())
        await self.push_frame(ResponseEndFrame(response_id, usage, finish_reason, failure))

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


TEXT_CALL_INDEX = 1_000_000


# --------------------------------------------------------------------------------------------------------------
# STT
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Transcript:
    text: str
    duration_s: float


class Transcriber(Protocol):
    """Speech-to-text on a committed user turn, shared by every session."""

    name: str
    secrets: list[str]

    async def transcribe(
        self, pcm: bytes, language: str | None, prompt: str | None, on_delta: DeltaCallback | None = None
    ) -> Transcript: ...

    async def close(self) -> None: ...


class DeltaCallback(Protocol):
    async def __call__(self, delta: str) -> None: ...


class OpenAITranscriber:
    """OpenAI's `/audio/transcriptions` (whisper-1, gpt-4o-transcribe …) or any endpoint speaking it."""

    def __init__(self, name: str, base_url: str, api_key: str | None, model: str, timeout_s: float) -> None:
        self.name = name
        self.model = model
        self.secrets = [api_key] if api_key else []
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "no-key", max_retries=0, http_client=_http_client(timeout_s)
        )

    async def transcribe(
        self, pcm: bytes, language: str | None, prompt: str | None, on_delta: DeltaCallback | None = None
    ) -> Transcript:
        params: dict[str, Any] = {
            "model": self.model,
            "file": ("audio.wav", pcm16_to_wav(pcm, PIPELINE_INPUT_RATE), "audio/wav"),
            "response_format": "json",
        }
        if language:
            params["language"] = language
        if prompt:
            params["prompt"] = prompt
        result = await self._client.audio.transcriptions.create(**params)
        return Transcript(text=result.text.strip(), duration_s=len(pcm) / 2 / PIPELINE_INPUT_RATE)

    async def close(self) -> None:
        await self._client.close()


class LocalWhisperTranscriber:
    """faster-whisper on the packaged weights (`local_models.LocalWhisper`), in worker threads."""

    name = "local_whisper"

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self.model_path = local_models.whisper_model_path(settings.whisper_model, _cache_dir(settings))
        self._language = settings.whisper_language
        self._model: local_models.LocalWhisper | None = None

    async def load(self) -> None:
        self._model = await asyncio.to_thread(local_models.LocalWhisper.load, self.model_path)
        await self._model.warm_up()

    async def transcribe(
        self, pcm: bytes, language: str | None, prompt: str | None, on_delta: DeltaCallback | None = None
    ) -> Transcript:
        if self._model is None:
            raise RuntimeError("the local Whisper model is not loaded")
        result = await self._model.transcribe(pcm, language or self._language, prompt)
        return Transcript(text=result.text, duration_s=result.duration_s)

    async def close(self) -> None:
        if self._model is not None:
            self._model.close()


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
            transcript = await self._transcriber.transcribe(request.pcm, request.language, request.prompt, on_delta)
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


# --------------------------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------------------------


_CLAUSE_MARKS = frozenset(",，、:：;；—")
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
MIN_FIRST_CLAUSE_CHARS = 12  # Latin text; for CJK text 4 characters
MIN_FIRST_CLAUSE_CJK_CHARS = 4


class FirstClauseAggregator(SimpleTextAggregator):
    """Pipecat's sentence aggregation, except at the start of a reply: its first clause goes to the TTS as soon as
    its comma (or CJK "，", "、", "；" …) arrives, so the first audio does not wait for a long first sentence. Later
    text goes sentence by sentence, which sounds more natural."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._at_reply_start = True

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        for char in text:
            if self._at_reply_start and char in _CLAUSE_MARKS and self._clause_long_enough():
                clause = (self._text + char).strip(" ")
                self._text = ""
                self._at_reply_start = False
                yield Aggregation(text=clause, type=TextType.SENTENCE)
                continue
            async for aggregation in super().aggregate(char):
                self._at_reply_start = False
                yield aggregation

    def _clause_long_enough(self) -> bool:
        text = self._text.strip()
        if not text or text[-1].isdigit():  # "1,000" is a number, not a clause
            return False
        if _CJK_CHAR.search(text):
            return len(text) >= MIN_FIRST_CLAUSE_CJK_CHARS
        return len(text) >= MIN_FIRST_CLAUSE_CHARS

    async def flush(self) -> Aggregation | None:
        self._at_reply_start = True  # the reply ended: the next one starts afresh
        return await super().flush()

    async def handle_interruption(self) -> None:
        self._at_reply_start = True
        await super().handle_interruption()

    async def reset(self) -> None:
        self._at_reply_start = True
        await super().reset()


class _RealtimeTTS:
    """What every TTS service of ours adds to Pipecat's:

    - the first clause of a reply is spoken as soon as it is complete (`FirstClauseAggregator`);
    - it stays usable: Pipecat writes off a TTS service after a permanent-looking error (a 401, three silent
      replies) and then never speaks again; here each response reports its own failure to the client, and the next
      one tries again."""

    def _install_first_clause_aggregator(self) -> None:
        current = self._text_aggregator  # type: ignore[attr-defined]
        self._text_aggregator = FirstClauseAggregator(language=current.language)  # type: ignore[attr-defined]

    async def set_usable(self, is_usable: bool) -> None:
        await super().set_usable(True)  # type: ignore[misc]


class RealtimeOpenAITTS(_RealtimeTTS, OpenAITTSService):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._install_first_clause_aggregator()
        # A failed sentence fails its response at once (the client decides whether to retry), as the LLM does.
        self._client = self._client.with_options(max_retries=0)


class TtsProvider(Protocol):
    """Makes one TTS service per session pipeline, sharing process-wide resources between them."""

    name: str
    secrets: list[str]

    def create(self) -> TTSService: ...

    def voice_for(self, requested: str) -> str: ...

    def settings_delta(self, voice: str, speed: float) -> TTSSettings: ...

    async def close(self) -> None: ...


@dataclass
class PiperSettings(TTSSettings):
    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class SharedPiperTTS(_RealtimeTTS, TTSService):
    """Pipecat TTS on the process-wide Piper voice (Pipecat's own `PiperTTSService` loads a voice per pipeline)."""

    Settings = PiperSettings
    _settings: PiperSettings

    def __init__(self, piper: local_models.LocalPiper, **kwargs: Any) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=PiperSettings(model=None, voice=piper.name, language=None, speed=1.0),
            **kwargs,
        )
        self._install_first_clause_aggregator()
        self._piper = piper

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncIterator[PipecatFrame]:
        speed = self._settings.speed if isinstance(self._settings.speed, float | int) else 1.0
        voice = self._settings.voice if isinstance(self._settings.voice, str) else None
        audio = self._piper.synthesize(text, speed=float(speed), voice=voice)
        async for frame in self._stream_audio_frames_from_iterator(
            audio, in_sample_rate=self._piper.sample_rate, context_id=context_id
        ):
            yield frame


class PiperTtsProvider:
    name = "piper"

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self.voice_path = local_models.piper_voice_path(settings.piper_voice)
        self._piper: local_models.LocalPiper | None = None

    async def load(self) -> None:
        self._piper = await asyncio.to_thread(local_models.LocalPiper.load, self.voice_path)
        await self._piper.warm_up()

    def create(self) -> TTSService:
        if self._piper is None:
            raise RuntimeError("the Piper voice is not loaded")
        return SharedPiperTTS(
            self._piper,
            sample_rate=24_000,
            max_consecutive_zero_audio_contexts=0,
            text_transforms=[("*", strip_markdown)],  # models write markdown although told not to; never say it
        )

    def voice_for(self, requested: str) -> str:
        """OpenAI voice names and unknown strings map to the loaded voice; a speaker of a multi-speaker voice
        can be picked by its name."""
        if self._piper is not None and self._piper.speaker_id(requested) is not None:
            return requested
        return self._piper.name if self._piper is not None else requested

    def settings_delta(self, voice: str, speed: float) -> TTSSettings:
        return PiperSettings(voice=voice, speed=speed)

    async def close(self) -> None:
        if self._piper is not None:
            self._piper.close()


@dataclass
class OpenAITtsProvider:
    name: str
    secrets: list[str]
    base_url: str = ""
    api_key: str | None = None
    model: str = "gpt-4o-mini-tts"
    default_voice: str = "alloy"
    timeout_s: float = 30.0
    _http: httpx2.AsyncClient | None = None

    def create(self) -> TTSService:
        if self._http is None:
            self._http = _http_client(self.timeout_s)
        return RealtimeOpenAITTS(
            text_transforms=[("*", strip_markdown)],
            api_key=self.api_key or "no-key",
            base_url=self.base_url,
            http_client=self._http,
            sample_rate=24_000,
            max_consecutive_zero_audio_contexts=0,
            # Pipecat ends a silent audio context after this long; past our HTTP timeout, so that a stalled
            # provider is reported as the timeout it is.
            stop_frame_timeout_s=self.timeout_s + 1.0,
            settings=OpenAITTSService.Settings(model=self.model, voice=self.default_voice),
        )

    def voice_for(self, requested: str) -> str:
        """OpenAI's TTS knows the Realtime voices; anything else falls back to the configured voice."""
        return requested if requested in OPENAI_TTS_VOICES else self.default_voice

    def settings_delta(self, voice: str, speed: float) -> TTSSettings:
        return OpenAITTSService.Settings(voice=voice, speed=speed)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Providers:
    """The providers chosen by configuration, shared by every session of the process."""

    stt: Transcriber
    llm: ChatClient
    tts: TtsProvider
    turn_models: TurnModels
    description: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Providers:
        stt = _create_stt(settings)
        llm = _create_llm(settings)
        tts = _create_tts(settings)
        description = {"stt": stt.name, "llm": llm.name, "tts": tts.name}
        return cls(stt=stt, llm=llm, tts=tts, turn_models=TurnModels(), description=description)

    @staticmethod
    def check(settings: Settings) -> None:
        """Raises `ConfigurationError` if the configured providers cannot work (a missing key, say)."""
        for create in (_create_stt, _create_llm, _create_tts):
            asyncio.run(_close_quietly(create(settings)))

    @property
    def secrets(self) -> list[str]:
        return [*self.stt.secrets, *self.llm.secrets, *self.tts.secrets]

    def create_stt(self, port: TranscriptionPort) -> TranscriptionProcessor:
        return TranscriptionProcessor(self.stt, port)

    def create_llm(self) -> ChatLLMProcessor:
        return ChatLLMProcessor(self.llm)

    def create_tts(self) -> TTSService:
        return self.tts.create()

    async def load(self) -> None:
        """Loads and warms up the models of the local providers (a no-op for remote ones)."""
        await asyncio.to_thread(self.turn_models.warm_up)
        for provider in (self.stt, self.llm, self.tts):
            load: Callable[[], Any] | None = getattr(provider, "load", None)
            if load is not None:
                await load()

    async def close(self) -> None:
        await self.stt.close()
        await self.llm.close()
        await self.tts.close()
        self.turn_models.close()


async def _close_quietly(provider: Transcriber | ChatClient | TtsProvider) -> None:
    await provider.close()


def _require(settings: Settings, name: str, provider: str) -> str:
    value = settings.secret(name)
    if not value:
        raise ConfigurationError(f"{provider} needs {name.upper()}: set it in the environment or in .env.")
    return value


def _is_openai_host(base_url: str) -> bool:
    return "api.openai.com" in base_url


def _create_stt(settings: Settings) -> Transcriber:
    provider = settings.stt_provider
    if provider == "openai_whisper":
        base_url = (settings.openai_stt_base_url or settings.openai_base_url).rstrip("/")
        api_key = settings.secret("openai_stt_api_key") or settings.secret("openai_api_key")
        if not api_key and _is_openai_host(base_url):
            raise ConfigurationError(
                "STT_PROVIDER=openai_whisper needs OPENAI_API_KEY (or OPENAI_STT_API_KEY): set it in the environment "
                "or in .env."
            )
        return OpenAITranscriber("openai_whisper", base_url, api_key, settings.openai_stt_model, settings.stt_timeout_s)
    if provider == "local_whisper":
        return LocalWhisperTranscriber(settings)
    if provider in ("deepgram", "siliconflow"):
        import cloud_providers  # imports this module: imported here, when chosen

        return cloud_providers.create_stt(settings)
    raise ConfigurationError(f"STT_PROVIDER={provider} is not available in this build.")


def _create_llm(settings: Settings) -> ChatClient:
    provider = settings.llm_provider
    if provider == "openai":
        base_url = settings.openai_base_url
        # OpenAI's own endpoint needs a key; a local OpenAI-compatible server (vLLM, llama.cpp) usually does not.
        api_key = (
            _require(settings, "openai_api_key", "LLM_PROVIDER=openai")
            if _is_openai_host(base_url)
            else (settings.secret("openai_api_key"))
        )
        return OpenAICompatibleChat(
            "openai",
            base_url,
            api_key,
            settings.openai_model,
            settings.llm_timeout_s,
            token_limit_field="max_completion_tokens" if _is_openai_host(base_url) else "max_tokens",
        )
    if provider == "ollama":
        return OpenAICompatibleChat(
            "ollama", settings.ollama_base_url, None, settings.ollama_model, settings.llm_timeout_s
        )
    if provider == "local":
        return LocalChat(settings)
    if provider == "siliconflow":
        import cloud_providers  # imports this module: imported here, when chosen

        return cloud_providers.create_llm(settings)
    raise ConfigurationError(f"LLM_PROVIDER={provider} is not available in this build.")


def _create_tts(settings: Settings) -> TtsProvider:
    provider = settings.tts_provider
    if provider == "openai_tts":
        base_url = (settings.openai_tts_base_url or settings.openai_base_url).rstrip("/")
        api_key = settings.secret("openai_tts_api_key") or settings.secret("openai_api_key")
        if not api_key and _is_openai_host(base_url):
            raise ConfigurationError(
                "TTS_PROVIDER=openai_tts needs OPENAI_API_KEY (or OPENAI_TTS_API_KEY): set it in the environment "
                "or in .env."
            )
        return OpenAITtsProvider(
            name="openai_tts",
            secrets=[api_key] if api_key else [],
            base_url=base_url,
            api_key=api_key,
            model=settings.openai_tts_model,
            default_voice=settings.openai_tts_voice,
            timeout_s=settings.tts_timeout_s,
        )
    if provider == "piper":
        return PiperTtsProvider(settings)
    if provider in ("edge_tts", "elevenlabs", "siliconflow"):
        import cloud_providers  # imports this module: imported here, when chosen

        return cloud_providers.create_tts(settings)
    raise ConfigurationError(f"TTS_PROVIDER={provider} is not available in this build.")
