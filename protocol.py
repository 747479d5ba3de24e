"""The OpenAI Realtime wire protocol, both dialects (GA and beta), with no I/O.

Three things live here:

* typed models of every client event of both dialects (strict: unknown fields and wrong types are errors, the way
  the real API answers them), parsed by `parse_client_event` into dialect-neutral commands;
* the names of every server event, with the beta name of each GA event;
* the translation of the session object, conversation items and responses between the canonical shape used
  inside the server (the GA shape) and the beta shape (`to_beta_*`, `render_event`).

The canonical shape is GA: the session state machine builds GA events and `render_event` rewrites them for beta
connections, so each ordering rule is written once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Dialect: TypeAlias = Literal["ga", "beta"]
SessionKind: TypeAlias = Literal["realtime", "transcription"]
JsonDict: TypeAlias = dict[str, Any]

MAX_OUTPUT_TOKENS_LIMIT = 4096
MIN_COMMIT_MS = 100
MAX_APPEND_AUDIO_BYTES = 15 * 1024 * 1024  # what the API allows in one input_audio_buffer.append
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")


# --------------------------------------------------------------------------------------------------------------
# Event names
# --------------------------------------------------------------------------------------------------------------


class ClientEvent(StrEnum):
    SESSION_UPDATE = "session.update"
    TRANSCRIPTION_SESSION_UPDATE = "transcription_session.update"  # beta only
    INPUT_AUDIO_BUFFER_APPEND = "input_audio_buffer.append"
    INPUT_AUDIO_BUFFER_COMMIT = "input_audio_buffer.commit"
    INPUT_AUDIO_BUFFER_CLEAR = "input_audio_buffer.clear"
    OUTPUT_AUDIO_BUFFER_CLEAR = "output_audio_buffer.clear"
    CONVERSATION_ITEM_CREATE = "conversation.item.create"
    CONVERSATION_ITEM_RETRIEVE = "conversation.item.retrieve"
    CONVERSATION_ITEM_TRUNCATE = "conversation.item.truncate"
    CONVERSATION_ITEM_DELETE = "conversation.item.delete"
    RESPONSE_CREATE = "response.create"
    RESPONSE_CANCEL = "response.cancel"


class ServerEvent(StrEnum):
    """Server events under their GA names; `BETA_EVENT_NAMES` gives the beta name where it differs."""

    ERROR = "error"
    SESSION_CREATED = "session.created"
    SESSION_UPDATED = "session.updated"
    TRANSCRIPTION_SESSION_CREATED = "transcription_session.created"  # beta only
    TRANSCRIPTION_SESSION_UPDATED = "transcription_session.updated"  # beta only
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_ITEM_ADDED = "conversation.item.added"
    CONVERSATION_ITEM_DONE = "conversation.item.done"  # GA only
    CONVERSATION_ITEM_RETRIEVED = "conversation.item.retrieved"
    CONVERSATION_ITEM_TRUNCATED = "conversation.item.truncated"
    CONVERSATION_ITEM_DELETED = "conversation.item.deleted"
    INPUT_TRANSCRIPTION_DELTA = "conversation.item.input_audio_transcription.delta"
    INPUT_TRANSCRIPTION_COMPLETED = "conversation.item.input_audio_transcription.completed"
    INPUT_TRANSCRIPTION_FAILED = "conversation.item.input_audio_transcription.failed"
    INPUT_AUDIO_BUFFER_COMMITTED = "input_audio_buffer.committed"
    INPUT_AUDIO_BUFFER_CLEARED = "input_audio_buffer.cleared"
    INPUT_AUDIO_BUFFER_SPEECH_STARTED = "input_audio_buffer.speech_started"
    INPUT_AUDIO_BUFFER_SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
    INPUT_AUDIO_BUFFER_TIMEOUT_TRIGGERED = "input_audio_buffer.timeout_triggered"  # GA only
    RESPONSE_CREATED = "response.created"
    RESPONSE_DONE = "response.done"
    RESPONSE_OUTPUT_ITEM_ADDED = "response.output_item.added"
    RESPONSE_OUTPUT_ITEM_DONE = "response.output_item.done"
    RESPONSE_CONTENT_PART_ADDED = "response.content_part.added"
    RESPONSE_CONTENT_PART_DONE = "response.content_part.done"
    RESPONSE_OUTPUT_TEXT_DELTA = "response.output_text.delta"
    RESPONSE_OUTPUT_TEXT_DONE = "response.output_text.done"
    RESPONSE_OUTPUT_AUDIO_DELTA = "response.output_audio.delta"
    RESPONSE_OUTPUT_AUDIO_DONE = "response.output_audio.done"
    RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA = "response.output_audio_transcript.delta"
    RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
    RESPONSE_FUNCTION_CALL_ARGUMENTS_DELTA = "response.function_call_arguments.delta"
    RESPONSE_FUNCTION_CALL_ARGUMENTS_DONE = "response.function_call_arguments.done"


BETA_EVENT_NAMES: dict[str, str] = {
    ServerEvent.CONVERSATION_ITEM_ADDED: "conversation.item.created",
    ServerEvent.RESPONSE_OUTPUT_TEXT_DELTA: "response.text.delta",
    ServerEvent.RESPONSE_OUTPUT_TEXT_DONE: "response.text.done",
    ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA: "response.audio.delta",
    ServerEvent.RESPONSE_OUTPUT_AUDIO_DONE: "response.audio.done",
    ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA: "response.audio_transcript.delta",
    ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE: "response.audio_transcript.done",
}
# Events the beta dialect does not have: they are not sent on beta connections.
GA_ONLY_EVENTS = frozenset({ServerEvent.CONVERSATION_ITEM_DONE, ServerEvent.INPUT_AUDIO_BUFFER_TIMEOUT_TRIGGERED})


# --------------------------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------------------------

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """A random id shaped like OpenAI's (`event_`, `item_`, `resp_`, … followed by 21 base-62 characters)."""
    number = int.from_bytes(os.urandom(16), "big")
    chars = []
    for _ in range(21):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(chars)}"


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ProtocolError(Exception):
    """A client mistake, reported to the client as an `error` event; the session goes on."""

    message: str
    code: str | None = "invalid_value"
    param: str | None = None
    event_id: str | None = None
    type: str = "invalid_request_error"

    def __str__(self) -> str:
        return self.message

    def to_event(self) -> JsonDict:
        return error_event(self.type, self.code, self.message, self.param, self.event_id)


