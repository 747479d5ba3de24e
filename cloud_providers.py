"""Third-party providers: Deepgram (speech-to-text), ElevenLabs, Edge TTS and SiliconFlow (text-to-speech), and
SiliconFlow's OpenAI-compatible transcription and chat endpoints.

`service_providers._create_stt/_llm/_tts` hand these names over to `create_stt/llm/tts` here. Each provider checks its
key at startup (a missing one is a `ConfigurationError` naming the variable) and is shared by every session.

Failures are raised as the exception types `service_providers.provider_failure` already maps, so that every provider
reports them alike: an HTTP error status as `ProviderStatusError` (an `openai.APIStatusError`: 401 → authentication
failed, 429 → rate limited, 5xx → provider error), a refused or dropped connection as `ProviderConnectionError` (an
`openai.APIConnectionError`), a stall as `TimeoutError`. Their messages never hold a key: Pipecat logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from pipecat.frames.frames import Frame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.text.transforms.strip_markdown import strip_markdown
from pipecat.utils.types import NOT_GIVEN, NotGiven

from audio_utils import PIPELINE_INPUT_RATE
from config import Settings
from service_providers import (
    ChatClient,
    ConfigurationError,
    DeltaCallback,
    OpenAICompatibleChat,
    OpenAITranscriber,
    Transcriber,
    Transcript,
    TtsProvider,
    _http_client,
    _RealtimeTTS,
    _require,
    redact,
)

OUTPUT_RATE = 24_000  # what every TTS here produces: the Realtime API's own rate, so nothing is resampled


# --------------------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------------------


def _public_url(url: str) -> str:
    """The URL without its query (which may hold tokens)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class ProviderStatusError(openai.APIStatusError):
    """An HTTP error status from a provider not reached through the openai SDK, as the SDK's own exception."""

    def __init__(self, provider: str, status: int, detail: str, url: str, secrets: list[str]) -> None:
        detail = redact(detail, secrets).strip()[:300].rstrip(".")
        response = httpx2.Response(status, request=httpx2.Request("POST", _public_url(url)))
        message = f"{provider} answered HTTP status {status}" + (f": {detail}" if detail else "")
        super().__init__(message, response=response, body={"error": {"message": detail}})


class ProviderConnectionError(openai.APIConnectionError):
    """A provider that could not be reached, or that dropped the connection before the end of its answer."""

    def __init__(self, provider: str, what: str, url: str) -> None:
        super().__init__(message=f"{provider} {what}.", request=httpx2.Request("POST", _public_url(url)))


