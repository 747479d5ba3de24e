"""What our Pipecat TTS services share: `StreamingTTS`, the base of every one of them, and its text splitter.

Each provider only says how to turn one sentence into PCM (`StreamingTTS.synthesize`); the rest is here:

- the first clause of a reply is spoken as soon as it is complete (`FirstClauseAggregator`);
- a provider that stops sending audio fails with `ProviderTimeout` (the inactivity timeout);
- every failure reaches the pipeline as an `ErrorFrame` whose `exception` is one of our `ProviderError`s (Pipecat
  catches what `run_tts` raises and pushes it upstream with `exception=`), which `transport.py` maps to what the
  client is told;
- the service stays usable: Pipecat writes off a TTS service after a permanent-looking error (a 401, three silent
  replies) and then never speaks again; here each response reports its own failure to the client, and the next one
  tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from pipecat.frames.frames import Frame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator
from pipecat.utils.text.transforms.strip_markdown import strip_markdown
from pipecat.utils.types import NOT_GIVEN, NotGiven

from providers.base import request_id
from providers.errors import ProviderError, ProviderTimeout, VoiceLanguageUnavailable, redact
from providers.languages import Languages, MissingVoice, speaks, text_language

OUTPUT_RATE = 24_000  # what every TTS service produces: the Realtime API's own rate, so nothing is resampled later
UNSPEAKABLE_PAUSE_S = 0.2  # what a piece of text with nothing to say ("...", "—", a lone emoji) sounds like

# --------------------------------------------------------------------------------------------------------------
# Text: the first clause, then sentences
# --------------------------------------------------------------------------------------------------------------

_CLAUSE_MARKS = frozenset(",，、:：;；—")
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
MIN_FIRST_CLAUSE_CHARS = 12  # Latin text; for CJK text 4 characters
MIN_FIRST_CLAUSE_CJK_CHARS = 4


class FirstClauseAggregator(SimpleTextAggregator):
    """Pipecat's sentence aggregation, except at the start of a reply: its first clause goes to the TTS as soon as
    its comma (or CJK "，", "、", "；" …) arrives, so the first audio does not wait for a long first sentence. Later
    text goes sentence by sentence, which sounds more natural."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._at_reply_start = True

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        for char in text:
            if self._at_reply_start and char in _CLAUSE_MARKS and self._clause_long_enough():
                clause = (self._text + char).strip(" ")
                self._text = ""
                self._at_reply_start = False
                yield Aggregation(text=clause, type=TextType.SENTENCE)
                continue
            async for aggregation in super().aggregate(char):
                self._at_reply_start = False
                yield aggregation

    def _clause_long_enough(self) -> bool:
        text = self._text.strip()
        if not text or text[-1].isdigit():  # "1,000" is a number, not a clause
            return False
        if _CJK_CHAR.search(text):
            return len(text) >= MIN_FIRST_CLAUSE_CJK_CHARS
        return len(text) >= MIN_FIRST_CLAUSE_CHARS

    async def flush(self) -> Aggregation | None:
        self._at_reply_start = True  # the reply ended: the next one starts afresh
        return await super().flush()

    async def handle_interruption(self) -> None:
        self._at_reply_start = True
        await super().handle_interruption()

    async def reset(self) -> None:
        self._at_reply_start = True
        await super().reset()


# --------------------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SpeedSettings(TTSSettings):
    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


