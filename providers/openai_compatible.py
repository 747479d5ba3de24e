"""OpenAI's API and every endpoint that speaks it (Ollama, vLLM, llama.cpp, SiliconFlow …), through the openai SDK:
streaming chat completions, transcriptions and speech.

All three calls translate the SDK's exceptions (and the httpx2 ones it lets through while a response streams) into
ours with one context manager, `openai_errors`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import httpx2
import openai
from pipecat.services.openai.tts import VALID_VOICES as OPENAI_TTS_VOICES
from pipecat.services.tts_service import TTSService

from audio_utils import PIPELINE_INPUT_RATE, pcm16_to_wav
from config import Settings
from providers.base import REQUEST_ID_HEADER, ChatChunk, DeltaCallback, Transcript, request_id
from providers.errors import (
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    ProviderUnavailable,
    redact,
)
from providers.tts import SpeedVoiceProvider, StreamingTTS
from session.commands import RunResponse, Transcribe

# --------------------------------------------------------------------------------------------------------------
# HTTP clients and their errors
# --------------------------------------------------------------------------------------------------------------


def http_client(timeout_s: float) -> httpx2.AsyncClient:
    """The SDK's own client class (httpx2: httpx's connection pool scans every pooled connection with a syscall on
    each request, which dominated the server's CPU with 50 sessions)."""
    return openai.DefaultAsyncHttpxClient(
        timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
    )


def openai_client(base_url: str, api_key: str | None, timeout_s: float) -> openai.AsyncOpenAI:
    # No retries: a failed request fails its response at once (the Realtime client decides whether to retry).
    return openai.AsyncOpenAI(
        base_url=base_url.rstrip("/"), api_key=api_key or "no-key", max_retries=0, http_client=http_client(timeout_s)
    )


@contextlib.contextmanager
def httpx_errors() -> Iterator[None]:
    """httpx / httpx2 failures (a timeout, a refused or dropped connection) as ours.

    The type's name is all they say: their messages may quote URLs."""
    try:
        yield
    except (httpx.TimeoutException, httpx2.TimeoutException) as exc:
        raise ProviderTimeout(f"timed out ({type(exc).__name__})") from None
    except (httpx.TransportError, httpx2.TransportError) as exc:
        raise ProviderUnavailable(f"could not be reached or dropped the connection ({type(exc).__name__})") from None


StatusDetail = Callable[[openai.APIStatusError, list[str]], str]


