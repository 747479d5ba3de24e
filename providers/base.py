"""What every provider of a stage offers the server: the chat client (LLM), the transcriber (STT) and the TTS provider,
and the plain data they hand back.

One instance of each is created per process (`service_providers.Providers`) and shared by every session, so none of
them keeps per-session state: a session's pipeline gets a TTS service of its own from `TtsProvider.create`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from session.commands import RunResponse, Transcribe, Usage

# Every request to a provider names the session and the request it is for: a provider's logs can then be matched to
# sessions (OpenAI documents this header for that; others ignore it), and so can the tests' loopback fakes.
REQUEST_ID_HEADER = "X-Client-Request-Id"


def request_id(session_id: str, request: str) -> str:
    return f"{session_id}:{request}"


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

    @classmethod
    def from_openai(cls, chunk: dict[str, Any]) -> ChatChunk:
        """A streamed `chat.completion.chunk`, as OpenAI-compatible endpoints and llama.cpp both send it."""
        result = cls()
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


class ChatClient(Protocol):
    """A streaming chat-completions client shared by every session.

    `stream` raises `providers.errors.ProviderError`s (whatever else it raises is reported as a generic failure)."""

    name: str
    supports_images: bool
    secrets: list[str]
    context_tokens: int  # the model's context window, which truncation keeps each request inside

    def stream(self, run: RunResponse) -> AsyncIterator[ChatChunk]: ...

    async def count_tokens(self, run: RunResponse) -> int | None:
        """The request's prompt tokens by the model's own tokenizer, or None when only the provider knows."""

    async def close(self) -> None: ...


# --------------------------------------------------------------------------------------------------------------
# STT
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Transcript:
    text: str
    duration_s: float


class DeltaCallback(Protocol):
    async def __call__(self, delta: str) -> None: ...


class Transcriber(Protocol):
    """Speech-to-text on a committed user turn (PCM16 mono 16 kHz), shared by every session.

    `transcribe` raises `providers.errors.ProviderError`s; `on_delta` gets the text as it is recognised, for
    providers that stream it. The turn's language and prompt are the session's transcription settings."""

    name: str
    secrets: list[str]

    async def transcribe(self, turn: Transcribe, on_delta: DeltaCallback | None = None) -> Transcript: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------------------------


class TtsProvider(Protocol):
    """Makes one TTS service per session pipeline, sharing process-wide resources between them.

    The services report failures as `ErrorFrame`s whose `exception` is a `providers.errors.ProviderError`."""

    name: str
    secrets: list[str]

    def create(self, session_id: str) -> TTSService: ...

    def voice_for(self, requested: str) -> str: ...

    def settings_delta(self, voice: str, speed: float) -> TTSSettings: ...

    async def close(self) -> None: ...