def _detail_from_body(body: bytes | str) -> str:
    """The human part of a provider's error body (JSON `message`/`detail`/`error`, or the text itself)."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text
    for key in ("detail", "error"):
        if isinstance(data, dict) and key in data:
            data = data[key]
    if isinstance(data, dict):
        for key in ("message", "msg", "status"):
            if isinstance(data.get(key), str):
                return data[key]
    if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("msg"), str):
        return data[0]["msg"]  # a validation error (422)
    return text if not isinstance(data, str) else data


async def _with_inactivity_timeout(chunks: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """`chunks`, failing with `TimeoutError` when the provider sends nothing for `timeout_s` seconds."""
    try:
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise TimeoutError(f"no audio from the provider for {timeout_s:g} s") from None
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


# --------------------------------------------------------------------------------------------------------------
# Text joining (transcripts of several segments)
# --------------------------------------------------------------------------------------------------------------

_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")


def _join(parts: list[str]) -> str:
    """Segments joined with a space, except where CJK text meets CJK text (Chinese has no spaces)."""
    text = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        text = f"{text} {part}" if text else part
    return _SPACE_BETWEEN_CJK.sub("", text)


# --------------------------------------------------------------------------------------------------------------
# STT: Deepgram (streaming WebSocket, listen v1)
# --------------------------------------------------------------------------------------------------------------


def _websocket_url(base_url: str) -> str:
    base_url = base_url.rstrip("/")
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :]
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://") :]
    return base_url


class DeepgramTranscriber:
    """Deepgram's live transcription WebSocket (`/v1/listen`) through the `deepgram-sdk`, one connection per turn.

    The committed turn's PCM16 16 kHz is sent at once (Deepgram takes audio faster than real time), then
    `CloseStream`; the interim results come back as transcription deltas, the final results make the transcript.
    The language is the session's transcription language, else DEEPGRAM_LANGUAGE; the session's transcription
    `prompt` has no Deepgram counterpart (keywords and keyterms are lists of words) and is not sent.
    STT_TIMEOUT_S bounds the whole exchange."""

    name = "deepgram"
    CHUNK_BYTES = PIPELINE_INPUT_RATE * 2 // 10  # 100 ms of audio per message

    def __init__(self, api_key: str, model: str, language: str | None, base_url: str, timeout_s: float) -> None:
        from deepgram import AsyncDeepgramClient
        from deepgram.environment import DeepgramClientEnvironment

        self.secrets = [api_key]
        self.model = model
        self.language = language
        self._timeout_s = timeout_s
        self._url = _websocket_url(base_url) + "/v1/listen"
        http_base = _websocket_url(base_url).replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        environment = DeepgramClientEnvironment(
            base=http_base, production=_websocket_url(base_url), agent=_websocket_url(base_url), agent_rest=http_base
        )
        self._client = AsyncDeepgramClient(
            api_key=api_key, environment=environment, max_retries=0, stream_reconnection_enabled=False
        )

    def options(self, language: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {
            "model": self.model,
            "encoding": "linear16",
            "sample_rate": PIPELINE_INPUT_RATE,
            "channels": 1,
            "interim_results": "true",
            "punctuate": "true",
            "smart_format": "true",
        }
        language = language or self.language
        if language:
            options["language"] = language
        return options

    async def transcribe(
        self, pcm: bytes, language: str | None, prompt: str | None, on_delta: DeltaCallback | None = None
    ) -> Transcript:
        from deepgram.core.api_error import ApiError
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        try:
            async with asyncio.timeout(self._timeout_s):
                text = await self._stream(pcm, self.options(language), on_delta)
        except TimeoutError:
            raise TimeoutError("Deepgram timed out") from None
        except ApiError as exc:  # the handshake was refused
            # The SDK words every refusal alike; Deepgram's own reason is in the `dg-error` header of its answer.
            refusal = exc.__context__
            headers = getattr(refusal, "headers", None) or getattr(getattr(refusal, "response", None), "headers", None)
            detail = (headers.get("dg-error") if headers is not None else None) or ""
            raise ProviderStatusError("Deepgram", exc.status_code or 500, detail, self._url, self.secrets) from None
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is None:  # no close frame: the connection dropped
                raise ProviderConnectionError("Deepgram", "dropped the connection", self._url) from None
            reason = redact(received.reason, self.secrets)[:200]
            raise RuntimeError(f"Deepgram closed the stream ({received.code}: {reason})") from None
        except (OSError, InvalidHandshake) as exc:
            raise ProviderConnectionError(
                "Deepgram", f"could not be reached ({type(exc).__name__})", self._url
            ) from None
        return Transcript(text=text, duration_s=len(pcm) / 2 / PIPELINE_INPUT_RATE)

    async def _stream(self, pcm: bytes, options: dict[str, Any], on_delta: DeltaCallback | None) -> str:
        from deepgram.listen.v1.types import ListenV1Error, ListenV1Metadata, ListenV1Results

        finals: list[str] = []
        emitted = ""
        async with self._client.listen.v1.connect(**options) as socket:
            sender = asyncio.create_task(self._send(socket, pcm), name="deepgram-send")
            try:
                async for message in socket:
                    if isinstance(message, ListenV1Results):
                        alternatives = message.channel.alternatives
                        segment = alternatives[0].transcript if alternatives else ""
                        if message.is_final:
                            finals.append(segment)
                            hypothesis = _join(finals)
                        else:
                            hypothesis = _join([*finals, segment])
                        # Deltas only ever extend what was sent (an interim result that revises itself waits
                        # until it agrees again); the completed event carries the final transcript.
                        if on_delta is not None and len(hypothesis) > len(emitted) and hypothesis.startswith(emitted):
                            delta, emitted = hypothesis[len(emitted) :], hypothesis
                            await on_delta(delta)
                    elif isinstance(message, ListenV1Error):
                        detail = redact(f"{message.variant}: {message.description}", self.secrets)[:300]
                        raise RuntimeError(f"Deepgram reported an error ({detail})")
                    elif isinstance(message, ListenV1Metadata):
                        break  # sent last, after the final results of the closed stream
            finally:
                if not sender.done():
                    sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            if not sender.cancelled() and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]
        return _join(finals)

    async def _send(self, socket: Any, pcm: bytes) -> None:
        for start in range(0, len(pcm), self.CHUNK_BYTES):
            await socket.send_media(pcm[start : start + self.CHUNK_BYTES])
        await socket.send_close_stream()

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------------------
# TTS: shared base
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SpeedSettings(TTSSettings):
    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class StreamingTTS(_RealtimeTTS, TTSService):
    """A Pipecat TTS service over a provider that streams one sentence's audio per request (PCM16 mono 24 kHz)."""

    Settings = SpeedSettings
    _settings: SpeedSettings
    provider = "TTS"

    def __init__(self, *, model: str | None, voice: str, timeout_s: float, secrets: list[str], **kwargs: Any) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=OUTPUT_RATE,
            max_consecutive_zero_audio_contexts=0,
            # Pipecat ends a silent audio context after this long: past our own timeout, so that a stalled
            # provider is reported as the timeout it is.
            stop_frame_timeout_s=timeout_s + 1.0,
            text_transforms=[("*", strip_markdown)],  # models write markdown although told not to; never say it
            settings=SpeedSettings(model=model, voice=voice, language=None, speed=1.0),
            **kwargs,
        )
        self._install_first_clause_aggregator()
        self._timeout_s = timeout_s
        self._secrets = secrets

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def voice(self) -> str:
        return str(self._settings.voice)

    @property
    def speed(self) -> float:
        speed = self._settings.speed
        return float(speed) if isinstance(speed, float | int) else 1.0

    async def run_tts(self, text: str, context_id: str) -> AsyncIterator[Frame]:
        audio = _with_inactivity_timeout(self.synthesize(text), self._timeout_s)
        async for frame in self._stream_audio_frames_from_iterator(
            audio, in_sample_rate=OUTPUT_RATE, context_id=context_id
        ):
            yield frame

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """PCM16 mono 24 kHz for `text`, as it arrives."""
        raise NotImplementedError
        yield b""  # an async generator, like its overrides


