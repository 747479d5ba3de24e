"""A loopback fake of Deepgram's live transcription WebSocket (`GET /v1/listen`, listen v1), from its API reference.

The handshake carries the options as query parameters and the key as `Authorization: Token <key>`; a bad key, an
unknown language or raw audio without its sample rate are refused before the upgrade, with Deepgram's JSON error
body (`err_code`, `err_msg`, `request_id`). After the upgrade the client sends binary audio and the control messages
`KeepAlive`, `Finalize` and `CloseStream`; the fake answers with `Results` messages (interim ones while audio arrives
when `interim_results=true`, then a final one), and on `CloseStream` a `Metadata` message and a normal close.

Steps (`script(...)`): `{"text": str}` the transcript (default: `default_text`, "hello"); `{"status": int}` refuse
the handshake; `{"stall": true}` accept and never answer; `{"drop_after_audio_messages": n}` drop the TCP connection
without a close frame after n audio messages; `{"close_code": int, "reason": str}` close the stream with that code
after the audio.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.loopback import LoopbackFake

LANGUAGES = {"en", "en-US", "en-GB", "zh", "zh-CN", "zh-TW", "zh-HK", "ja", "ko", "de", "fr", "es", "multi"}
MODEL_INFO = {"name": "2-general-nova", "version": "2024-01-18.26916", "arch": "nova-2"}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def words(transcript: str, start: float, end: float) -> list[dict[str, Any]]:
    """Word timings spread evenly (CJK text: one word per character, as Deepgram does for Chinese)."""
    tokens = [c for c in transcript if not c.isspace()] if _CJK.search(transcript) else transcript.split()
    step = (end - start) / max(1, len(tokens))
    return [
        {
            "word": token.strip(",.?!，。？！").lower() or token,
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "confidence": 0.98,
            "punctuated_word": token,
        }
        for i, token in enumerate(tokens)
    ]


class FakeDeepgram(LoopbackFake):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.default_text = "hello"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        body = {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}
        return web.json_response(body, status=status, headers={"dg-error": message})

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        record: dict[str, Any] = {
            "path": request.path,
            "headers": dict(request.headers),
            "query": dict(request.query),
            "audio_bytes": 0,
            "control": [],
        }
        self.requests.append(record)
        step = self.next_step(request)
        if request.headers.get("Authorization") != f"Token {self.api_key}" or step.get("status") == 401:
            return self._refuse(401, "INVALID_AUTH", "Invalid credentials.")
        if step.get("status") == 429:
            return self._refuse(429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later.")
        if step.get("status"):
            return self._refuse(step["status"], "INTERNAL_SERVER_ERROR", "The service is temporarily unavailable.")
        query = request.query
        if query.get("language") and query["language"] not in LANGUAGES:
            return self._refuse(400, "Bad Request", f"No such language: {query['language']}.")
        if query.get("encoding") and not query.get("sample_rate"):
            return self._refuse(400, "Bad Request", "Raw audio needs its sample_rate.")
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await self._session(socket, request, record, step)
        return socket

    async def _session(
        self, socket: web.WebSocketResponse, request: web.Request, record: dict[str, Any], step: dict[str, Any]
    ) -> None:
        query = request.query
        transcript = step.get("text", self.default_text)
        rate = int(query.get("sample_rate", 16000))
        bytes_per_s = rate * 2 * int(query.get("channels", 1))
        interim = query.get("interim_results") == "true"
        request_id = str(uuid.uuid4())
        audio = bytearray()
        messages = 0
        sent_interim = 0

        async def results(text: str, is_final: bool, from_finalize: bool = False) -> None:
            duration = len(audio) / bytes_per_s
            message = {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": round(duration, 3),
                "start": 0.0,
                "is_final": is_final,
                "speech_final": is_final,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [{"transcript": text, "confidence": 0.98, "words": words(text, 0.0, duration)}]
                },
                "metadata": {"request_id": request_id, "model_info": MODEL_INFO, "model_uuid": str(uuid.uuid4())},
            }
            await socket.send_str(json.dumps(message, ensure_ascii=False))

        async for message in socket:
            if message.type == WSMsgType.BINARY:
                audio += message.data
                messages += 1
                record["audio_bytes"] = len(audio)
                if step.get("stall"):
                    continue
                if step.get("drop_after_audio_messages") == messages:
                    request.transport.close()  # type: ignore[union-attr]
                    return
                # An interim hypothesis every 3 messages: a growing prefix of the transcript.
                if interim and messages % 3 == 0 and sent_interim < len(transcript) - 1:
                    sent_interim = min(len(transcript) - 1, sent_interim + max(1, len(transcript) // 3))
                    await results(transcript[:sent_interim], is_final=False)
            elif message.type == WSMsgType.TEXT:
                control = json.loads(message.data)
                record["control"].append(control.get("type"))
                if step.get("stall") or control.get("type") == "KeepAlive":
                    continue
                if step.get("close_code"):
                    await socket.close(code=step["close_code"], message=step.get("reason", "").encode())
                    return
                if control.get("type") == "Finalize":
                    await results(transcript, is_final=True, from_finalize=True)
                    transcript = ""
                elif control.get("type") == "CloseStream":
                    if transcript:
                        await results(transcript, is_final=True)
                    metadata = {
                        "type": "Metadata",
                        "transaction_key": "deprecated",
                        "request_id": request_id,
                        "sha256": hashlib.sha256(bytes(audio)).hexdigest(),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                        "duration": round(len(audio) / bytes_per_s, 3),
                        "channels": int(query.get("channels", 1)),
                        "models": [str(uuid.uuid4())],
                        "model_info": {str(uuid.uuid4()): MODEL_INFO},
                    }
                    await socket.send_str(json.dumps(metadata))
                    await socket.close()
                    return
