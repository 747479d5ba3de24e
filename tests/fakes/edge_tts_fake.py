"""A loopback fake of Microsoft Edge's read-aloud WebSocket (speech.platform.bing.com/consumer/speech/synthesize/
readaloud/edge/v1), the protocol the `edge-tts` package speaks.

The handshake must carry the `TrustedClientToken`, a `Sec-MS-GEC` token (hex digits), `Sec-MS-GEC-Version` and a
`ConnectionId`; otherwise it is refused with 403, as Microsoft does. Then the client sends two text frames, each a
block of `Name:value` header lines, a blank line and a body: `Path:speech.config` (JSON: the output format, here
`audio-24khz-48kbitrate-mono-mp3`) and `Path:ssml` (the SSML: voice, prosody rate, text). The fake answers
`Path:turn.start`, `Path:response`, an `audio.metadata` frame (a SentenceBoundary), binary audio frames (two bytes of
header length, the headers with `Path:audio` and `Content-Type:audio/mpeg`, then MP3 bytes), the empty binary frame
that ends the stream, and `Path:turn.end`.

Steps (`script(...)`): `{"status": int}` refuse the handshake (403 twice: edge-tts retries a 403 once, after
adjusting its clock to the `Date` header); `{"stall": true}` send `turn.start` and nothing more;
`{"drop_after_chunks": n}` drop the TCP connection after n audio frames.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from email.utils import formatdate
from functools import cache
from typing import Any

import av
import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.loopback import LoopbackFake, tone

PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
TRUSTED_CLIENT_TOKEN = "6A5AA1D4EAFF4E9FB37E23D68491D6F4"
OUTPUT_FORMAT = "audio-24khz-48kbitrate-mono-mp3"
VOICES = {
    "Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)",
    "Microsoft Server Speech Text to Speech Voice (zh-CN, YunxiNeural)",
    "Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)",
    "Microsoft Server Speech Text to Speech Voice (en-US, EmmaMultilingualNeural)",
}
_SSML = re.compile(
    r"<speak [^>]*><voice name='(?P<voice>[^']+)'><prosody pitch='(?P<pitch>[^']+)' rate='(?P<rate>[^']+)' "
    r"volume='(?P<volume>[^']+)'>(?P<text>.*)</prosody></voice></speak>",
    re.DOTALL,
)
CHUNK_BYTES = 2048


@cache
def mp3(duration_ms: int) -> bytes:
    """A tone as MP3, 24 kHz mono 48 kbit/s (Edge's `audio-24khz-48kbitrate-mono-mp3`)."""
    pcm = np.frombuffer(tone(duration_ms / 1000), dtype=np.int16)
    encoder = av.CodecContext.create("libmp3lame", "w")
    encoder.sample_rate = 24_000
    encoder.layout = "mono"
    encoder.format = "s16p"
    encoder.bit_rate = 48_000
    out = bytearray()
    frame_samples = 576  # an MPEG-2 layer III frame at 24 kHz
    for start in range(0, len(pcm), frame_samples):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + frame_samples], format="s16p", layout="mono")
        frame.sample_rate = 24_000
        for packet in encoder.encode(frame):
            out += bytes(packet)
    for packet in encoder.encode(None):
        out += bytes(packet)
    return bytes(out)  # bare frames, as Edge streams them (no ID3 tag, no Xing header)


def parse_text_frame(data: str) -> tuple[dict[str, str], str]:
    head, _, body = data.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def text_frame(request_id: str, path: str, body: dict[str, Any]) -> str:
    return (
        f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n"
        + json.dumps(body, ensure_ascii=False)
    )


def audio_frame(request_id: str, stream_id: str, data: bytes) -> bytes:
    content_type = "Content-Type:audio/mpeg\r\n" if data else ""
    headers = f"X-RequestId:{request_id}\r\n{content_type}X-StreamId:{stream_id}\r\nPath:audio\r\n".encode()
    return len(headers).to_bytes(2, "big") + headers + data


