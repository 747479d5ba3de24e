"""Strict pydantic models of every client event of both dialects, and of the client-secret request bodies.

Strict, like the real API: an unknown field is `unknown_parameter`, a wrong type is `invalid_type`, a value out of
range or outside an enumeration is `invalid_value` (or the numeric bound code); `wire.errors` does that mapping.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from protocol import MAX_OUTPUT_TOKENS_LIMIT, ClientEvent, Dialect, Modality


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _LooseWire(BaseModel):
    """Shapes we recognise only to reject with a clear message (MCP items only the server makes, MCP on beta)."""

    model_config = ConfigDict(extra="allow")


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS_LIMIT)] | Literal["inf"]
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


class _TurnResponseFlags(_Wire):
    create_response: bool | None = None
    interrupt_response: bool | None = None


class _ServerVadSettings(_Wire):
    threshold: Probability | None = None
    prefix_padding_ms: NonNegativeInt | None = None
    silence_duration_ms: NonNegativeInt | None = None
    idle_timeout_ms: Annotated[int, Field(ge=1)] | None = None


Eagerness = Literal["low", "medium", "high", "auto"]


class GaServerVad(_ServerVadSettings, _TurnResponseFlags):
    type: Literal["server_vad"]


class GaSemanticVad(_TurnResponseFlags):
    type: Literal["semantic_vad"]
    eagerness: Eagerness | None = None


GaTurnDetection = Annotated[GaServerVad | GaSemanticVad, Field(discriminator="type")]


class NoiseReduction(_Wire):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class BetaTranscription(_Wire):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class GaTranscription(BetaTranscription):
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


class McpToolFilter(_Wire):
    """Which of an MCP server's tools a rule applies to: by name, and/or by the server's `readOnlyHint`."""

    tool_names: list[str] | None = None
    read_only: bool | None = None


class McpApprovalFilter(_Wire):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


McpConnector = Literal[
    "connector_dropbox",
    "connector_gmail",
    "connector_googlecalendar",
    "connector_googledrive",
    "connector_microsoftteams",
    "connector_outlookcalendar",
    "connector_outlookemail",
    "connector_sharepoint",
]


class McpTool(_Wire):
    """A remote MCP server's tools (the SDK's `RealtimeToolsConfigUnion` MCP variant); the server dials it."""

    type: Literal["mcp"]
    server_label: Annotated[str, Field(min_length=1, max_length=64)]
    server_url: str | None = None
    server_description: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | McpToolFilter | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = None
    connector_id: McpConnector | None = None
    tunnel_id: str | None = None
    allowed_callers: list[Literal["direct", "programmatic"]] | None = None
    defer_loading: bool | None = None


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class ToolChoiceFunction(_Wire):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(_Wire):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


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


def _shape(value: Any) -> str:
    return "object" if isinstance(value, dict | BaseModel) else "text"  # a model: when it is serialized


# A field that takes a string or an object: validated as the one the client sent, so that an error speaks of the
# object's fields, or of the strings allowed, instead of both at once.
Truncation = Annotated[
    Annotated[Literal["auto", "disabled"], Tag("text")] | Annotated[RetentionRatioTruncation, Tag("object")],
    Discriminator(_shape),
]
Tracing = Annotated[
    Annotated[Literal["auto"], Tag("text")] | Annotated[TracingConfig, Tag("object")], Discriminator(_shape)
]


class PromptReference(_Wire):
    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


class Reasoning(_Wire):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class _GaGeneration(_Wire):
    """What a GA session and a GA response both set about the replies."""

    instructions: str | None = None
    output_modalities: list[Modality] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: OutputTokens | None = None
    prompt: PromptReference | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


class GaRealtimeSession(_GaGeneration):
    type: Literal["realtime"]
    model: str | None = None
    audio: GaAudio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    tracing: Tracing | None = None
    truncation: Truncation | None = None


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


class _ItemEnvelope(_Wire):
    """What any item a client sends may carry besides its own fields."""

    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class MessageItem(_ItemEnvelope):
    type: Literal["message"]
    role: Literal["system", "user", "assistant"]
    content: list[ContentPart]


class FunctionCallItem(_ItemEnvelope):
    type: Literal["function_call"]
    name: str
    arguments: str
    call_id: str | None = None


class FunctionCallOutputItem(_ItemEnvelope):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class McpItem(_LooseWire):
    type: Literal["mcp_call", "mcp_list_tools", "mcp_approval_request"]


class McpApprovalResponseItem(_ItemEnvelope):
    """The client's answer to an `mcp_approval_request` item."""

    type: Literal["mcp_approval_response"]
    approval_request_id: str
    approve: bool
    reason: str | None = None


class ItemReference(_Wire):
    type: Literal["item_reference"]
    id: str


GaItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | McpApprovalResponseItem | McpItem,
    Field(discriminator="type"),
]
GaInputItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | McpApprovalResponseItem | McpItem | ItemReference,
    Field(discriminator="type"),
]


class GaResponseAudioOutput(_Wire):
    format: GaAudioFormat | None = None
    voice: str | VoiceId | None = None


class GaResponseAudio(_Wire):
    output: GaResponseAudioOutput | None = None