def error_event(
    error_type: str, code: str | None, message: str, param: str | None = None, event_id: str | None = None
) -> JsonDict:
    return {
        "type": ServerEvent.ERROR.value,
        "event_id": new_id("event"),
        "error": {"type": error_type, "code": code, "message": message, "param": param, "event_id": event_id},
    }


# --------------------------------------------------------------------------------------------------------------
# Wire models of client events. Strict, like the real API: an unknown field is `unknown_parameter`, a wrong type
# is `invalid_type`, a value out of range or outside an enumeration is `invalid_value` (or the numeric bound code).
# --------------------------------------------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _LooseWire(BaseModel):
    """Shapes we recognise only to reject with a clear message (MCP tools and items)."""

    model_config = ConfigDict(extra="allow")


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS_LIMIT)] | Literal["inf"]
Modality = Literal["text", "audio"]
Metadata = dict[str, str] | None


# ---- GA -----------------------------------------------------------------------------------------------------


class GaPcmFormat(_Wire):
    type: Literal["audio/pcm"]
    rate: Literal[24000] = 24000


class GaPcmuFormat(_Wire):
    type: Literal["audio/pcmu"]


class GaPcmaFormat(_Wire):
    type: Literal["audio/pcma"]


GaAudioFormat = Annotated[GaPcmFormat | GaPcmuFormat | GaPcmaFormat, Field(discriminator="type")]


class GaServerVad(_Wire):
    type: Literal["server_vad"]
    threshold: Probability | None = None
    prefix_padding_ms: NonNegativeInt | None = None
    silence_duration_ms: NonNegativeInt | None = None
    idle_timeout_ms: Annotated[int, Field(ge=1)] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class GaSemanticVad(_Wire):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


GaTurnDetection = Annotated[GaServerVad | GaSemanticVad, Field(discriminator="type")]


class NoiseReduction(_Wire):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class GaTranscription(_Wire):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    languages: list[str] | None = None
    keywords: list[str] | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class GaAudioInput(_Wire):
    format: GaAudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: GaTranscription | None = None
    turn_detection: GaTurnDetection | None = None


class VoiceId(_Wire):
    id: str


class GaAudioOutput(_Wire):
    format: GaAudioFormat | None = None
    voice: str | VoiceId | None = None
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None


class GaAudio(_Wire):
    input: GaAudioInput | None = None
    output: GaAudioOutput | None = None


class FunctionTool(_Wire):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpTool(_LooseWire):
    type: Literal["mcp"]


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class ToolChoiceFunction(_Wire):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(_LooseWire):
    type: Literal["mcp"]


ToolChoiceObject = Annotated[ToolChoiceFunction | ToolChoiceMcp, Field(discriminator="type")]
ToolChoice = Literal["none", "auto", "required"] | ToolChoiceObject


class TracingConfig(_Wire):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: Any = None


class TokenLimits(_Wire):
    post_instructions: NonNegativeInt | None = None


class RetentionRatioTruncation(_Wire):
    type: Literal["retention_ratio"]
    retention_ratio: Probability
    token_limits: TokenLimits | None = None


class PromptReference(_Wire):
    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


class Reasoning(_Wire):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class GaRealtimeSession(_Wire):
    type: Literal["realtime"]
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Modality] | None = None
    audio: GaAudio | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: OutputTokens | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    tracing: Literal["auto"] | TracingConfig | None = None
    truncation: Literal["auto", "disabled"] | RetentionRatioTruncation | None = None
    prompt: PromptReference | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


class GaTranscriptionAudio(_Wire):
    input: GaAudioInput | None = None


class GaTranscriptionSession(_Wire):
    type: Literal["transcription"]
    audio: GaTranscriptionAudio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


GaSession = Annotated[GaRealtimeSession | GaTranscriptionSession, Field(discriminator="type")]


class ContentPart(_Wire):
    type: Literal["input_text", "input_audio", "input_image", "output_text", "output_audio", "text", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class MessageItem(_Wire):
    type: Literal["message"]
    role: Literal["system", "user", "assistant"]
    content: list[ContentPart]
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    name: str
    arguments: str
    call_id: str | None = None
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class McpItem(_LooseWire):
    type: Literal["mcp_call", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response"]


class ItemReference(_Wire):
    type: Literal["item_reference"]
    id: str


GaItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem | McpItem, Field(discriminator="type")]
GaInputItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | McpItem | ItemReference, Field(discriminator="type")
]


class GaResponseAudioOutput(_Wire):
    format: GaAudioFormat | None = None
    voice: str | VoiceId | None = None


class GaResponseAudio(_Wire):
    output: GaResponseAudioOutput | None = None


class GaResponseParams(_Wire):
    conversation: str | None = None
    input: list[GaInputItem] | None = None
    instructions: str | None = None
    output_modalities: list[Modality] | None = None
    audio: GaResponseAudio | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: OutputTokens | None = None
    metadata: Metadata = None
    prompt: PromptReference | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