class FakeEdgeTTS(LoopbackFake):
    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self._synthesize)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}"

    async def _synthesize(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        record: dict[str, Any] = {"headers": dict(request.headers), "query": dict(query), "config": None, "ssml": None}
        self.requests.append(record)
        date = {"Date": formatdate(usegmt=True)}
        valid = (
            query.get("TrustedClientToken") == TRUSTED_CLIENT_TOKEN
            and re.fullmatch(r"[0-9A-F][0-9A-F-]{63,}", query.get("Sec-MS-GEC", ""))
            and re.fullmatch(r"\d+-[\d.]+", query.get("Sec-MS-GEC-Version", ""))
            and re.fullmatch(r"[0-9a-f]{32}", query.get("ConnectionId", ""))
        )
        if not valid:
            return web.Response(status=403, headers=date)
        step = self.peek_step(request)
        if step.get("status") == 403 and not step.get("retried"):
            step["retried"] = True  # the same step answers edge-tts's one retry
            return web.Response(status=403, headers=date)
        step = self.next_step(request)
        if step.get("status"):
            return web.Response(status=step["status"], headers=date, text="refused by the fake")
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await self._session(socket, request, record, step)
        return socket

    async def _session(
        self, socket: web.WebSocketResponse, request: web.Request, record: dict[str, Any], step: dict[str, Any]
    ) -> None:
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                await socket.close(code=1003, message=b"unexpected binary frame")
                return
            headers, body = parse_text_frame(message.data)
            if headers.get("Path") == "speech.config":
                config = json.loads(body)
                record["config"] = config
                output = config["context"]["synthesis"]["audio"]["outputFormat"]
                if output != OUTPUT_FORMAT:
                    await socket.close(code=1007, message=b"unsupported output format")
                    return
            elif headers.get("Path") == "ssml":
                if headers.get("Content-Type") != "application/ssml+xml" or record["config"] is None:
                    await socket.close(code=1007, message=b"ssml before speech.config")
                    return
                match = _SSML.fullmatch(body)
                if match is None:
                    await socket.close(code=1007, message=b"invalid ssml")
                    return
                record["ssml"] = {**match.groupdict(), "text": html.unescape(match["text"])}
                record["received_at"] = time.monotonic()
                await self._speak(socket, request, headers.get("X-RequestId", ""), record["ssml"], step)
                return

    async def _speak(
        self, socket: web.WebSocketResponse, request: web.Request, request_id: str, ssml: dict, step: dict
    ) -> None:
        service_tag = uuid.uuid4().hex
        await socket.send_str(text_frame(request_id, "turn.start", {"context": {"serviceTag": service_tag}}))
        if step.get("stall"):
            await socket.receive()  # until the client gives up
            return
        if ssml["voice"] not in VOICES:
            await socket.close()  # unknown voices get no audio at all
            return
        stream_id = uuid.uuid4().hex.upper()
        response = {"context": {"serviceTag": service_tag}, "audio": {"type": "inline", "streamId": stream_id}}
        await socket.send_str(text_frame(request_id, "response", response))
        text = ssml["text"]
        duration_ms = max(200, 80 * len(text))
        boundary = {
            "Type": "SentenceBoundary",
            "Data": {
                "Offset": 1_000_000,
                "Duration": duration_ms * 10_000,
                "text": {"Text": text, "Length": len(text), "BoundaryType": "SentenceBoundary"},
            },
        }
        await socket.send_str(text_frame(request_id, "audio.metadata", {"Metadata": [boundary]}))
        audio = mp3(duration_ms)
        for index, start in enumerate(range(0, len(audio), CHUNK_BYTES)):
            if step.get("drop_after_chunks") == index:
                request.transport.close()  # type: ignore[union-attr]
                return
            await socket.send_bytes(audio_frame(request_id, stream_id, audio[start : start + CHUNK_BYTES]))
        await socket.send_bytes(audio_frame(request_id, stream_id, b""))
        await socket.send_str(text_frame(request_id, "turn.end", {}))
        await socket.close()
