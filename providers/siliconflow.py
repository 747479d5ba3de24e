"""SiliconFlow (api.siliconflow.cn): OpenAI-compatible chat, transcription and speech endpoints, one key for all three.

Chat and transcription are the OpenAI-compatible clients as they are; speech is OpenAI's `/audio/speech` with
SiliconFlow's own request fields and voice ids (see SILICONFLOW.md)."""

from __future__ import annotations

from typing import Any

import openai

from config import Settings
from providers.errors import error_body_detail, tidy_detail
from providers.openai_compatible import OpenAICompatibleChat, OpenAITranscriber, SpeechProvider, SpeechTTS
from providers.tts import OUTPUT_RATE

SILICONFLOW_PRESET_VOICES = frozenset({"alex", "anna", "bella", "benjamin", "charles", "claire", "david", "diana"})


class SiliconFlowTTS(SpeechTTS):
    """SiliconFlow's `/audio/speech` (CosyVoice2 …) through the openai SDK: streamed PCM at 24 kHz."""

    def request(self, text: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "voice": self.voice,
            "input": text,
            "response_format": "pcm",
            "extra_body": {"sample_rate": OUTPUT_RATE, "stream": True},  # SiliconFlow's PCM default is 44.1 kHz
        }
        if self.speed != 1.0:
            request["speed"] = self.speed
        return request

    @property
    def read_size(self) -> int | None:
        return None  # SiliconFlow's audio goes on as it arrives, as it always has

    def error_detail(self, exc: openai.APIStatusError, secrets: list[str]) -> str:
        # SiliconFlow's own error body (`{"code", "message", "data"}`, or plain text), worded as the other
        # non-OpenAI providers' reasons are.
        try:
            body = exc.response.text
        except Exception:  # the body was not read
            return ""
        return tidy_detail(error_body_detail(body), secrets)


class SiliconFlowTtsProvider(SpeechProvider):
    service = SiliconFlowTTS

    def __init__(self, api_key: str, base_url: str, model: str, voice: str, timeout_s: float) -> None:
        super().__init__(
            name="siliconflow",
            base_url=base_url,
            api_key=api_key,
            model=model,
            voice=_voice_id(model, voice),
            timeout_s=timeout_s,
        )

    def voice_for(self, requested: str) -> str:
        """SiliconFlow's preset names and voice ids pass through; OpenAI's voice names get the configured voice."""
        if ":" in requested or requested in SILICONFLOW_PRESET_VOICES:
            return _voice_id(self.model, requested)
        return self.default_voice


def _voice_id(model: str, voice: str) -> str:
    """A preset's name becomes `MODEL:name`; a full voice id (`MODEL:name`, `speech:…`) stays as it is."""
    return voice if ":" in voice else f"{model}:{voice}"


# --------------------------------------------------------------------------------------------------------------
# Factories (service_providers' table)
# --------------------------------------------------------------------------------------------------------------


def _endpoint(settings: Settings) -> tuple[str, str]:
    """The base URL and the key, which service_providers checked is set."""
    return settings.siliconflow_base_url, settings.secret("siliconflow_api_key") or ""


def create_stt(settings: Settings) -> OpenAITranscriber:
    base_url, api_key = _endpoint(settings)
    return OpenAITranscriber("siliconflow", base_url, api_key, settings.siliconflow_stt_model, settings.stt_timeout_s)


def create_llm(settings: Settings) -> OpenAICompatibleChat:
    base_url, api_key = _endpoint(settings)
    model, timeout_s = settings.siliconflow_model, settings.llm_timeout_s
    return OpenAICompatibleChat(
        "siliconflow", base_url, api_key, model, timeout_s, context_tokens=settings.llm_context_tokens
    )


def create_tts(settings: Settings) -> SiliconFlowTtsProvider:
    base_url, api_key = _endpoint(settings)
    model, voice = settings.siliconflow_tts_model, settings.siliconflow_tts_voice
    return SiliconFlowTtsProvider(api_key, base_url, model, voice, settings.tts_timeout_s)