def sdk_error_detail(exc: openai.APIStatusError, secrets: list[str]) -> str:
    """The provider's reason, as the SDK parsed its answer: the JSON body's `error.message` (or `message`), else the
    SDK's own message."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return redact(error["message"], secrets)
    return redact(exc.message or "", secrets)


@contextlib.contextmanager
def openai_errors(secrets: list[str], detail: StatusDetail = sdk_error_detail) -> Iterator[None]:
    """The openai SDK's exceptions, and the httpx2 ones it lets through while a response streams, as ours.

    `detail` words an HTTP error's reason (SiliconFlow's speech endpoint has its own)."""
    try:
        with httpx_errors():
            yield
    except openai.APIStatusError as exc:
        raise ProviderStatusError(exc.status_code, detail(exc, secrets)) from None
    except openai.APITimeoutError:  # before its base class, APIConnectionError
        raise ProviderTimeout("timed out") from None
    except openai.APIConnectionError:
        raise ProviderUnavailable("could not be reached or dropped the connection") from None
    except openai.APIError as exc:  # an error event in a stream, an answer the SDK could not read
        raise ProviderError(redact(str(exc), secrets)) from None


# --------------------------------------------------------------------------------------------------------------
# LLM: /chat/completions
# --------------------------------------------------------------------------------------------------------------


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
        context_tokens: int,
        supports_images: bool = True,
    ) -> None:
        self.name = name
        self.model = model
        self.context_tokens = context_tokens
        self.supports_images = supports_images
        self.secrets = [api_key] if api_key else []
        self._token_limit_field = token_limit_field
        self._client = openai_client(base_url, api_key, timeout_s)

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
        with openai_errors(self.secrets):
            stream = await self._client.post(
                "/chat/completions",
                body=params,
                options={"headers": {REQUEST_ID_HEADER: request_id(run.session_id, run.response_id)}},
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async with stream:
                async for chunk in stream:
                    if isinstance(chunk, dict):
                        yield ChatChunk.from_openai(chunk)

    async def count_tokens(self, run: RunResponse) -> int | None:
        return None  # an OpenAI-compatible API has no tokenizer endpoint: its usage calibrates the estimates

    async def close(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------------------------------------------
# STT: /audio/transcriptions
# --------------------------------------------------------------------------------------------------------------


class OpenAITranscriber:
    """OpenAI's `/audio/transcriptions` (whisper-1, gpt-4o-transcribe …) or any endpoint speaking it."""

    def __init__(self, name: str, base_url: str, api_key: str | None, model: str, timeout_s: float) -> None:
        self.name = name
        self.model = model
        self.secrets = [api_key] if api_key else []
        self._client = openai_client(base_url, api_key, timeout_s)

    async def transcribe(self, turn: Transcribe, on_delta: DeltaCallback | None = None) -> Transcript:
        pcm = turn.pcm
        params: dict[str, Any] = {
            "model": self.model,
            "file": ("audio.wav", pcm16_to_wav(pcm, PIPELINE_INPUT_RATE), "audio/wav"),
            "response_format": "json",
            "extra_headers": {REQUEST_ID_HEADER: request_id(turn.session_id, turn.request_id)},
        }
        if turn.language:
            params["language"] = turn.language
        if turn.prompt:
            params["prompt"] = turn.prompt
        with openai_errors(self.secrets):
            result = await self._client.audio.transcriptions.create(**params)
        return Transcript(text=result.text.strip(), duration_s=len(pcm) / 2 / PIPELINE_INPUT_RATE)

    async def close(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------------------------------------------
# TTS: /audio/speech
# --------------------------------------------------------------------------------------------------------------


class SpeechTTS(StreamingTTS):
    """An `/audio/speech` endpoint through the openai SDK, its PCM (24 kHz) streamed as it arrives.

    `request` sends what OpenAI's endpoint takes — what Pipecat's `OpenAITTSService` sent (its `instructions`
    setting aside, which nothing of ours sets); other providers adapt `request` and `error_detail`. Pipecat's
    service itself is not used: it reports some HTTP errors as text-only `ErrorFrame`s."""

    def __init__(self, *, client: openai.AsyncOpenAI, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client

    def error_detail(self, exc: openai.APIStatusError, secrets: list[str]) -> str:
        """An HTTP error's reason, for `ProviderStatusError.detail`."""
        return sdk_error_detail(exc, secrets)

    @property
    def read_size(self) -> int | None:
        """How much audio makes one frame (None: each piece as it arrives). Half a second, as Pipecat's own OpenAI
        service read it: a frame becomes an `output_audio.delta`, and each costs the server CPU (at 100 ms pieces
        a loaded server answered half as fast)."""
        return self.chunk_size

    def request(self, text: str) -> dict[str, Any]:
        """The arguments of `audio.speech.with_streaming_response.create` for `text`."""
        if self.voice not in OPENAI_TTS_VOICES:  # the configured voice is none of OpenAI's; worded as Pipecat did
            voices = ", ".join(sorted(OPENAI_TTS_VOICES))
            raise ProviderError(f"OpenAI TTS voice {self.voice!r} is not supported (must be one of: {voices})")
        return {"input": text, "model": self.model, "voice": self.voice, "response_format": "pcm", "speed": self.speed}

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        request = {**self.request(text), "extra_headers": {REQUEST_ID_HEADER: self.next_request_id()}}
        with openai_errors(self._secrets, self.error_detail):
            async with self._client.audio.speech.with_streaming_response.create(**request) as response:
                async for chunk in response.iter_bytes(self.read_size):
                    yield chunk


class SpeechProvider(SpeedVoiceProvider):
    """A TTS provider on an `/audio/speech` endpoint: one SDK client (one connection pool) for every session's
    service. OpenAI's voices pass through; any other requested voice gets the configured one."""

    service: type[SpeechTTS] = SpeechTTS

    def __init__(
        self, *, name: str, base_url: str, api_key: str | None, model: str, voice: str, timeout_s: float
    ) -> None:
        self.name = name
        self.secrets = [api_key] if api_key else []
        self.model = model
        self.default_voice = voice
        self.timeout_s = timeout_s
        self._client = openai_client(base_url, api_key, timeout_s)

    def create(self, session_id: str) -> TTSService:
        return self.service(client=self._client, **self.service_options(session_id))

    def voice_for(self, requested: str) -> str:
        return requested if requested in OPENAI_TTS_VOICES else self.default_voice

    async def close(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------------------------------------------
# Factories (service_providers' table), and the endpoints they use
# --------------------------------------------------------------------------------------------------------------


def is_openai_host(base_url: str) -> bool:
    return "api.openai.com" in base_url


def stt_base_url(settings: Settings) -> str:
    return (settings.openai_stt_base_url or settings.openai_base_url).rstrip("/")


def llm_base_url(settings: Settings) -> str:
    return settings.openai_base_url


def tts_base_url(settings: Settings) -> str:
    return (settings.openai_tts_base_url or settings.openai_base_url).rstrip("/")


def create_stt(settings: Settings) -> OpenAITranscriber:
    api_key = settings.secret("openai_stt_api_key") or settings.secret("openai_api_key")
    return OpenAITranscriber(
        "openai_whisper", stt_base_url(settings), api_key, settings.openai_stt_model, settings.stt_timeout_s
    )


def create_llm(settings: Settings) -> OpenAICompatibleChat:
    base_url = llm_base_url(settings)
    return OpenAICompatibleChat(
        "openai",
        base_url,
        settings.secret("openai_api_key"),
        settings.openai_model,
        settings.llm_timeout_s,
        # OpenAI's own endpoint deprecated `max_tokens`; OpenAI-compatible servers mostly know only that one.
        token_limit_field="max_completion_tokens" if is_openai_host(base_url) else "max_tokens",
        context_tokens=settings.llm_context_tokens,
    )


def create_ollama_llm(settings: Settings) -> OpenAICompatibleChat:
    return OpenAICompatibleChat(
        "ollama",
        settings.ollama_base_url,
        None,
        settings.ollama_model,
        settings.llm_timeout_s,
        context_tokens=settings.llm_context_tokens,
    )


def create_tts(settings: Settings) -> SpeechProvider:
    return SpeechProvider(
        name="openai_tts",
        base_url=tts_base_url(settings),
        api_key=settings.secret("openai_tts_api_key") or settings.secret("openai_api_key"),
        model=settings.openai_tts_model,
        voice=settings.openai_tts_voice,
        timeout_s=settings.tts_timeout_s,
    )
