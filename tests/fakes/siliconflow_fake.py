"""A loopback fake of SiliconFlow's OpenAI-compatible API (api.siliconflow.cn/v1), from its API reference.

* `POST /v1/chat/completions`: OpenAI's streaming chat (the shared `FakeOpenAI` chunks, usage included), for
  SiliconFlow's model names only.
* `POST /v1/audio/transcriptions`: multipart `file` + `model` (FunAudioLLM/SenseVoiceSmall, TeleAI/TeleSpeechASR),
  answers `{"text": …}` (Chinese by default: SenseVoice's strength).
* `POST /v1/audio/speech`: JSON `model`, `input`, `voice` (`MODEL:preset`, e.g. `FunAudioLLM/CosyVoice2-0.5B:alex`,
  or a `speech:…` id of an uploaded voice), `response_format` (`pcm` here), `sample_rate` (for PCM one of 8000,
  16000, 24000, 32000, 44100; 44100 when left out), `stream`, `speed` (0.25-4); streams raw PCM16 mono at that rate.

Every request needs `Authorization: Bearer <key>` (otherwise 401, body "Invalid token"); other errors have SiliconFlow's
shape `{"code": int, "message": str, "data": null}`. Steps are `FakeOpenAI`'s (`script(kind, key, *steps)`):
"chat", "speech" (`status`, `stall_s`, `drop_after_bytes`), "transcription" (`text`, `status`, `delay_s`, `drop`).
"""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

from aiohttp import web

from tests.fakes.loopback import stream_pcm, tone
from tests.fakes.openai_fake import FakeOpenAI

CHAT_MODELS = {
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "deepseek-ai/DeepSeek-V3",
    "THUDM/glm-4-9b-chat",
}
STT_MODELS = {"FunAudioLLM/SenseVoiceSmall", "TeleAI/TeleSpeechASR"}
TTS_MODELS = {"FunAudioLLM/CosyVoice2-0.5B", "fishaudio/fish-speech-1.5"}
PRESET_VOICES = {"alex", "anna", "bella", "benjamin", "charles", "claire", "david", "diana"}
PCM_RATES = {8000, 16000, 24000, 32000, 44100}
ERRORS = {
    400: (20012, "Model does not exist. Please check it carefully."),
    429: (50603, "System is too busy now. Please try again later."),
    500: (50500, "Internal server error."),
    503: (50505, "Model service overloaded. Please try again later."),
}
DEFAULT_TRANSCRIPT = "今天天气怎么样？"


def error(status: int, message: str | None = None, code: int | None = None) -> web.Response:
    if status == 401:
        return web.Response(status=401, text="Invalid token")
    default_code, default_message = ERRORS.get(status, (50000, f"fake error {status}"))
    body = {"code": code or default_code, "message": message or default_message, "data": None}
    return web.json_response(body, status=status)


class FakeSiliconFlow(FakeOpenAI):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._sf_chat)
        app.router.add_post("/v1/audio/transcriptions", self._sf_transcription)
        app.router.add_post("/v1/audio/speech", self._sf_speech)
        return app

    def reset(self) -> None:
        self.scripts.clear()
        self.requests.clear()

    def script(self, kind: str, key: str, *steps: dict[str, Any]) -> None:
        """Steps for the `kind` ("chat", "speech", "transcription") requests of session `key`."""
        self.scripts.add(kind, key, steps)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _sf_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not self._authorized(request):
            await self._record(request)
            return error(401)
        if body.get("model") not in CHAT_MODELS:
            await self._record(request)
            return error(400)
        step = self.step("chat", request)
        if step.get("status"):
            await self._record(request)
            return error(step["status"], step.get("message"))
        return await self._chat(request, step)

    async def _sf_transcription(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        audio = upload.file.read() if upload is not None and hasattr(upload, "file") else b""
        fields = {key: value for key, value in form.items() if key != "file"}
        record = self._log(request, fields)
        if not self._authorized(request):
            return error(401)
        if fields.get("model") not in STT_MODELS:
            return error(400)
        try:
            with wave.open(io.BytesIO(audio)) as wav:
                record["audio"] = {
                    "sample_rate": wav.getframerate(),
                    "channels": wav.getnchannels(),
                    "sample_width": wav.getsampwidth(),
                    "ms": wav.getnframes() * 1000 / wav.getframerate(),
                }
        except (wave.Error, EOFError):
            return error(400, "Unsupported audio file.", 20015)
        step = self.step("transcription", request)
        if step.get("delay_s"):
            await asyncio.sleep(step["delay_s"])
        if step.get("drop"):
            request.transport.close()  # type: ignore[union-attr]
            return web.Response()
        if step.get("status"):
            return error(step["status"], step.get("message"))
        return web.json_response({"text": step.get("text", DEFAULT_TRANSCRIPT)})

    async def _sf_speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not self._authorized(request):
            return error(401)
        model = body.get("model")
        if model not in TTS_MODELS:
            return error(400)
        voice = body.get("voice", "")
        preset = voice.split(":", 1)[1] if voice.startswith(f"{model}:") else None
        if preset not in PRESET_VOICES and not voice.startswith("speech:"):
            return error(400, f"Invalid voice: {voice}", 20047)
        if not isinstance(body.get("input"), str) or not body["input"].strip():
            return error(400, "input is required", 20015)
        speed = body.get("speed", 1.0)
        if not 0.25 <= speed <= 4.0:
            return error(400, "speed must be between 0.25 and 4.0", 20015)
        if body.get("response_format", "mp3") != "pcm":
            return error(400, "This fake serves pcm only.", 20015)
        rate = body.get("sample_rate", 44100)
        if rate not in PCM_RATES:
            return error(400, f"Unsupported sample_rate {rate} for pcm.", 20015)
        step = self.step("speech", request)
        if step.get("status"):
            return error(step["status"], step.get("message"))
        audio = tone(max(0.2, len(body["input"]) * 0.08 / speed), sample_rate=rate)
        # pieces of 100 ms
        return await stream_pcm(request, audio, step, rate // 5, {"Content-Type": "audio/pcm"})
