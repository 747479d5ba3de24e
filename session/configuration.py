"""A session's configuration: what a session starts with, how `session.update` changes it, and how it is shown.

`RealtimeConfig` and `TranscriptionConfig` are the effective session as typed, immutable models in the GA shape.
`new_session_config` makes the first one from `SessionDefaults` (the server's settings, given by the composition
root: nothing here reads settings); `SessionConfigBase.updated` applies a `session.update` (validated, merged by the
rules of `merge_session`) and returns the next one; `render` shows it in either dialect. The client-secret endpoints
validate and describe the configuration a secret carries through the same functions, so their errors are the same.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from audio_utils import AudioFormat
from protocol import (
    DEFAULT_TRANSCRIPTION_MODEL,
    DEFAULT_VOICE,
    Dialect,
    JsonDict,
    Modality,
    ProtocolError,
    SessionKind,
    SessionUpdate,
    new_id,
)
from wire.beta import to_beta_session, to_beta_transcription_session
from wire.canonical import check_mcp_hosts, check_output_and_tools
from wire.models import (
    GaAudioFormat,
    GaTranscription,
    NoiseReduction,
    PromptReference,
    Reasoning,
    Tool,
    ToolChoice,
    Tracing,
    Truncation,
    VoiceId,
)


@dataclass(frozen=True)
class SessionDefaults:
    """What a new session starts with; the server builds it from its settings."""

    model: str
    instructions: str
    temperature: float
    llm_max_tokens: int
    vad_threshold: float
    vad_prefix_padding_ms: int
    vad_silence_duration_ms: int
    lifetime_s: int
    max_retained_audio_ms: float
    voice: str = DEFAULT_VOICE
    transcription_model: str = DEFAULT_TRANSCRIPTION_MODEL
    mcp_allowed_hosts: tuple[str, ...] = ()  # the hosts MCP tools may name; empty: any
    preemptive_responses: bool = False  # a paused turn's reply starts on its speculative transcript, held back

    def turn_detection(self) -> dict[str, JsonDict]:
        """Each turn detection type's settings when a session (or a `session.update`) does not give them."""
        return {
            "server_vad": {
                "threshold": self.vad_threshold,
                "prefix_padding_ms": self.vad_prefix_padding_ms,
                "silence_duration_ms": self.vad_silence_duration_ms,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
            "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
        }


# --------------------------------------------------------------------------------------------------------------
# The effective configuration
# --------------------------------------------------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerVadConfig(_Config):
    type: Literal["server_vad"]
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    idle_timeout_ms: int | None
    create_response: bool
    interrupt_response: bool


class SemanticVadConfig(_Config):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"]
    create_response: bool
    interrupt_response: bool


TurnDetectionConfig: TypeAlias = Annotated[ServerVadConfig | SemanticVadConfig, Field(discriminator="type")]


class InputAudioConfig(_Config):
    format: GaAudioFormat
    transcription: GaTranscription | None
    noise_reduction: NoiseReduction | None
    turn_detection: TurnDetectionConfig | None

    @cached_property
    def audio_format(self) -> AudioFormat:
        return AudioFormat.from_wire({"type": self.format.type})


class OutputAudioConfig(_Config):
    format: GaAudioFormat
    voice: str | VoiceId
    speed: float

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class RealtimeAudioConfig(_Config):
    input: InputAudioConfig
    output: OutputAudioConfig


class TranscriptionAudioConfig(_Config):
    input: InputAudioConfig


class SessionConfigBase(_Config):
    id: str
    expires_at: int
    include: list[str] | None

    @property
    def kind(self) -> SessionKind:
        return self.type  # type: ignore[attr-defined,no-any-return]

    @property
    def input(self) -> InputAudioConfig:
        return self.audio.input  # type: ignore[attr-defined,no-any-return]

    def to_ga(self) -> JsonDict:
        """The session object of the GA dialect: exactly the fields the session has been given."""
        return self.model_dump(exclude_unset=True)

    def updated(self, update: SessionUpdate, defaults: SessionDefaults) -> Self:
        """This configuration with `update` applied; a `ProtocolError` (and no change) when the update is invalid."""
        event_id = update.event_id
        if update.kind != self.kind:
            which = "transcription" if update.kind == "transcription" else "realtime"
            raise ProtocolError(
                f"Passing a {which} session update event to a {self.kind} session is not allowed.",
                param="session.type",
                event_id=event_id,
            )
        patch = update.patch
        check_output_and_tools(patch, "session", event_id)
        check_unique_tools(patch.get("tools") or [], "session.tools", event_id)
        check_mcp_hosts(patch.get("tools") or [], defaults.mcp_allowed_hosts, "session", event_id)
        merged = merge_session(self.to_ga(), patch, defaults.turn_detection())
        _restore_required(merged, _initial_fields(defaults, self.kind, self.id, None))
        choice = merged.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "mcp":
            labels = {tool.get("server_label") for tool in merged.get("tools") or [] if tool.get("type") == "mcp"}
            if choice["server_label"] not in labels:
                raise ProtocolError(
                    f"Tool choice names the MCP server '{choice['server_label']}', which is not one of the tools.",
                    param="session.tool_choice.server_label",
                    event_id=event_id,
                )
        return type(self).model_validate({**merged, **self._carried(update)})

    def _carried(self, update: SessionUpdate) -> JsonDict:
        """Settings outside the GA session object that an update keeps, or changes."""
        return {}


class RealtimeConfig(SessionConfigBase):
    type: Literal["realtime"]
    object: Literal["realtime.session"]
    model: str
    output_modalities: list[Modality]
    instructions: str
    tools: list[Tool]
    tool_choice: ToolChoice
    max_output_tokens: int | Literal["inf"]
    tracing: Tracing | None
    truncation: Truncation
    prompt: PromptReference | None
    audio: RealtimeAudioConfig
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None
    temperature: float = Field(exclude=True)  # the beta dialect's: GA sessions have none

    @property
    def modality(self) -> Modality:
        return self.output_modalities[0]

    def _carried(self, update: SessionUpdate) -> JsonDict:
        return {"temperature": update.temperature if update.temperature is not None else self.temperature}

    def render(self, dialect: Dialect) -> JsonDict:
        shown = self.to_ga()
        # MCP credentials are the client's secret: the real API does not echo them either.
        shown["tools"] = [{k: v for k, v in tool.items() if k not in _SECRET_TOOL_FIELDS} for tool in shown["tools"]]
        return shown if dialect == "ga" else to_beta_session(shown, self.temperature)


class TranscriptionConfig(SessionConfigBase):
    type: Literal["transcription"]
    object: Literal["realtime.transcription_session"]
    audio: TranscriptionAudioConfig

    def render(self, dialect: Dialect) -> JsonDict:
        return self.to_ga() if dialect == "ga" else to_beta_transcription_session(self.to_ga())


SessionConfig: TypeAlias = RealtimeConfig | TranscriptionConfig
_SECRET_TOOL_FIELDS = frozenset({"headers", "authorization"})


def check_unique_tools(tools: list[JsonDict], param: str, event_id: str | None) -> None:
    """Function names, and MCP server labels, each name one tool."""
    names = [tool["name"] for tool in tools if tool.get("type") == "function"]
    if len(names) != len(set(names)):
        raise ProtocolError("Tool names must be unique.", param=param, event_id=event_id)
    labels = [tool["server_label"] for tool in tools if tool.get("type") == "mcp"]
    if len(labels) != len(set(labels)):
        raise ProtocolError("MCP server labels must be unique.", param=param, event_id=event_id)


def new_session_config(
    defaults: SessionDefaults, kind: SessionKind, *, now: float, model: str | None = None, session_id: str | None = None
) -> SessionConfig:
    """The configuration a new session starts with (before any configuration a client secret carries)."""
    fields = _initial_fields(defaults, kind, session_id or new_id("sess"), model)
    fields["expires_at"] = int(now) + defaults.lifetime_s
    if kind == "transcription":
        return TranscriptionConfig.model_validate(fields)
    return RealtimeConfig.model_validate({**fields, "temperature": defaults.temperature})


def _initial_fields(defaults: SessionDefaults, kind: SessionKind, session_id: str, model: str | None) -> JsonDict:
    pcm = {"type": "audio/pcm", "rate": 24000}
    turn_detection = {"type": "server_vad", **defaults.turn_detection()["server_vad"]}
    audio_input: JsonDict = {
        "format": pcm,
        "transcription": None,
        "noise_reduction": None,
        "turn_detection": turn_detection,
    }
    if kind == "transcription":
        audio_input["transcription"] = {"model": defaults.transcription_model, "language": None, "prompt": ""}
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": session_id,
            "expires_at": 0,
            "audio": {"input": audio_input},
            "include": None,
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model or defaults.model,
        "output_modalities": ["audio"],
        "instructions": defaults.instructions,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "include": None,
        "audio": {"input": audio_input, "output": {"format": dict(pcm), "voice": defaults.voice, "speed": 1.0}},
    }


