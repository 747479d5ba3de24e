"""The STT / LLM / TTS providers, chosen by configuration, created once per process and shared by all sessions.

`STT`, `LLM` and `TTS` are the table: each name that STT_PROVIDER, LLM_PROVIDER or TTS_PROVIDER accepts, the
factory of its provider (in `providers/`, one module per provider family) and the key it needs.
`Providers.from_settings` checks the configuration (a provider without its key stops the server at startup) and
holds the process-wide clients (HTTP connection pools, loaded models). Each session's pipeline asks it for its
stages: `create_stt()`, `create_llm()` and `create_tts()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pipecat.services.tts_service import TTSService

from config import Settings
from pipeline_stages import ChatLLMProcessor, TranscriptionPort, TranscriptionProcessor
from providers import deepgram, edge, elevenlabs, local, openai_compatible, siliconflow
from providers.base import ChatClient, Transcriber, TtsProvider
from providers.errors import ConfigurationError
from turn_detection import TurnModels

P = TypeVar("P")

# --------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------


def _always(_settings: Settings) -> bool:
    return True


def _on_openai(base_url: Callable[[Settings], str]) -> Callable[[Settings], bool]:
    """OpenAI's own endpoint needs a key; a local OpenAI-compatible server (vLLM, llama.cpp) usually does not."""
    return lambda settings: openai_compatible.is_openai_host(base_url(settings))


@dataclass(frozen=True)
class Factory(Generic[P]):
    """How to make one provider, and the key it needs."""

    create: Callable[[Settings], P]
    keys: tuple[str, ...] = ()  # the settings that may hold its key: any one will do; the message names the first
    key_needed: Callable[[Settings], bool] = _always


@dataclass(frozen=True)
class Stage(Generic[P]):
    """One stage's providers, by the name its variable (STT_PROVIDER …) takes."""

    variable: str
    factories: dict[str, Factory[P]]

    def create(self, settings: Settings) -> P:
        name = getattr(settings, self.variable.lower())
        factory = self.factories.get(name)
        if factory is None:
            raise ConfigurationError(f"{self.variable}={name} is not available in this build.")
        if factory.keys and factory.key_needed(settings):
            _require(settings, f"{self.variable}={name}", *factory.keys)
        return factory.create(settings)


def _require(settings: Settings, provider: str, name: str, *alternatives: str) -> None:
    """Raises `ConfigurationError` naming the variable unless `name` (or one of its `alternatives`) is set."""
    if any(settings.secret(key) for key in (name, *alternatives)):
        return
    others = "".join(f" (or {alternative.upper()})" for alternative in alternatives)
    raise ConfigurationError(f"{provider} needs {name.upper()}{others}: set it in the environment or in .env.")


STT = Stage[Transcriber](
    "STT_PROVIDER",
    {
        "local_whisper": Factory(local.create_stt),
        "openai_whisper": Factory(
            openai_compatible.create_stt,
            ("openai_api_key", "openai_stt_api_key"),
            _on_openai(openai_compatible.stt_base_url),
        ),
        "deepgram": Factory(deepgram.create_stt, ("deepgram_api_key",)),
        "siliconflow": Factory(siliconflow.create_stt, ("siliconflow_api_key",)),
    },
)
LLM = Stage[ChatClient](
    "LLM_PROVIDER",
    {
        "local": Factory(local.create_llm),
        "openai": Factory(
            openai_compatible.create_llm, ("openai_api_key",), _on_openai(openai_compatible.llm_base_url)
        ),
        "ollama": Factory(openai_compatible.create_ollama_llm),
        "siliconflow": Factory(siliconflow.create_llm, ("siliconflow_api_key",)),
    },
)
TTS = Stage[TtsProvider](
    "TTS_PROVIDER",
    {
        "piper": Factory(local.create_tts),
        "openai_tts": Factory(
            openai_compatible.create_tts,
            ("openai_api_key", "openai_tts_api_key"),
            _on_openai(openai_compatible.tts_base_url),
        ),
        "edge_tts": Factory(edge.create_tts),
        "elevenlabs": Factory(elevenlabs.create_tts, ("elevenlabs_api_key",)),
        "siliconflow": Factory(siliconflow.create_tts, ("siliconflow_api_key",)),
        "zh_fastspeech": Factory(local.create_zh_tts),
    },
)


# --------------------------------------------------------------------------------------------------------------
# The process's providers
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmServer:
    """The local LLM's model server: llama.cpp's OpenAI-compatible HTTP server on loopback (`model_server.py`)."""

    base_url: str
    api_key: str
    model: str

    def client(self, settings: Settings) -> ChatClient:
        return openai_compatible.OpenAICompatibleChat(
            "local",
            self.base_url,
            self.api_key,
            self.model,
            settings.llm_timeout_s,
            context_tokens=settings.local_llm_context,  # each conversation's share, as in-process
            supports_images=False,
        )


@dataclass
class Providers:
    """The providers chosen by configuration, shared by every session of the process."""

    stt: Transcriber
    llm: ChatClient
    tts: TtsProvider
    turn_models: TurnModels
    description: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, llm_server: LlmServer | None = None) -> Providers:
        """`llm_server`: the model server the supervisor started (LLM_PROVIDER=local with WORKERS > 1), reached
        over loopback in place of a model of this process's own."""
        stt = STT.create(settings)
        llm = LLM.create(settings) if llm_server is None else llm_server.client(settings)
        tts = TTS.create(settings)
        description = {"stt": stt.name, "llm": llm.name, "tts": tts.name}
        return cls(stt=stt, llm=llm, tts=tts, turn_models=TurnModels(), description=description)

    @staticmethod
    def check(settings: Settings) -> None:
        """Raises `ConfigurationError` if the configured providers cannot work (a missing key, say).

        Callable with or without a running loop (uvicorn's workers build the app inside theirs)."""

        async def create_and_close() -> None:
            for stage in (STT, LLM, TTS):
                await stage.create(settings).close()

        with ThreadPoolExecutor(1, thread_name_prefix="check-providers") as pool:
            pool.submit(asyncio.run, create_and_close()).result()

    @property
    def secrets(self) -> list[str]:
        return [*self.stt.secrets, *self.llm.secrets, *self.tts.secrets]

    def create_stt(self, port: TranscriptionPort) -> TranscriptionProcessor:
        return TranscriptionProcessor(self.stt, port)

    def create_llm(self) -> ChatLLMProcessor:
        return ChatLLMProcessor(self.llm)

    def create_tts(self, session_id: str) -> TTSService:
        return self.tts.create(session_id)

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
