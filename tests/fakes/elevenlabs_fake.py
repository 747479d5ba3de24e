"""A loopback fake of ElevenLabs' streaming text-to-speech (`POST /v1/text-to-speech/{voice_id}/stream`), from its API
reference.

It checks the `xi-api-key` header, the voice id (known voices only: others are 404 `voice_not_found`), the JSON body
(`text`, a known `model_id`, optional `voice_settings.speed` in 0.7-1.2) and the `output_format` query (`pcm_24000`
here: raw PCM16 mono at 24 kHz), then streams the audio in chunks, as ElevenLabs does. Errors have ElevenLabs' shape,
`{"detail": {"status": …, "message": …}}`.

Steps (`script(...)`): `{"status": int}` fail with that status; `{"stall_s": float}` stall after the first chunk;
`{"drop_after_bytes": int}` drop the connection mid-stream.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackFake, stream_pcm, tone

MODELS = {"eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_multilingual_v2", "eleven_v3"}
VOICES = {"21m00Tcm4TlvDq8ikWAM", "JBFqnCBsd6RMkjVDRZzb", "EXAVITQu4vr4xnSDxMaL"}
ERRORS = {
    401: ("invalid_api_key", "Invalid API key"),
    429: ("too_many_concurrent_requests", "Too many concurrent requests. Your plan allows 2 at once."),
    500: ("internal_error", "An internal error occurred."),
    503: ("system_busy", "The system is experiencing heavy traffic, please try again."),
}


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"detail": {"status": code, "message": message}}, status=status)


class FakeElevenLabs(LoopbackFake):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._stream)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        voice_id = request.match_info["voice_id"]
        self.requests.append(
            {"path": request.path, "headers": dict(request.headers), "query": dict(request.query), "body": body}
        )
        step = self.next_step(request)
        if request.headers.get("xi-api-key") != self.api_key:
            return error(401, *ERRORS[401])
        if step.get("status"):
            status = step["status"]
            return error(status, *ERRORS.get(status, ("error", f"fake error {status}")))
        if voice_id not in VOICES:
            return error(404, "voice_not_found", f"A voice with the voice_id {voice_id} was not found.")
        if body.get("model_id") not in MODELS:
            return error(400, "model_not_found", f"A model with model ID {body.get('model_id')} does not exist.")
        if not isinstance(body.get("text"), str) or not body["text"].strip():
            return error(422, "invalid_text", "Text must not be empty.")
        speed = (body.get("voice_settings") or {}).get("speed", 1.0)
        if not 0.7 <= speed <= 1.2:
            return error(422, "invalid_voice_settings", "speed must be between 0.7 and 1.2.")
        output_format = request.query.get("output_format", "mp3_44100_128")
        if output_format != "pcm_24000":
            return error(400, "unsupported_format", f"This fake serves pcm_24000 only, not {output_format}.")
        audio = tone(max(0.2, len(body["text"]) * 0.06 / speed))
        # pieces of 100 ms
        return await stream_pcm(request, audio, step, 4800, {"Content-Type": "audio/pcm", "request-id": "fake-request"})