# ---- beta ---------------------------------------------------------------------------------------------------

BetaAudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]


class BetaTurnDetection(_Wire):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: Probability | None = None
    prefix_padding_ms: NonNegativeInt | None = None
    silence_duration_ms: NonNegativeInt | None = None
    idle_timeout_ms: Annotated[int, Field(ge=1)] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class BetaTranscription(_Wire):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class ClientSecretExpiry(_Wire):
    anchor: Literal["created_at"] | None = None
    seconds: Annotated[int, Field(ge=10, le=7200)] | None = None


class BetaClientSecret(_Wire):
    expires_after: ClientSecretExpiry | None = None
    expires_at: ClientSecretExpiry | None = None


class BetaSession(_Wire):
    model: str | None = None
    modalities: list[Modality] | None = None
    instructions: str | None = None
    voice: str | None = None
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None
    input_audio_format: BetaAudioFormat | None = None
    output_audio_format: BetaAudioFormat | None = None
    input_audio_transcription: BetaTranscription | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    turn_detection: BetaTurnDetection | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | None = None
    temperature: Annotated[float, Field(ge=0.6, le=1.2)] | None = None
    max_response_output_tokens: OutputTokens | None = None
    tracing: Literal["auto"] | TracingConfig | None = None
    client_secret: BetaClientSecret | None = None


class BetaTranscriptionSession(_Wire):
    input_audio_format: BetaAudioFormat | None = None
    input_audio_transcription: BetaTranscription | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    turn_detection: BetaTurnDetection | None = None
    include: list[str] | None = None
    modalities: list[Modality] | None = None
    client_secret: BetaClientSecret | None = None