class _SpeedVoiceProvider:
    """What the TTS providers here share: one service per session, voice and speed changes as settings deltas."""

    name: str
    secrets: list[str]

    def settings_delta(self, voice: str, speed: float) -> TTSSettings:
        return SpeedSettings(voice=voice, speed=speed)

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------------------
# TTS: ElevenLabs (HTTP streaming)
# --------------------------------------------------------------------------------------------------------------

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
        body: dict[str, Any] = {"text": text, "model_id": self._settings.model}
        if self.speed != 1.0:
            body["voice_settings"] = {"speed": min(max(self.speed, 0.7), 1.2)}  # ElevenLabs' range
        headers = {"xi-api-key": self._api_key}
        params = {"output_format": f"pcm_{OUTPUT_RATE}"}
        async with self._http.stream("POST", url, params=params, json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = _detail_from_body(await response.aread())
                raise ProviderStatusError("ElevenLabs", response.status_code, detail, url, self._secrets)
            async for chunk in response.aiter_bytes():
                yield chunk


class ElevenLabsTtsProvider(_SpeedVoiceProvider):
    name = "elevenlabs"

    def __init__(self, api_key: str, voice_id: str, model: str, base_url: str, timeout_s: float) -> None:
        self.secrets = [api_key]
        self.default_voice = voice_id
        self.model = model
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._http: httpx2.AsyncClient | None = None

    def create(self) -> TTSService:
        if self._http is None:
            self._http = _http_client(self._timeout_s)
        return ElevenLabsTTS(
            http=self._http,
            base_url=self._base_url,
            api_key=self._api_key,
            model=self.model,
            voice=self.default_voice,
            timeout_s=self._timeout_s,
            secrets=self.secrets,
        )

    def voice_for(self, requested: str) -> str:
        """An ElevenLabs voice id passes through; OpenAI's voice names get the configured voice."""
        return requested if _ELEVENLABS_VOICE_ID.fullmatch(requested) else self.default_voice

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


# --------------------------------------------------------------------------------------------------------------
# TTS: Edge (Microsoft Edge's read-aloud WebSocket, through the edge-tts package)
# --------------------------------------------------------------------------------------------------------------

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


class EdgeTTS(StreamingTTS):
    """Edge's online voices through `edge_tts.Communicate`: its MP3 stream is decoded as it arrives."""

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        import aiohttp
        import edge_tts
        from edge_tts import exceptions as edge_errors

        timeout = max(1, math.ceil(self._timeout_s))
        communicate = edge_tts.Communicate(
            text, self.voice, rate=_edge_rate(self.speed), connect_timeout=timeout, receive_timeout=timeout
        )
        url = edge_tts.communicate.WSS_URL
        decoder = Mp3Decoder()
        try:
            async for chunk in communicate.stream():
                if chunk["type"] == "audio":
                    pcm = decoder.decode(chunk["data"])
                    if pcm:
                        yield pcm
        except TimeoutError:
            raise TimeoutError("Edge TTS timed out") from None
        except aiohttp.ClientResponseError as exc:  # the handshake refused: 401, 403, 429, 5xx … (no reason given)
            raise ProviderStatusError("Edge TTS", exc.status, "", url, self._secrets) from None
        except edge_errors.SkewAdjustmentError as exc:  # a 403 whose retry could not be made
            status = getattr(exc.__cause__, "status", 403)
            raise ProviderStatusError("Edge TTS", status, "", url, self._secrets) from None
        except (aiohttp.ClientError, edge_errors.WebSocketError):
            raise ProviderConnectionError("Edge TTS", "could not be reached or dropped the connection", url) from None
        except edge_errors.NoAudioReceived:
            raise RuntimeError(f"Edge TTS returned no audio (is '{self.voice}' an Edge voice?)") from None
        except edge_errors.EdgeTTSException as exc:
            raise RuntimeError(f"Edge TTS answered unexpectedly: {exc}") from None
        tail = decoder.flush()
        if tail:
            yield tail
        # edge-tts ends quietly when the socket closes early; the audio it counted since the last `turn.end` tells.
        if communicate.state.get("chunk_audio_bytes"):
            raise ProviderConnectionError("Edge TTS", "dropped the connection before the end of the speech", url)


class EdgeTtsProvider(_SpeedVoiceProvider):
    name = "edge_tts"

    def __init__(self, voice: str, url: str | None, timeout_s: float) -> None:
        import edge_tts

        self.secrets: list[str] = []
        self.default_voice = voice
        self._timeout_s = timeout_s
        if url:
            # edge-tts reads its endpoint from this module global (there is no parameter for it); it appends
            # `&ConnectionId=…&Sec-MS-GEC=…`, so the URL needs a query of its own.
            query = "" if "?" in url else f"?TrustedClientToken={edge_tts.constants.TRUSTED_CLIENT_TOKEN}"
            edge_tts.communicate.WSS_URL = url + query

    def create(self) -> TTSService:
        return EdgeTTS(model=None, voice=self.default_voice, timeout_s=self._timeout_s, secrets=self.secrets)

    def voice_for(self, requested: str) -> str:
        """A full Edge voice name (en-US-AriaNeural) passes through; OpenAI's voice names get EDGE_TTS_VOICE."""
        return requested if _EDGE_VOICE.fullmatch(requested) else self.default_voice


# --------------------------------------------------------------------------------------------------------------
# TTS: SiliconFlow (OpenAI-compatible /audio/speech)
# --------------------------------------------------------------------------------------------------------------

SILICONFLOW_PRESET_VOICES = frozenset({"alex", "anna", "bella", "benjamin", "charles", "claire", "david", "diana"})


class SiliconFlowTTS(StreamingTTS):
    """SiliconFlow's `/audio/speech` (CosyVoice2 …) through the openai SDK: streamed PCM at 24 kHz."""

    def __init__(self, *, client: openai.AsyncOpenAI, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        extra: dict[str, Any] = {"sample_rate": OUTPUT_RATE, "stream": True}  # SiliconFlow's PCM default is 44.1 kHz
        options: dict[str, Any] = {"speed": self.speed} if self.speed != 1.0 else {}
        try:
            async with self._client.audio.speech.with_streaming_response.create(
                model=str(self._settings.model),
                voice=self.voice,
                input=text,
                response_format="pcm",
                extra_body=extra,
                **options,
            ) as response:
                async for chunk in response.iter_bytes():
                    yield chunk
        except openai.APIStatusError as exc:
            if isinstance(exc, ProviderStatusError):
                raise
            try:
                detail = _detail_from_body(exc.response.text)
            except Exception:  # the body was not read
                detail = ""
            raise ProviderStatusError(
                "SiliconFlow", exc.status_code, detail, str(exc.request.url), self._secrets
            ) from None


class SiliconFlowTtsProvider(_SpeedVoiceProvider):
    name = "siliconflow"

    def __init__(self, api_key: str, base_url: str, model: str, voice: str, timeout_s: float) -> None:
        self.secrets = [api_key]
        self.model = model
        self.default_voice = self._voice_id(voice)
        self._timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(
            base_url=base_url.rstrip("/"), api_key=api_key, max_retries=0, http_client=_http_client(timeout_s)
        )

    def _voice_id(self, voice: str) -> str:
        """A preset's name becomes `MODEL:name`; a full voice id (`MODEL:name`, `speech:…`) stays as it is."""
        return voice if ":" in voice else f"{self.model}:{voice}"

    def create(self) -> TTSService:
        return SiliconFlowTTS(
            client=self._client,
            model=self.model,
            voice=self.default_voice,
            timeout_s=self._timeout_s,
            secrets=self.secrets,
        )

    def voice_for(self, requested: str) -> str:
        """SiliconFlow's preset names and voice ids pass through; OpenAI's voice names get the configured voice."""
        if ":" in requested or requested in SILICONFLOW_PRESET_VOICES:
            return self._voice_id(requested)
        return self.default_voice

    async def close(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------------------------------------------
# Registry (called by service_providers._create_*)
# --------------------------------------------------------------------------------------------------------------


def create_stt(settings: Settings) -> Transcriber:
    provider = settings.stt_provider
    if provider == "deepgram":
        api_key = _require(settings, "deepgram_api_key", "STT_PROVIDER=deepgram")
        return DeepgramTranscriber(
            api_key,
            settings.deepgram_model,
            settings.deepgram_language,
            settings.deepgram_base_url,
            settings.stt_timeout_s,
        )
    if provider == "siliconflow":
        api_key = _require(settings, "siliconflow_api_key", "STT_PROVIDER=siliconflow")
        base_url = settings.siliconflow_base_url.rstrip("/")
        return OpenAITranscriber(
            "siliconflow", base_url, api_key, settings.siliconflow_stt_model, settings.stt_timeout_s
        )
    raise ConfigurationError(f"STT_PROVIDER={provider} is not available in this build.")


def create_llm(settings: Settings) -> ChatClient:
    provider = settings.llm_provider
    if provider == "siliconflow":
        api_key = _require(settings, "siliconflow_api_key", "LLM_PROVIDER=siliconflow")
        base_url = settings.siliconflow_base_url.rstrip("/")
        return OpenAICompatibleChat(
            "siliconflow", base_url, api_key, settings.siliconflow_model, settings.llm_timeout_s
        )
    raise ConfigurationError(f"LLM_PROVIDER={provider} is not available in this build.")


def create_tts(settings: Settings) -> TtsProvider:
    provider = settings.tts_provider
    if provider == "edge_tts":
        return EdgeTtsProvider(settings.edge_tts_voice, settings.edge_tts_url, settings.tts_timeout_s)
    if provider == "elevenlabs":
        api_key = _require(settings, "elevenlabs_api_key", "TTS_PROVIDER=elevenlabs")
        return ElevenLabsTtsProvider(
            api_key,
            settings.elevenlabs_voice_id,
            settings.elevenlabs_model,
            settings.elevenlabs_base_url,
            settings.tts_timeout_s,
        )
    if provider == "siliconflow":
        api_key = _require(settings, "siliconflow_api_key", "TTS_PROVIDER=siliconflow")
        return SiliconFlowTtsProvider(
            api_key,
            settings.siliconflow_base_url,
            settings.siliconflow_tts_model,
            settings.siliconflow_tts_voice,
            settings.tts_timeout_s,
        )
    raise ConfigurationError(f"TTS_PROVIDER={provider} is not available in this build.")
