"""The OpenAI Realtime protocol's vocabulary, both dialects (GA and beta), with no I/O.

* the names of every client and server event, with the beta name of each GA event where it differs;
* ids shaped like OpenAI's, and `ProtocolError`, a client mistake reported as an `error` event;
* the dialect-neutral commands that a client event becomes once parsed (`wire.parsing.parse_client_event`).

The wire formats themselves (strict models of every client event, parsing, validation errors, GA ⇄ beta
rendering) are in the `wire` package. The canonical shape is GA: the session core builds GA events and
`wire.beta.render_event` rewrites them for beta connections, so each ordering rule is written once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeAlias

Dialect: TypeAlias = Literal["ga", "beta"]
SessionKind: TypeAlias = Literal["realtime", "transcription"]
JsonDict: TypeAlias = dict[str, Any]
Modality: TypeAlias = Literal["text", "audio"]  # what a response produces: text, or audio with its transcript

MAX_OUTPUT_TOKENS_LIMIT = 4096
MIN_COMMIT_MS = 100
MAX_APPEND_AUDIO_BYTES = 15 * 1024 * 1024  # what the API allows in one input_audio_buffer.append
DEFAULT_VOICE = "alloy"  # what a session speaks with when it names no voice
DEFAULT_TRANSCRIPTION_MODEL = "whisper-1"
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
    MCP_LIST_TOOLS_IN_PROGRESS = "mcp_list_tools.in_progress"  # GA only, like every MCP event
    MCP_LIST_TOOLS_COMPLETED = "mcp_list_tools.completed"
    MCP_LIST_TOOLS_FAILED = "mcp_list_tools.failed"
    RESPONSE_MCP_CALL_ARGUMENTS_DELTA = "response.mcp_call_arguments.delta"
    RESPONSE_MCP_CALL_ARGUMENTS_DONE = "response.mcp_call_arguments.done"
    RESPONSE_MCP_CALL_IN_PROGRESS = "response.mcp_call.in_progress"
    RESPONSE_MCP_CALL_COMPLETED = "response.mcp_call.completed"
    RESPONSE_MCP_CALL_FAILED = "response.mcp_call.failed"
    # Media transports only (WebRTC): the reply's audio as it plays on the outgoing track.
    OUTPUT_AUDIO_BUFFER_STARTED = "output_audio_buffer.started"
    OUTPUT_AUDIO_BUFFER_STOPPED = "output_audio_buffer.stopped"
    OUTPUT_AUDIO_BUFFER_CLEARED = "output_audio_buffer.cleared"


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


@dataclass
class SecretRequest:
    """A request for an ephemeral client secret, whichever endpoint it came through."""

    kind: SessionKind
    patch: JsonDict  # the session configuration it carries, GA-shaped
    temperature: float | None
    ttl_s: int | None