class BetaContentPart(_Wire):
    type: Literal["input_text", "input_audio", "input_image", "item_reference", "text", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None
    id: str | None = None


class BetaItem(_Wire):
    type: Literal["message", "function_call", "function_call_output", "item_reference"] | None = None
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None
    role: Literal["user", "assistant", "system"] | None = None
    content: list[BetaContentPart] | None = None
    name: str | None = None
    arguments: str | None = None
    call_id: str | None = None
    output: str | None = None


class BetaResponseParams(_Wire):
    conversation: str | None = None
    input: list[BetaItem] | None = None
    instructions: str | None = None
    modalities: list[Modality] | None = None
    voice: str | None = None
    output_audio_format: BetaAudioFormat | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | None = None
    temperature: Annotated[float, Field(ge=0.6, le=1.2)] | None = None
    max_response_output_tokens: OutputTokens | None = None
    metadata: Metadata = None


# ---- events (shared by both dialects where the shapes agree) ------------------------------------------------


class _Event(_Wire):
    event_id: str | None = None


class GaSessionUpdate(_Event):
    type: Literal["session.update"]
    session: GaSession


class BetaSessionUpdate(_Event):
    type: Literal["session.update"]
    session: BetaSession


class BetaTranscriptionSessionUpdate(_Event):
    type: Literal["transcription_session.update"]
    session: BetaTranscriptionSession


class AudioAppendEvent(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommitEvent(_Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClearEvent(_Event):
    type: Literal["input_audio_buffer.clear"]


class OutputAudioClearEvent(_Event):
    type: Literal["output_audio_buffer.clear"]


class GaItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: GaItem
    previous_item_id: str | None = None


class BetaItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: BetaItem
    previous_item_id: str | None = None


class ItemRetrieveEvent(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ItemDeleteEvent(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemTruncateEvent(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: NonNegativeInt
    audio_end_ms: NonNegativeInt


class GaResponseCreate(_Event):
    type: Literal["response.create"]
    response: GaResponseParams | None = None


class BetaResponseCreate(_Event):
    type: Literal["response.create"]
    response: BetaResponseParams | None = None


class ResponseCancelEvent(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


_COMMON_EVENT_MODELS: dict[str, type[_Event]] = {
    ClientEvent.INPUT_AUDIO_BUFFER_APPEND: AudioAppendEvent,
    ClientEvent.INPUT_AUDIO_BUFFER_COMMIT: AudioCommitEvent,
    ClientEvent.INPUT_AUDIO_BUFFER_CLEAR: AudioClearEvent,
    ClientEvent.OUTPUT_AUDIO_BUFFER_CLEAR: OutputAudioClearEvent,
    ClientEvent.CONVERSATION_ITEM_RETRIEVE: ItemRetrieveEvent,
    ClientEvent.CONVERSATION_ITEM_DELETE: ItemDeleteEvent,
    ClientEvent.CONVERSATION_ITEM_TRUNCATE: ItemTruncateEvent,
    ClientEvent.RESPONSE_CANCEL: ResponseCancelEvent,
}
CLIENT_EVENT_MODELS: dict[Dialect, dict[str, type[_Event]]] = {
    "ga": {
        **_COMMON_EVENT_MODELS,
        ClientEvent.SESSION_UPDATE: GaSessionUpdate,
        ClientEvent.CONVERSATION_ITEM_CREATE: GaItemCreate,
        ClientEvent.RESPONSE_CREATE: GaResponseCreate,
    },
    "beta": {
        **_COMMON_EVENT_MODELS,
        ClientEvent.SESSION_UPDATE: BetaSessionUpdate,
        ClientEvent.TRANSCRIPTION_SESSION_UPDATE: BetaTranscriptionSessionUpdate,
        ClientEvent.CONVERSATION_ITEM_CREATE: BetaItemCreate,
        ClientEvent.RESPONSE_CREATE: BetaResponseCreate,
    },
}


# ---- REST: ephemeral client secrets ------------------------------------------------------------------------


class GaClientSecretRequest(_Wire):
    expires_after: ClientSecretExpiry | None = None
    session: GaSession | None = None


@dataclass
class SecretRequest:
    """A request for an ephemeral client secret, whichever endpoint it came through."""

    kind: SessionKind
    patch: JsonDict  # the session configuration it carries, GA-shaped
    temperature: float | None
    ttl_s: int | None


def parse_secret_request(
    body: Any, endpoint: Literal["client_secrets", "sessions", "transcription_sessions"]
) -> SecretRequest:
    """Parses the body of `POST /v1/realtime/client_secrets` (GA), `/sessions` or `/transcription_sessions` (beta)."""
    if not isinstance(body, dict):
        raise ProtocolError(
            f"Expected the request body to be a JSON object, but got {_json_type_name(body)} instead.",
            code="invalid_request_body",
        )
    model: type[_Wire] = {
        "client_secrets": GaClientSecretRequest,
        "sessions": BetaSession,
        "transcription_sessions": BetaTranscriptionSession,
    }[endpoint]
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc, body, None) from None
    if isinstance(request, GaClientSecretRequest):
        expiry = request.expires_after
        session = request.session
        if session is None:
            return SecretRequest("realtime", {"type": "realtime"}, None, expiry.seconds if expiry else None)
        return SecretRequest(session.type, _dump(session), None, expiry.seconds if expiry else None)
    secret = request.client_secret  # type: ignore[union-attr]
    expiry = (secret.expires_after or secret.expires_at) if secret is not None else None
    ttl_s = expiry.seconds if expiry is not None else None
    if isinstance(request, BetaSession):
        update = _beta_session_update(request, None)
    else:
        update = _beta_transcription_update(request, None)  # type: ignore[arg-type]
    return SecretRequest(update.kind, update.patch, update.temperature, ttl_s)


# --------------------------------------------------------------------------------------------------------------
# Dialect-neutral commands produced by parsing
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SessionUpdate:
    event_id: str | None
    kind: SessionKind
    patch: JsonDict  # GA-shaped partial session (see `GaRealtimeSession`), only the fields the client sent
    temperature: float | None = None  # beta only; GA has no temperature


@dataclass
class AudioAppend:
    event_id: str | None
    audio: str


@dataclass
class AudioCommit:
    event_id: str | None


@dataclass
class AudioClear:
    event_id: str | None


@dataclass
class OutputAudioClear:
    event_id: str | None


@dataclass
class ItemCreate:
    event_id: str | None
    item: JsonDict  # canonical (GA) item without server-assigned fields
    previous_item_id: str | None
    previous_item_id_given: bool


@dataclass
class ItemRetrieve:
    event_id: str | None
    item_id: str


@dataclass
class ItemDelete:
    event_id: str | None
    item_id: str


@dataclass
class ItemTruncate:
    event_id: str | None
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass
class ResponseCreate:
    event_id: str | None
    params: JsonDict  # GA-shaped `response` object, only the fields the client sent
    temperature: float | None = None


@dataclass
class ResponseCancel:
    event_id: str | None
    response_id: str | None


ClientCommand: TypeAlias = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | OutputAudioClear
    | ItemCreate
    | ItemRetrieve
    | ItemDelete
    | ItemTruncate
    | ResponseCreate
    | ResponseCancel
)


# --------------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------------


def parse_client_event(raw: str | bytes, dialect: Dialect) -> ClientCommand:
    """Parse one WebSocket message into a command, or raise `ProtocolError` shaped like the real API's."""
    if isinstance(raw, bytes):
        raise ProtocolError(
            "Binary frames are not supported: send each event as a JSON text frame.", code="invalid_event"
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"The event could not be parsed as JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"Expected the event to be a JSON object, but got {_json_type_name(data)} instead.", code="invalid_event"
        )
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    event_type = data.get("type")
    if event_type is None:
        raise ProtocolError("The 'type' field is missing.", code="invalid_event", param="type", event_id=event_id)
    if not isinstance(event_type, str):
        raise ProtocolError(
            f"Invalid type for 'type': expected a string, but got {_json_type_name(event_type)} instead.",
            code="invalid_type",
            param="type",
            event_id=event_id,
        )
    models = CLIENT_EVENT_MODELS[dialect]
    model = models.get(event_type)
    if model is None:
        supported = ", ".join(f"'{name}'" for name in models)
        raise ProtocolError(
            f"Invalid value: '{_clip(event_type)}'. Supported values are: {supported}.",
            code="invalid_value",
            param="type",
            event_id=event_id,
        )
    if event_type == ClientEvent.INPUT_AUDIO_BUFFER_APPEND:
        return _parse_append_fast(data, event_id)
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, data, event_id) from None
    return _to_command(event, dialect)


def _parse_append_fast(data: JsonDict, event_id: str | None) -> AudioAppend:
    """`input_audio_buffer.append` is the hot path (50 per second per session): checked by hand, same errors."""
    for key in data:
        if key not in ("type", "event_id", "audio"):
            raise ProtocolError(f"Unknown parameter: '{_clip(key)}'.", "unknown_parameter", key, event_id)
    if "event_id" in data and not isinstance(data["event_id"], str):
        raise _invalid_type("event_id", "a string", data["event_id"], event_id)
    audio = data.get("audio")
    if audio is None:
        raise ProtocolError("Missing required parameter: 'audio'.", "missing_required_parameter", "audio", event_id)
    if not isinstance(audio, str):
        raise _invalid_type("audio", "a string", audio, event_id)
    return AudioAppend(event_id, audio)


def _to_command(event: _Event, dialect: Dialect) -> ClientCommand:
    eid = event.event_id
    match event:
        case GaSessionUpdate():
            session = event.session
            return SessionUpdate(eid, session.type, _dump(session))
        case BetaSessionUpdate():
            return _beta_session_update(event.session, eid)
        case BetaTranscriptionSessionUpdate():
            return _beta_transcription_update(event.session, eid)
        case AudioCommitEvent():
            return AudioCommit(eid)
        case AudioClearEvent():
            return AudioClear(eid)
        case OutputAudioClearEvent():
            return OutputAudioClear(eid)
        case GaItemCreate():
            given = "previous_item_id" in event.model_fields_set
            item = canonical_item(_dump(event.item), "item", eid)
            return ItemCreate(eid, item, event.previous_item_id, given)
        case BetaItemCreate():
            given = "previous_item_id" in event.model_fields_set
            ga_item = beta_item_to_ga(_dump(event.item))
            _require_beta_item_fields(ga_item, "item", eid)
            if ga_item["type"] == "item_reference":
                raise ProtocolError(
                    "Item references can only be used in response.input.", param="item.type", event_id=eid
                )
            item = canonical_item(ga_item, "item", eid)
            return ItemCreate(eid, item, event.previous_item_id, given)
        case ItemRetrieveEvent():
            return ItemRetrieve(eid, event.item_id)
        case ItemDeleteEvent():
            return ItemDelete(eid, event.item_id)
        case ItemTruncateEvent():
            return ItemTruncate(eid, event.item_id, event.content_index, event.audio_end_ms)
        case GaResponseCreate():
            params = _dump(event.response) if event.response is not None else {}
            _check_response_params(params, eid)
            return ResponseCreate(eid, params)
        case BetaResponseCreate():
            return _beta_response_create(event.response, eid)
        case ResponseCancelEvent():
            return ResponseCancel(eid, event.response_id)
    raise AssertionError(f"unhandled event model {type(event).__name__}")  # pragma: no cover


def _dump(model: BaseModel) -> JsonDict:
    return model.model_dump(exclude_unset=True)


def _check_response_params(params: JsonDict, event_id: str | None) -> None:
    """Checks the parts of a GA `response` that the field types alone cannot express."""
    conversation = params.get("conversation")
    if conversation is not None and conversation not in ("auto", "none"):
        raise ProtocolError(
            f"Invalid value: '{_clip(conversation)}'. Supported values are: 'auto' and 'none'.",
            param="response.conversation",
            event_id=event_id,
        )
    if "output_modalities" in params:
        check_modalities(params["output_modalities"], "response.output_modalities", event_id)
    for index, tool in enumerate(params.get("tools") or []):
        check_tool(tool, f"response.tools[{index}]", event_id)
    if "tool_choice" in params:
        check_tool_choice(params["tool_choice"], "response.tool_choice", event_id)
    canonical_input = []
    for index, item in enumerate(params.get("input") or []):
        if item.get("type") == "item_reference":
            canonical_input.append(item)
        else:
            canonical_input.append(canonical_item(item, f"response.input[{index}]", event_id))
    if "input" in params:
        params["input"] = canonical_input


def check_modalities(modalities: list[str], param: str, event_id: str | None) -> None:
    if sorted(set(modalities)) != sorted(modalities) or modalities not in (["text"], ["audio"]):
        raise ProtocolError(
            f"Invalid modalities: {modalities}. Supported combinations are: ['text'] and ['audio'].",
            param=param,
            event_id=event_id,
        )


def check_tool(tool: JsonDict, param: str, event_id: str | None) -> None:
    if tool.get("type") == "mcp":
        raise ProtocolError(
            "MCP tools are not supported by this server: declare function tools and run them in the client.",
            code="unsupported_tool",
            param=f"{param}.type",
            event_id=event_id,
        )


def check_tool_choice(choice: Any, param: str, event_id: str | None) -> None:
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        raise ProtocolError(
            "MCP tools are not supported by this server.", code="unsupported_tool", param=param, event_id=event_id
        )


_ROLE_CONTENT_TYPES = {
    "system": ("input_text",),
    "user": ("input_text", "input_audio", "input_image"),
    "assistant": ("output_text", "output_audio"),
}


def canonical_item(item: JsonDict, param: str, event_id: str | None) -> JsonDict:
    """Checks a client-created item and returns it in canonical (GA) form, without server-assigned fields."""
    item_type = item.get("type")
    if item_type is not None and item_type.startswith("mcp_"):
        raise ProtocolError(
            f"Items of type '{item_type}' are not supported by this server.",
            code="unsupported_item",
            param=f"{param}.type",
            event_id=event_id,
        )
    result: JsonDict = {"type": item_type}
    if item.get("id") is not None:
        result["id"] = item["id"]
    if item_type == "message":
        role = item["role"]
        allowed = _ROLE_CONTENT_TYPES[role]
        parts = []
        for index, part in enumerate(item.get("content") or []):
            part_param = f"{param}.content[{index}]"
            part_type = part["type"]
            if part_type not in allowed:
                supported = " and ".join(f"'{name}'" for name in allowed)
                raise ProtocolError(
                    f"Invalid value: '{part_type}'. Supported values for {role} messages are: {supported}.",
                    param=f"{part_param}.type",
                    event_id=event_id,
                )
            parts.append(_canonical_part(part, part_param, event_id))
        result.update(role=role, content=parts)
        result["status"] = item.get("status") or "completed"
    elif item_type == "function_call":
        result.update(
            call_id=item.get("call_id") or new_id("call"),
            name=item["name"],
            arguments=item["arguments"],
            status=item.get("status") or "completed",
        )
    elif item_type == "function_call_output":
        result.update(call_id=item["call_id"], output=item["output"])
    return result


def _canonical_part(part: JsonDict, param: str, event_id: str | None) -> JsonDict:
    part_type = part["type"]
    required = {
        "input_text": "text",
        "output_text": "text",
        "input_image": "image_url",
        "input_audio": "audio",
    }.get(part_type)
    if part_type == "output_audio" and part.get("audio"):
        raise ProtocolError(
            "Assistant audio cannot be created by the client; send the transcript as 'output_text' instead.",
            param=f"{param}.audio",
            event_id=event_id,
        )
    if part_type == "input_audio" and part.get("audio") is None and part.get("transcript") is not None:
        required = None  # a transcript alone is a spoken turn the client already transcribed
    if required is not None and part.get(required) is None:
        raise ProtocolError(
            f"Missing required parameter: '{param}.{required}'.",
            code="missing_required_parameter",
            param=f"{param}.{required}",
            event_id=event_id,
        )
    if part_type in ("input_text", "output_text"):
        return {"type": part_type, "text": part["text"]}
    if part_type == "input_image":
        url = part["image_url"]
        if not url.startswith(("data:image/", "http://", "https://")):
            raise ProtocolError(
                "Invalid 'image_url': expected a data URL (data:image/...;base64,...) or an http(s) URL.",
                param=f"{param}.image_url",
                event_id=event_id,
            )
        return {"type": "input_image", "image_url": url, "detail": part.get("detail") or "auto"}
    if part_type == "input_audio":
        return {"type": "input_audio", "audio": part.get("audio"), "transcript": part.get("transcript")}
    # output_audio with a transcript only: kept as spoken text of the assistant
    return {"type": "output_audio", "transcript": part.get("transcript") or ""}


# ---- beta → canonical ---------------------------------------------------------------------------------------

_BETA_FORMATS: dict[str, JsonDict] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_GA_FORMAT_TO_BETA = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def _beta_modalities(modalities: list[str], param: str, event_id: str | None) -> list[str]:
    if not modalities:
        raise ProtocolError(
            "Invalid modalities: []. Supported combinations are: ['text'] and ['text', 'audio'].",
            param=param,
            event_id=event_id,
        )
    return ["audio"] if "audio" in modalities else ["text"]


def _beta_turn_detection(detection: JsonDict | None) -> JsonDict | None:
    if detection is None:
        return None
    kind = detection.get("type", "server_vad")
    keys = (
        ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
        if kind == "server_vad"
        else ("eagerness",)
    )
    result = {"type": kind}
    for key in (*keys, "create_response", "interrupt_response"):
        if key in detection:
            result[key] = detection[key]
    return result


def _beta_tool_choice(choice: str) -> str | JsonDict:
    return choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}


def _beta_audio_input_patch(session: JsonDict) -> JsonDict:
    audio_input: JsonDict = {}
    if "input_audio_format" in session:
        audio_input["format"] = _BETA_FORMATS[session["input_audio_format"]]
    if "input_audio_transcription" in session:
        audio_input["transcription"] = session["input_audio_transcription"]
    if "input_audio_noise_reduction" in session:
        audio_input["noise_reduction"] = session["input_audio_noise_reduction"]
    if "turn_detection" in session:
        audio_input["turn_detection"] = _beta_turn_detection(session["turn_detection"])
    return audio_input


def _beta_session_update(model: BetaSession, event_id: str | None) -> SessionUpdate:
    session = _dump(model)
    patch: JsonDict = {"type": "realtime"}
    for key in ("model", "instructions", "tracing"):
        if key in session:
            patch[key] = session[key]
    if "modalities" in session:
        patch["output_modalities"] = _beta_modalities(session["modalities"], "session.modalities", event_id)
    if "max_response_output_tokens" in session:
        patch["max_output_tokens"] = session["max_response_output_tokens"]
    if "tools" in session:
        patch["tools"] = session["tools"]
    if "tool_choice" in session and session["tool_choice"] is not None:
        patch["tool_choice"] = _beta_tool_choice(session["tool_choice"])
    audio_input = _beta_audio_input_patch(session)
    audio_output: JsonDict = {}
    if "output_audio_format" in session:
        audio_output["format"] = _BETA_FORMATS[session["output_audio_format"]]
    if "voice" in session:
        audio_output["voice"] = session["voice"]
    if "speed" in session:
        audio_output["speed"] = session["speed"]
    audio = {key: value for key, value in (("input", audio_input), ("output", audio_output)) if value}
    if audio:
        patch["audio"] = audio
    return SessionUpdate(event_id, "realtime", patch, temperature=session.get("temperature"))


def _beta_transcription_update(model: BetaTranscriptionSession, event_id: str | None) -> SessionUpdate:
    session = _dump(model)
    patch: JsonDict = {"type": "transcription"}
    if "include" in session:
        unknown = [name for name in session["include"] or [] if name != "item.input_audio_transcription.logprobs"]
        if unknown:
            raise ProtocolError(
                f"Invalid value: '{_clip(unknown[0])}'. Supported values are: "
                "'item.input_audio_transcription.logprobs'.",
                param="session.include",
                event_id=event_id,
            )
        patch["include"] = session["include"]
    audio_input = _beta_audio_input_patch(session)
    if audio_input:
        patch["audio"] = {"input": audio_input}
    return SessionUpdate(event_id, "transcription", patch)


def beta_item_to_ga(item: JsonDict) -> JsonDict:
    """A beta item in GA shape: assistant `text`/`audio` parts become `output_text`/`output_audio`."""
    item = dict(item)
    if item.get("type") is None:
        item["type"] = "message" if "content" in item or "role" in item else None
    if item.get("type") == "message":
        role = item.get("role")
        parts = []
        for part in item.get("content") or []:
            part = {key: value for key, value in part.items() if key != "id"}
            if role == "assistant":
                part["type"] = {"text": "output_text", "audio": "output_audio"}.get(part["type"], part["type"])
            elif part["type"] == "text":
                part["type"] = "input_text"
            parts.append(part)
        item["content"] = parts
    return item


def _require_beta_item_fields(item: JsonDict, param: str, event_id: str | None) -> None:
    required = {
        None: ("type",),
        "message": ("role", "content"),
        "function_call": ("name", "arguments"),
        "function_call_output": ("call_id", "output"),
        "item_reference": ("id",),
    }[item.get("type")]
    for key in required:
        if item.get(key) is None:
            raise ProtocolError(
                f"Missing required parameter: '{param}.{key}'.",
                code="missing_required_parameter",
                param=f"{param}.{key}",
                event_id=event_id,
            )


def _beta_response_create(model: BetaResponseParams | None, event_id: str | None) -> ResponseCreate:
    if model is None:
        return ResponseCreate(event_id, {})
    response = _dump(model)
    params: JsonDict = {}
    for key in ("conversation", "instructions", "metadata", "tools"):
        if key in response:
            params[key] = response[key]
    if "modalities" in response:
        params["output_modalities"] = _beta_modalities(response["modalities"], "response.modalities", event_id)
    if "max_response_output_tokens" in response:
        params["max_output_tokens"] = response["max_response_output_tokens"]
    if response.get("tool_choice") is not None:
        params["tool_choice"] = _beta_tool_choice(response["tool_choice"])
    output: JsonDict = {}
    if "voice" in response:
        output["voice"] = response["voice"]
    if "output_audio_format" in response:
        output["format"] = _BETA_FORMATS[response["output_audio_format"]]
    if output:
        params["audio"] = {"output": output}
    if "input" in response:
        items = []
        for index, item in enumerate(response["input"] or []):
            ga_item = beta_item_to_ga(item)
            _require_beta_item_fields(ga_item, f"response.input[{index}]", event_id)
            items.append(ga_item)
        params["input"] = items
    _check_response_params(params, event_id)
    return ResponseCreate(event_id, params, temperature=response.get("temperature"))


# ---- validation errors → OpenAI error codes -----------------------------------------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _validation_error(exc: ValidationError, data: JsonDict, event_id: str | None) -> ProtocolError:
    errors = exc.errors(include_url=False)
    # Prefer the most specific error: unknown or missing fields before the alternatives of a union.
    order = {"extra_forbidden": 0, "missing": 1, "union_tag_invalid": 2, "union_tag_not_found": 2}
    error = min(errors, key=lambda err: order.get(err["type"], 3))
    param = _param_path(data, error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return ProtocolError(f"Unknown parameter: '{param}'.", "unknown_parameter", param, event_id)
    if kind == "missing":
        return ProtocolError(f"Missing required parameter: '{param}'.", "missing_required_parameter", param, event_id)
    if kind == "union_tag_not_found":
        param = f"{param}.type" if param else "type"
        return ProtocolError(f"Missing required parameter: '{param}'.", "missing_required_parameter", param, event_id)
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else value
        param = f"{param}.type" if param else "type"
        if not isinstance(tag, str):
            return _invalid_type(param, "a string", tag, event_id)
        expected = error.get("ctx", {}).get("expected_tags", "")
        return ProtocolError(
            f"Invalid value: '{_clip(tag)}'. Supported values are: {expected}.", "invalid_value", param, event_id
        )
    if kind in ("literal_error", "enum"):
        expected = error.get("ctx", {}).get("expected", "")
        textual = all(not option.lstrip("-").isdigit() for option in _literal_options(expected))
        if textual and not isinstance(value, str):
            return _invalid_type(param, "a string", value, event_id)
        return ProtocolError(
            f"Invalid value: '{_clip(value)}'. Supported values are: {expected}.", "invalid_value", param, event_id
        )
    bounds = {
        "less_than_equal": ("above maximum value", "<=", "le"),
        "less_than": ("above maximum value", "<", "lt"),
        "greater_than_equal": ("below minimum value", ">=", "ge"),
        "greater_than": ("below minimum value", ">", "gt"),
    }
    if kind in bounds:
        words, op, ctx_key = bounds[kind]
        limit = error.get("ctx", {}).get(ctx_key)
        number = "integer" if isinstance(limit, int) and isinstance(value, int) else "decimal"
        code = f"{number}_{words.split()[0]}_{'max' if op.startswith('<') else 'min'}_value"
        return ProtocolError(
            f"Invalid '{param}': {number} {words}. Expected a value {op} {limit}, but got {value} instead.",
            code,
            param,
            event_id,
        )
    if kind in ("string_too_short", "string_too_long"):
        limit = error.get("ctx", {}).get("min_length" if kind == "string_too_short" else "max_length")
        which = "below minimum length" if kind == "string_too_short" else "above maximum length"
        code = "string_below_min_length" if kind == "string_too_short" else "string_above_max_length"
        return ProtocolError(
            f"Invalid '{param}': string {which}. Expected a string with length {limit}.", code, param, event_id
        )
    if kind in _TYPE_NAMES:
        return _invalid_type(param, _TYPE_NAMES[kind], value, event_id)
    return ProtocolError(f"Invalid value for '{param}': {error['msg']}.", "invalid_value", param, event_id)


def _literal_options(expected: str) -> list[str]:
    return [part.strip().strip("'") for part in expected.replace(" or ", ",").split(",") if part.strip()]


def _param_path(data: Any, loc: tuple[Any, ...]) -> str:
    """The dotted path of an error location, skipping the union-branch labels pydantic adds to `loc`."""
    path = ""
    current = data
    for position, part in enumerate(loc):
        if isinstance(part, int) and isinstance(current, list) and 0 <= part < len(current):
            path += f"[{part}]"
            current = current[part]
        elif isinstance(part, str) and isinstance(current, dict) and part in current:
            path = f"{path}.{part}" if path else part
            current = current[part]
        elif position == len(loc) - 1 and isinstance(part, str) and isinstance(current, dict):
            # The last element names a field absent from the input (a missing required field).
            path = f"{path}.{part}" if path else part
            current = None
    return path


def _invalid_type(param: str, expected: str, value: Any, event_id: str | None) -> ProtocolError:
    return ProtocolError(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type_name(value)} instead.",
        "invalid_type",
        param,
        event_id,
    )


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _clip(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------------------
# Rendering: canonical (GA) shapes → the connection's dialect
# --------------------------------------------------------------------------------------------------------------


def beta_format(ga_format: Mapping[str, Any]) -> str:
    return _GA_FORMAT_TO_BETA[ga_format["type"]]


def to_beta_item(item: JsonDict) -> JsonDict:
    """A canonical item in beta shape (`object` always present, assistant parts `text`/`audio`).

    The beta dialect has no image content type: image parts are kept (the LLM sees them) but not echoed."""
    result = {"object": "realtime.item", **item}
    if item.get("type") == "message":
        parts = []
        for part in item.get("content", []):
            part = dict(part)
            if part["type"] == "output_text":
                part["type"] = "text"
            elif part["type"] == "output_audio":
                part["type"] = "audio"
            elif part["type"] == "input_image":
                continue
            parts.append(part)
        result["content"] = parts
    return result


def to_beta_session(session: JsonDict, temperature: float) -> JsonDict:
    """The beta `Session` object for a canonical realtime session."""
    audio_in = session["audio"]["input"]
    audio_out = session["audio"]["output"]
    voice = audio_out["voice"]
    max_tokens = session["max_output_tokens"]
    tool_choice = session["tool_choice"]
    return {
        "id": session["id"],
        "object": "realtime.session",
        "model": session["model"],
        "expires_at": session["expires_at"],
        "modalities": ["text", "audio"] if session["output_modalities"] == ["audio"] else ["text"],
        "instructions": session["instructions"],
        "voice": voice["id"] if isinstance(voice, dict) else voice,
        "speed": audio_out["speed"],
        "input_audio_format": beta_format(audio_in["format"]),
        "output_audio_format": beta_format(audio_out["format"]),
        "input_audio_transcription": _beta_transcription(audio_in["transcription"]),
        "input_audio_noise_reduction": audio_in["noise_reduction"],
        "turn_detection": _to_beta_turn_detection(audio_in["turn_detection"]),
        "tools": session["tools"],
        "tool_choice": tool_choice["name"] if isinstance(tool_choice, dict) else tool_choice,
        "temperature": temperature,
        "max_response_output_tokens": max_tokens,
        "tracing": session["tracing"],
    }


def to_beta_transcription_session(session: JsonDict) -> JsonDict:
    audio_in = session["audio"]["input"]
    return {
        "id": session["id"],
        "object": "realtime.transcription_session",
        "expires_at": session["expires_at"],
        "modalities": ["text"],
        "input_audio_format": beta_format(audio_in["format"]),
        "input_audio_transcription": _beta_transcription(audio_in["transcription"]),
        "input_audio_noise_reduction": audio_in["noise_reduction"],
        "turn_detection": _to_beta_turn_detection(audio_in["turn_detection"]),
        "include": session.get("include"),
        # The SDK's beta model requires it; a socket session has no secret to hand out, so its value is empty.
        "client_secret": {"value": "", "expires_at": session["expires_at"]},
    }


def _beta_transcription(transcription: JsonDict | None) -> JsonDict | None:
    if transcription is None:
        return None
    return {key: transcription[key] for key in ("model", "language", "prompt") if key in transcription}


def _to_beta_turn_detection(detection: JsonDict | None) -> JsonDict | None:
    if detection is None:
        return None
    result = dict(detection)
    result.pop("idle_timeout_ms", None)
    return result


def to_beta_response(response: JsonDict, temperature: float) -> JsonDict:
    audio_output = response.get("audio", {}).get("output", {})
    voice = audio_output.get("voice")
    return {
        "id": response["id"],
        "object": "realtime.response",
        "status": response["status"],
        "status_details": response["status_details"],
        "output": [to_beta_item(item) for item in response["output"]],
        "conversation_id": response["conversation_id"],
        "modalities": ["text", "audio"] if response["output_modalities"] == ["audio"] else ["text"],
        "voice": voice["id"] if isinstance(voice, dict) else voice,
        "output_audio_format": beta_format(audio_output["format"]) if "format" in audio_output else "pcm16",
        "temperature": temperature,
        "max_output_tokens": response["max_output_tokens"],
        "metadata": response["metadata"],
        "usage": response["usage"],
    }


def render_event(event: JsonDict, dialect: Dialect, *, beta_temperature: float = 0.8) -> JsonDict | None:
    """The event as the connection's dialect names and shapes it; `None` when that dialect has no such event."""
    if dialect == "ga":
        return event
    event_type = event["type"]
    if event_type in GA_ONLY_EVENTS:
        return None
    rendered = dict(event)
    rendered["type"] = BETA_EVENT_NAMES.get(event_type, event_type)
    if "item" in rendered:
        rendered["item"] = to_beta_item(rendered["item"])
    if "response" in rendered:
        rendered["response"] = to_beta_response(rendered["response"], beta_temperature)
    return rendered