# --------------------------------------------------------------------------------------------------------------
# session.update merge semantics
# --------------------------------------------------------------------------------------------------------------

# Keys whose value is replaced as a whole rather than merged key by key.
_REPLACED_KEYS = frozenset({"format", "voice", "tools", "tool_choice", "tracing", "truncation", "prompt", "include"})
# Fields a session cannot be without: `null` for one of them means its default.
_REQUIRED_PATHS = (
    ("model",),
    ("instructions",),
    ("output_modalities",),
    ("tools",),
    ("tool_choice",),
    ("max_output_tokens",),
    ("truncation",),
    ("audio", "input", "format"),
    ("audio", "output", "format"),
    ("audio", "output", "voice"),
    ("audio", "output", "speed"),
)


def merge_session(current: JsonDict, patch: JsonDict, turn_detection_defaults: dict[str, JsonDict]) -> JsonDict:
    """`current` with `patch` applied: nested objects merge, `null` clears, lists and the keys in
    `_REPLACED_KEYS` are replaced, and a turn detection of another `type` starts from that type's defaults (a `null`
    inside a turn detection means that setting's default)."""
    merged = copy.deepcopy(current)
    for key, value in patch.items():
        old = merged.get(key)
        if key == "turn_detection" and isinstance(value, dict):
            kind = value.get("type") or (old or {}).get("type") or "server_vad"
            defaults = turn_detection_defaults[kind]
            base = dict(old) if old is not None and old.get("type") == kind else dict(defaults)
            given = {name: setting if setting is not None else defaults.get(name) for name, setting in value.items()}
            merged[key] = {**base, **given, "type": kind}
        elif isinstance(value, dict) and isinstance(old, dict) and key not in _REPLACED_KEYS:
            merged[key] = merge_session(old, value, turn_detection_defaults)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _restore_required(merged: JsonDict, initial: JsonDict) -> None:
    for path in _REQUIRED_PATHS:
        container: Any = merged
        for key in path[:-1]:
            container = container.get(key) if isinstance(container, dict) else None
        if isinstance(container, dict) and path[-1] in container and container[path[-1]] is None:
            value: Any = initial
            for key in path:
                value = value[key]
            container[path[-1]] = copy.deepcopy(value)


def as_wire(value: Any) -> Any:
    """A configuration value as the client sends it: models as the dicts they were made from."""
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
