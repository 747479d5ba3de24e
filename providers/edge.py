"""Edge TTS: Microsoft Edge's read-aloud voices (a WebSocket, no key) through the `edge-tts` package.

Named `edge`, not `edge_tts`, so that `edge_tts` always means the package, which this module imports."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from typing import Any

from pipecat.services.tts_service import TTSService

from config import Settings
from providers.errors import ProviderError, ProviderStatusError, ProviderTimeout, ProviderUnavailable
from providers.languages import language_code, text_language
from providers.tts import OUTPUT_RATE, SpeedVoiceProvider, StreamingTTS

_EDGE_VOICE = re.compile(r"[a-z]{2,}-[A-Z]{2,}-.+Neural|Microsoft Server Speech Text to Speech Voice \(.+\)")


class Mp3Decoder:
    """Decodes an MP3 stream piece by piece (PyAV) into PCM16 mono at `rate`: audio is ready as it arrives."""

    def __init__(self, rate: int = OUTPUT_RATE) -> None:
        import av

        self._codec = av.CodecContext.create("mp3", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)

    def decode(self, data: bytes) -> bytes:
        return self._frames(self._codec.parse(data))

    def flush(self) -> bytes:
        pcm = self._frames(self._codec.parse(None))
        pcm += self._convert(self._codec.decode(None))
        pcm += self._convert([None])
        return pcm

    def _frames(self, packets: list[Any]) -> bytes:
        import av

        pcm = b""
        for packet in packets:
            try:
                frames = self._codec.decode(packet)
            except av.error.InvalidDataError:
                continue  # not audio (an ID3 tag, say) or a damaged frame: skipped, as players do
            pcm += self._convert(frames)
        return pcm

    def _convert(self, frames: list[Any]) -> bytes:
        pcm = b""
        for frame in frames:
            for converted in self._resampler.resample(frame):
                pcm += converted.to_ndarray().tobytes()
        return pcm


def _edge_rate(speed: float) -> str:
    return f"{round((speed - 1.0) * 100):+d}%"


def voice_language(voice: str) -> str | None:
    """ "zh-CN-XiaoxiaoNeural" → "zh"; the long form "Microsoft Server Speech … (zh-CN, XiaoxiaoNeural)" too."""
    if voice.endswith(")") and "(" in voice:
        voice = voice[voice.rindex("(") + 1 :]
    return language_code(voice)


class EdgeTTS(StreamingTTS):
    """Edge's online voices through `edge_tts.Communicate`: its MP3 stream is decoded as it arrives.

    A sentence in a language the session's voice does not speak is read by a voice of that language (Chinese:
    EDGE_TTS_ZH_VOICE), so that a zh-CN voice reads Chinese whatever voice the session chose."""

    def __init__(self, *, timeout_s: float, language_voices: dict[str, str], **kwargs: Any) -> None:
        super().__init__(timeout_s=timeout_s, **kwargs)
        self._edge_timeout_s = max(1, math.ceil(timeout_s))  # edge-tts takes whole seconds
        self._edge_language_voices = language_voices

    def voice_for_text(self, text: str) -> str:
        language = text_language(text)
        if language is None or voice_language(self.voice) == language:
            return self.voice
        return self._edge_language_voices.get(language, self.voice)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        import aiohttp
        import edge_tts
        from edge_tts import exceptions as edge_errors

        timeout = self._edge_timeout_s
        communicate = edge_tts.Communicate(
            text,
            self.voice_for_text(text),
            rate=_edge_rate(self.speed),
            connect_timeout=timeout,
            receive_timeout=timeout,
        )
        decoder = Mp3Decoder()
        try:
            async for chunk in communicate.stream():
                if chunk["type"] == "audio":
                    pcm = decoder.decode(chunk["data"])
                    if pcm:
                        yield pcm
        except TimeoutError:
            raise ProviderTimeout("Edge TTS timed out") from None
        except aiohttp.ClientResponseError as exc:  # the handshake refused: 401, 403, 429, 5xx … (no reason given)
            raise ProviderStatusError(exc.status) from None
        except edge_errors.SkewAdjustmentError as exc:  # a 403 whose retry could not be made
            raise ProviderStatusError(getattr(exc.__cause__, "status", 403)) from None
        except (aiohttp.ClientError, edge_errors.WebSocketError):
            raise ProviderUnavailable("Edge TTS could not be reached or dropped the connection") from None
        except edge_errors.NoAudioReceived:
            raise ProviderError(f"Edge TTS returned no audio (is '{self.voice}' an Edge voice?)") from None
        except edge_errors.EdgeTTSException as exc:
            raise ProviderError(f"Edge TTS answered unexpectedly: {exc}") from None
        tail = decoder.flush()
        if tail:
            yield tail
        # edge-tts ends quietly when the socket closes early; the audio it counted since the last `turn.end` tells.
        if communicate.state.get("chunk_audio_bytes"):
            raise ProviderUnavailable("Edge TTS dropped the connection before the end of the speech")


class EdgeTtsProvider(SpeedVoiceProvider):
    name = "edge_tts"
    timeout_s: float

    def __init__(self, voice: str, url: str | None, timeout_s: float, zh_voice: str = "zh-CN-XiaoxiaoNeural") -> None:
        import edge_tts

        self.secrets: list[str] = []
        self.default_voice = voice
        self.language_voices = {"zh": zh_voice}
        self.timeout_s = timeout_s
        if url:
            # edge-tts reads its endpoint from this module global (there is no parameter for it); it appends
            # `&ConnectionId=…&Sec-MS-GEC=…`, so the URL needs a query of its own.
            query = "" if "?" in url else f"?TrustedClientToken={edge_tts.constants.TRUSTED_CLIENT_TOKEN}"
            edge_tts.communicate.WSS_URL = url + query

    def create(self, session_id: str) -> TTSService:
        # The read-aloud service takes no headers of ours: its requests carry no correlation id.
        return EdgeTTS(language_voices=self.language_voices, **self.service_options(session_id))

    def voice_for(self, requested: str) -> str:
        """A full Edge voice name (en-US-AriaNeural) passes through; OpenAI's voice names get EDGE_TTS_VOICE."""
        return requested if _EDGE_VOICE.fullmatch(requested) else self.default_voice


def create_tts(settings: Settings) -> EdgeTtsProvider:
    return EdgeTtsProvider(
        settings.edge_tts_voice, settings.edge_tts_url, settings.tts_timeout_s, settings.edge_tts_zh_voice
    )
