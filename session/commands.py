"""What the session core and the pipeline exchange: the commands the core gives, and what the pipeline reports.

Plain data, no behaviour: the core (`realtime_session.py` and this package) builds commands, `pipeline_manager.py`
carries them out, and the pipeline's stages report back token usage and provider failures in these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from protocol import JsonDict, Modality
from session.configuration import TurnDetectionConfig


@dataclass
class RunResponse:
    """Generate a response: run the LLM on `messages`, and TTS on its text when `modality` is audio."""

    response_id: str
    messages: list[JsonDict]
    tools: list[JsonDict]
    tool_choice: str | JsonDict
    max_tokens: int
    temperature: float
    modality: Modality
    voice: str
    speed: float
    session_id: str  # who asks: providers name it in their requests (`providers.base.REQUEST_ID_HEADER`)
    has_images: bool = False


@dataclass
class CancelResponse:
    """Stop generating a response; nothing more of it reaches the client."""

    response_id: str


@dataclass
class FeedAudio:
    """Input audio for turn detection, as PCM16 mono 16 kHz."""

    pcm: bytes


@dataclass
class ConfigureTurnDetection:
    """The session's `turn_detection` changed (None: no detection, the client commits)."""

    turn_detection: TurnDetectionConfig | None


@dataclass
class ResetTurnDetection:
    """The input buffer was cleared: any turn in progress is dropped."""


@dataclass
class Transcribe:
    """Transcribe a user turn (PCM16 mono 16 kHz); the result comes back under `request_id`."""

    request_id: str
    pcm: bytes
    language: str | None
    prompt: str | None
    session_id: str  # who asks, as for `RunResponse`


Command: TypeAlias = RunResponse | CancelResponse | FeedAudio | ConfigureTurnDetection | ResetTurnDetection | Transcribe


@dataclass
class Usage:
    """Token counts reported by the LLM provider for one response."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    image_tokens: int = 0

    def to_wire(self) -> JsonDict:
        text_input = max(self.input_tokens - self.image_tokens, 0)
        return {
            "total_tokens": self.input_tokens + self.output_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_token_details": {
                "text_tokens": text_input,
                "audio_tokens": 0,
                "image_tokens": self.image_tokens,
                "cached_tokens": self.cached_tokens,
                "cached_tokens_details": {"text_tokens": self.cached_tokens, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": self.output_tokens, "audio_tokens": 0},
        }


@dataclass
class ProviderFailure:
    """A provider (LLM, TTS, STT) failure, as reported to the client."""

    code: str
    message: str
    error_type: str = "server_error"
    extra: JsonDict = field(default_factory=dict)
