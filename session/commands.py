"""What the session core and the pipeline exchange: the commands the core gives, and what the pipeline reports.

Plain data, no behaviour: the core (`realtime_session.py` and this package) builds commands, `pipeline_manager.py`
carries them out, and the pipeline's stages report back token usage and provider failures in these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, TypeAlias

from audio_utils import AudioFormat
from protocol import JsonDict, Modality
from session.configuration import TurnDetectionConfig


@dataclass(frozen=True)
class TruncationPolicy:
    """The session's `truncation`: what the LLM stage does when the conversation does not fit the model's context
    (`context_window.py`). `auto` drops the oldest items until it fits; `disabled` fails the response instead;
    `retention_ratio` drops them, once past the limit (`post_instructions_tokens`, default: all the context allows),
    until `retention_ratio` of that limit is left, and keeps that cut on later turns."""

    kind: Literal["auto", "disabled", "retention_ratio"] = "auto"
    retention_ratio: float = 1.0
    post_instructions_tokens: int | None = None


@dataclass
class ChatUnit:
    """The chat messages of conversation items that the LLM must see together or not at all: one message, or an
    assistant turn with its tool calls and their outputs (chat APIs refuse a call without its answer)."""

    item_ids: tuple[str, ...]
    messages: list[JsonDict]


@dataclass
class RunResponse:
    """Generate a response: run the LLM on the conversation (`system` then `units`), and TTS on its text when
    `modality` is audio."""

    response_id: str
    system: list[JsonDict]  # the instructions, which truncation never drops
    units: list[ChatUnit]  # the conversation, oldest first
    tools: list[JsonDict]
    tool_choice: str | JsonDict
    max_tokens: int
    temperature: float
    modality: Modality
    voice: str
    speed: float
    session_id: str  # who asks: providers name it in their requests (`providers.base.REQUEST_ID_HEADER`)
    truncation: TruncationPolicy = field(default_factory=TruncationPolicy)
    in_band: bool = True  # out-of-band responses leave the session's truncation point alone
    has_images: bool = False

    @property
    def messages(self) -> list[JsonDict]:
        return [*self.system, *(message for unit in self.units for message in unit.messages)]


@dataclass
class PreemptResponse:
    """Generate the reply a paused turn would get, on its speculative transcript, before the turn has ended: the
    pipeline runs it as any response, the core holds back what it reports (see `session.responses`)."""

    run: RunResponse


class PreemptionEnd(Enum):
    """How a preemptive response ended: adopted by the turn it was started for, or discarded (and why)."""

    ADOPTED = "adopted"
    SPEECH_RESUMED = "speech_resumed"  # the pause was not the end of the turn
    CONTEXT_CHANGED = "context_changed"  # the request the turn's response makes is not the one started
    CLIENT_EVENT = "client_event"  # the client changed the session, the conversation or the input buffer
    TURN_DROPPED = "turn_dropped"  # the turn in progress was cleared or committed by the client
    FAILED = "failed"  # a provider failed it: the response runs afresh
    SESSION_ENDED = "session_ended"


@dataclass
class EndPreemption:
    """A preemptive response was adopted (its run goes on as the response's) or discarded (cancel it)."""

    response_id: str
    end: PreemptionEnd


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


@dataclass(frozen=True)
class McpServer:
    """An MCP server a session's tools name; its credentials never show in a repr (nor in logs)."""

    label: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    authorization: str | None = field(default=None, repr=False)

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.authorization is not None:
            headers["Authorization"] = f"Bearer {self.authorization}"
        return headers


@dataclass
class ListMcpTools:
    """Connect to an MCP server (once per session) and list its tools; the result comes back under `request_id`
    (the `mcp_list_tools` item's id)."""

    request_id: str
    server: McpServer


@dataclass
class CallMcpTool:
    """Call one tool of a listed MCP server for a response; the result comes back under `request_id` (the
    `mcp_call` item's id). `CancelResponse` for the response cancels it."""

    request_id: str
    response_id: str
    server: McpServer
    tool: str
    arguments: JsonDict


class AudioOutput(Enum):
    """Where a session's reply audio goes: `response.output_audio.delta` events (WebSocket), or a media track that
    plays it in real time (WebRTC), which the session tells the client about with `output_audio_buffer.*` events."""

    EVENTS = "events"
    TRACK = "track"


@dataclass
class PlayAudio:
    """Queue reply audio on the outgoing track (`AudioOutput.TRACK`): `audio` in `audio_format`, of `item_id`."""

    response_id: str
    item_id: str
    audio: bytes
    audio_format: AudioFormat


@dataclass
class EndAudio:
    """The response's audio is all queued: once it has played out the track reports it stopped."""

    response_id: str


@dataclass
class ClearAudio:
    """Drop the audio still queued on the track at once; the track reports what of it had played."""


McpCommand: TypeAlias = ListMcpTools | CallMcpTool
Command: TypeAlias = (
    RunResponse
    | PreemptResponse
    | EndPreemption
    | CancelResponse
    | FeedAudio
    | ConfigureTurnDetection
    | ResetTurnDetection
    | Transcribe
    | ListMcpTools
    | CallMcpTool
    | PlayAudio
    | EndAudio
    | ClearAudio
)


class McpErrorKind(Enum):
    """How an MCP call failed, as the API tells the client (`realtime_mcp_*_error.py` in the SDK)."""

    PROTOCOL = "protocol_error"  # a JSON-RPC error, the server unreachable, a timeout (with a JSON-RPC code)
    TOOL_EXECUTION = "tool_execution_error"  # the tool ran and reported an error
    HTTP = "http_error"  # the server answered with an HTTP error status


@dataclass(frozen=True)
class McpCallError:
    kind: McpErrorKind
    message: str
    code: int = 0

    def to_wire(self) -> JsonDict:
        if self.kind is McpErrorKind.TOOL_EXECUTION:
            return {"type": self.kind.value, "message": self.message}
        return {"type": self.kind.value, "code": self.code, "message": self.message}


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
