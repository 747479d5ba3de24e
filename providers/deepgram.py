"""Deepgram speech-to-text: the live transcription WebSocket (listen v1) through the `deepgram-sdk`."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from audio_utils import PIPELINE_INPUT_RATE
from config import Settings
from providers.base import REQUEST_ID_HEADER, DeltaCallback, Transcript, request_id
from providers.errors import (
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    ProviderUnavailable,
    redact,
    tidy_detail,
)
from session.commands import Transcribe

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
# The transcriber
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

    async def transcribe(self, turn: Transcribe, on_delta: DeltaCallback | None = None) -> Transcript:
        pcm, correlation = turn.pcm, request_id(turn.session_id, turn.request_id)
        # Imported when used: the SDK is only needed when Deepgram is the configured STT.
        from deepgram.core.api_error import ApiError
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        try:
            async with asyncio.timeout(self._timeout_s):
                text = await self._stream(pcm, self.options(turn.language), on_delta, correlation)
        except TimeoutError:
            raise ProviderTimeout("Deepgram timed out") from None
        except ApiError as exc:  # the handshake was refused
            # The SDK words every refusal alike; Deepgram's own reason is in the `dg-error` header of its answer.
            refusal = exc.__context__
            headers = getattr(refusal, "headers", None) or getattr(getattr(refusal, "response", None), "headers", None)
            detail = (headers.get("dg-error") if headers is not None else None) or ""
            raise ProviderStatusError(exc.status_code or 500, tidy_detail(detail, self.secrets)) from None
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is None:  # no close frame: the connection dropped
                raise ProviderUnavailable("Deepgram dropped the connection") from None
            reason = redact(received.reason, self.secrets)[:200]
            raise ProviderError(f"Deepgram closed the stream ({received.code}: {reason})") from None
        except (OSError, InvalidHandshake) as exc:
            raise ProviderUnavailable(f"Deepgram could not be reached ({type(exc).__name__})") from None
        return Transcript(text=text, duration_s=len(pcm) / 2 / PIPELINE_INPUT_RATE)

    async def _stream(
        self, pcm: bytes, options: dict[str, Any], on_delta: DeltaCallback | None, correlation: str
    ) -> str:
        from deepgram.listen.v1.types import ListenV1Error, ListenV1Metadata, ListenV1Results

        finals: list[str] = []
        emitted = ""
        headers = {"additional_headers": {REQUEST_ID_HEADER: correlation}}
        async with self._client.listen.v1.connect(**options, request_options=headers) as socket:
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
                        raise ProviderError(f"Deepgram reported an error ({detail})")
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


def create_stt(settings: Settings) -> DeepgramTranscriber:
    api_key = settings.secret("deepgram_api_key") or ""  # service_providers checked that it is set
    model, language, base_url = settings.deepgram_model, settings.deepgram_language, settings.deepgram_base_url
    return DeepgramTranscriber(api_key, model, language, base_url, settings.stt_timeout_s)
