"""ElevenLabs text-to-speech: the HTTP streaming endpoint, raw PCM at 24 kHz."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from pipecat.services.tts_service import TTSService

from config import Settings
from providers.base import REQUEST_ID_HEADER
from providers.errors import ProviderStatusError, error_body_detail, tidy_detail
from providers.openai_compatible import http_client, httpx_errors
from providers.tts import OUTPUT_RATE, SpeedVoiceProvider, StreamingTTS

_ELEVENLABS_VOICE_ID = re.compile(r"[A-Za-z0-9]{20}")


class ElevenLabsTTS(StreamingTTS):
    """ElevenLabs' streaming endpoint (`POST /v1/text-to-speech/{voice_id}/stream`), raw PCM at 24 kHz."""

    def __init__(self, *, http: httpx2.AsyncClient, base_url: str, api_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http = http
        self._base_url = base_url
        self._api_key = api_key

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        url = f"{self._base_url}/v1/text-to-speech/{urllib.parse.quote(self.voice, safe='')}/stream"
        body: dict[str, Any] = {"text": text, "model_id": self.model}
        if self.speed != 1.0:
            body["voice_settings"] = {"speed": min(max(self.speed, 0.7), 1.2)}  # ElevenLabs' range
        headers = {"xi-api-key": self._api_key, REQUEST_ID_HEADER: self.next_request_id()}
        params = {"output_format": f"pcm_{OUTPUT_RATE}"}
        with httpx_errors():
            async with self._http.stream("POST", url, params=params, json=body, headers=headers) as response:
                if response.status_code != 200:
                    detail = error_body_detail(await response.aread())
                    raise ProviderStatusError(response.status_code, tidy_detail(detail, self._secrets))
                async for chunk in response.aiter_bytes():
                    yield chunk


class ElevenLabsTtsProvider(SpeedVoiceProvider):
    name = "elevenlabs"
    timeout_s: float

    def __init__(self, api_key: str, voice_id: str, model: str, base_url: str, timeout_s: float) -> None:
        self.secrets = [api_key]
        self.default_voice = voice_id
        self.model = model
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http: httpx2.AsyncClient | None = None

    def create(self, session_id: str) -> TTSService:
        if self._http is None:
            self._http = http_client(self.timeout_s)
        options = self.service_options(session_id)
        return ElevenLabsTTS(http=self._http, base_url=self._base_url, api_key=self._api_key, **options)

    def voice_for(self, requested: str) -> str:
        """An ElevenLabs voice id passes through; OpenAI's voice names get the configured voice."""
        return requested if _ELEVENLABS_VOICE_ID.fullmatch(requested) else self.default_voice

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def create_tts(settings: Settings) -> ElevenLabsTtsProvider:
    api_key = settings.secret("elevenlabs_api_key") or ""  # service_providers checked that it is set
    voice, model, base_url = settings.elevenlabs_voice_id, settings.elevenlabs_model, settings.elevenlabs_base_url
    return ElevenLabsTtsProvider(api_key, voice, model, base_url, settings.tts_timeout_s)