class GaResponseParams(_GaGeneration):
    conversation: str | None = None
    input: list[GaInputItem] | None = None
    audio: GaResponseAudio | None = None
    metadata: Metadata = None


# ---- beta ---------------------------------------------------------------------------------------------------


class BetaMcpTool(_LooseWire):
    """The beta dialect has no MCP: recognised only to be refused with a clear message."""

    type: Literal["mcp"]


BetaTool = Annotated[FunctionTool | BetaMcpTool, Field(discriminator="type")]

BetaAudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]


class BetaTurnDetection(_ServerVadSettings, _TurnResponseFlags):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    eagerness: Eagerness | None = None


class ClientSecretExpiry(_Wire):
    anchor: Literal["created_at"] | None = None
    seconds: Annotated[int, Field(ge=10, le=7200)] | None = None


class BetaClientSecret(_Wire):
    expires_after: ClientSecretExpiry | None = None
    expires_at: ClientSecretExpiry | None = None


class _BetaAudioInput(_Wire):
    """The input settings a beta session and a beta transcription session share."""

    input_audio_format: BetaAudioFormat | None = None
    input_audio_transcription: BetaTranscription | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    turn_detection: BetaTurnDetection | None = None
    modalities: list[Modality] | None = None
    client_secret: BetaClientSecret | None = None


class _BetaGeneration(_Wire):
    """What a beta session and a beta response both set about the replies."""

    instructions: str | None = None
    modalities: list[Modality] | None = None
    voice: str | None = None
    output_audio_format: BetaAudioFormat | None = None
    tools: list[BetaTool] | None = None
    tool_choice: str | None = None
    temperature: Annotated[float, Field(ge=0.6, le=1.2)] | None = None
    max_response_output_tokens: OutputTokens | None = None


class BetaSession(_BetaGeneration, _BetaAudioInput):
    model: str | None = None
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None
    tracing: Tracing | None = None


class BetaTranscriptionSession(_BetaAudioInput):
    include: list[str] | None = None


class BetaContentPart(_Wire):
    type: Literal["input_text", "input_audio", "input_image", "item_reference", "text", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None
    id: str | None = None


class BetaItem(_ItemEnvelope):
    type: Literal["message", "function_call", "function_call_output", "item_reference"] | None = None
    role: Literal["user", "assistant", "system"] | None = None
    content: list[BetaContentPart] | None = None
    name: str | None = None
    arguments: str | None = None
    call_id: str | None = None
    output: str | None = None


class BetaResponseParams(_BetaGeneration):
    conversation: str | None = None
    input: list[BetaItem] | None = None
    metadata: Metadata = None


# ---- events (shared by both dialects where the shapes agree) ------------------------------------------------


class EventModel(_Wire):
    """What every client event has besides its `type`."""

    event_id: str | None = None


class GaSessionUpdate(EventModel):
    type: Literal["session.update"]
    session: GaSession


class BetaSessionUpdate(EventModel):
    type: Literal["session.update"]
    session: BetaSession


class BetaTranscriptionSessionUpdate(EventModel):
    type: Literal["transcription_session.update"]
    session: BetaTranscriptionSession


class AudioAppendEvent(EventModel):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommitEvent(EventModel):
    type: Literal["input_audio_buffer.commit"]


class AudioClearEvent(EventModel):
    type: Literal["input_audio_buffer.clear"]


class OutputAudioClearEvent(EventModel):
    type: Literal["output_audio_buffer.clear"]


class GaItemCreate(EventModel):
    type: Literal["conversation.item.create"]
    item: GaItem
    previous_item_id: str | None = None


class BetaItemCreate(EventModel):
    type: Literal["conversation.item.create"]
    item: BetaItem
    previous_item_id: str | None = None


class ItemRetrieveEvent(EventModel):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ItemDeleteEvent(EventModel):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemTruncateEvent(EventModel):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: NonNegativeInt
    audio_end_ms: NonNegativeInt


class GaResponseCreate(EventModel):
    type: Literal["response.create"]
    response: GaResponseParams | None = None


class BetaResponseCreate(EventModel):
    type: Literal["response.create"]
    response: BetaResponseParams | None = None


class ResponseCancelEvent(EventModel):
    type: Literal["response.cancel"]
    response_id: str | None = None


_COMMON_EVENT_MODELS: dict[str, type[EventModel]] = {
    ClientEvent.INPUT_AUDIO_BUFFER_APPEND: AudioAppendEvent,
    ClientEvent.INPUT_AUDIO_BUFFER_COMMIT: AudioCommitEvent,
    ClientEvent.INPUT_AUDIO_BUFFER_CLEAR: AudioClearEvent,
    ClientEvent.OUTPUT_AUDIO_BUFFER_CLEAR: OutputAudioClearEvent,
    ClientEvent.CONVERSATION_ITEM_RETRIEVE: ItemRetrieveEvent,
    ClientEvent.CONVERSATION_ITEM_DELETE: ItemDeleteEvent,
    ClientEvent.CONVERSATION_ITEM_TRUNCATE: ItemTruncateEvent,
    ClientEvent.RESPONSE_CANCEL: ResponseCancelEvent,
}
CLIENT_EVENT_MODELS: dict[Dialect, dict[str, type[EventModel]]] = {
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