async def with_inactivity_timeout(chunks: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """`chunks`, failing with `ProviderTimeout` when the provider sends nothing for `timeout_s` seconds."""
    try:
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ProviderTimeout(f"no audio from the provider for {timeout_s:g} s") from None
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


class LanguageVoice(Protocol):
    """A voice for replies in a language the session's own voice does not speak (the offline Chinese voice)."""

    name: str
    sample_rate: int

    def synthesize(self, text: str, speed: float = 1.0) -> AsyncIterator[bytes]: ...


class StreamingTTS(TTSService):
    """A Pipecat TTS service over a provider that streams one sentence's audio per request, as PCM16 mono at
    `input_rate` (resampled to `OUTPUT_RATE`).

    `timeout_s` bounds the silence between two pieces of audio; None leaves a local model (Piper) unbounded.

    Each sentence's language is told from its text: one the service's voice does not speak (`languages`, from
    `providers.languages`) goes to the voice for that language in `language_voices`, or, with none, is not spoken
    at all (no nonsense audio): the client gets one `VoiceLanguageUnavailable` error per response, and the
    transcript still arrives."""

    Settings = SpeedSettings
    _settings: SpeedSettings

    def __init__(
        self,
        *,
        model: str | None,
        voice: str,
        timeout_s: float | None,
        secrets: list[str],
        session_id: str = "",
        input_rate: int = OUTPUT_RATE,
        languages: Languages = None,
        language_voices: dict[str, LanguageVoice] | None = None,
        **kwargs: Any,
    ) -> None:
        if timeout_s is not None:
            # Pipecat ends a silent audio context after this long: past our own timeout, so that a stalled
            # provider is reported as the timeout it is.
            kwargs["stop_frame_timeout_s"] = timeout_s + 1.0
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=OUTPUT_RATE,
            max_consecutive_zero_audio_contexts=0,
            text_transforms=[("*", strip_markdown)],  # models write markdown although told not to; never say it
            settings=SpeedSettings(model=model, voice=voice, language=None, speed=1.0),
            **kwargs,
        )
        self._text_aggregator = FirstClauseAggregator(language=self._text_aggregator.language)
        self._timeout_s = timeout_s
        self._secrets = secrets
        self._input_rate = input_rate
        self._session_id = session_id
        self._requests = itertools.count(1)
        self._languages = languages
        self._language_voices = language_voices or {}
        self._reported_context: str | None = None  # the response already told that its language has no voice
        # Contexts (responses) with a sentence that went to a language voice or was not spoken: silence there is by
        # design, not the failure Pipecat reports when a context ends with no audio.
        self._routed_contexts: set[str] = set()

    def can_generate_metrics(self) -> bool:
        return True

    def next_request_id(self) -> str:
        """The correlation id of the next request to the provider (`providers.base.REQUEST_ID_HEADER`)."""
        return request_id(self._session_id, f"tts_{next(self._requests)}")

    async def set_usable(self, is_usable: bool) -> None:
        await super().set_usable(True)  # never written off: see the module's docstring

    @property
    def model(self) -> str:
        return str(self._settings.model)

    @property
    def voice(self) -> str:
        return str(self._settings.voice)

    @property
    def speed(self) -> float:
        speed = self._settings.speed
        return float(speed) if isinstance(speed, float | int) else 1.0

    async def run_tts(self, text: str, context_id: str) -> AsyncIterator[Frame]:
        language = text_language(text)
        rate = self._input_rate
        if not has_words(text):
            # Text without a letter or digit is not sent to the provider: Piper returns no audio for "...", Edge
            # fails on it, and Pipecat reports a reply that ends without audio as an error. A short pause instead.
            audio = pause(self._input_rate, UNSPEAKABLE_PAUSE_S)
        elif speaks(self._languages, language):
            audio = self.synthesize(text)
        elif language in self._language_voices:
            self._routed_contexts.add(context_id)
            voice = self._language_voices[language]
            audio, rate = voice.synthesize(text, self.speed), voice.sample_rate
        else:
            assert language is not None  # `speaks` is True for text of no particular language
            self._routed_contexts.add(context_id)
            if context_id != self._reported_context:
                self._reported_context = context_id
                missing = MissingVoice(language, self.voice)
                await self.push_error(missing.message, exception=VoiceLanguageUnavailable(missing.message))
            return
        if self._timeout_s is not None:
            audio = with_inactivity_timeout(audio, self._timeout_s)
        try:
            async for frame in self._stream_audio_frames_from_iterator(
                audio, in_sample_rate=rate, context_id=context_id
            ):
                yield frame
        except ProviderError:
            raise
        except Exception as exc:
            # Not a failure the provider translated (a bug, a local model's error): still one of ours, so that the
            # session gets one kind of exception from every TTS service; the cause stays chained for debugging.
            raise ProviderError(redact(str(exc), self._secrets)) from exc

    async def _record_context_audio_outcome(self, context_id: str, received_audio: bool) -> None:
        # Pipecat's hook for a finished context: one that ended silent is reported as an error, which fails the
        # response; a reply whose sentences were not spoken on purpose (no voice for their language) must not.
        if context_id in self._routed_contexts:
            self._routed_contexts.discard(context_id)
            if not received_audio:
                return
        await super()._record_context_audio_outcome(context_id, received_audio)

    @abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """PCM16 mono at `input_rate` for `text`, as it arrives; failures raised as `ProviderError`s."""


def has_words(text: str) -> bool:
    """Whether `text` has anything to say: a letter or digit of any script."""
    return any(char.isalnum() for char in text)


async def pause(rate: int, seconds: float) -> AsyncIterator[bytes]:
    """Silence as PCM16 mono at `rate`."""
    yield bytes(2 * round(rate * seconds))


class ServiceOptions(TypedDict):
    """What each session's `StreamingTTS` starts with, from its provider."""

    model: str | None
    voice: str
    timeout_s: float | None
    secrets: list[str]
    session_id: str


class SpeedVoiceProvider:
    """What our TTS providers share: one service per session, starting with the configured model and voice; voice
    and speed changes reach it as `SpeedSettings` deltas."""

    name: str
    secrets: list[str]
    model: str | None = None
    default_voice: str
    timeout_s: float | None

    def service_options(self, session_id: str) -> ServiceOptions:
        return {
            "model": self.model,
            "voice": self.default_voice,
            "timeout_s": self.timeout_s,
            "secrets": self.secrets,
            "session_id": session_id,
        }

    def settings_delta(self, voice: str, speed: float) -> TTSSettings:
        return SpeedSettings(voice=voice, speed=speed)

    async def close(self) -> None:
        return None
