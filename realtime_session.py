"""One Realtime session's state machine: configuration, conversation, input buffer and responses.

Pure: no sockets, no pipeline, no asyncio. Client messages go in through `receive`; what the pipeline produces goes
in through the `on_*` methods; out come server events (`take_events`, already in the connection's dialect) and
commands for the pipeline (`take_commands`). Every ordering rule and error code of the protocol lives here and in
`protocol.py`, so they are tested with plain function calls.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from audio_utils import AudioFormat, InvalidAudio, OutputEncoder, decode_base64, encode_base64, format_to_pcm
from config import DEFAULT_INSTRUCTIONS, Settings
from conversation import (
    ROOT,
    Conversation,
    SpokenSegment,
    StoredItem,
    chat_messages,
    has_image,
    heard_text,
    tool_choice_for_chat,
    tools_for_chat,
)
from input_audio import InputAudioBuffer, to_pipeline_pcm
from protocol import (
    MAX_APPEND_AUDIO_BYTES,
    MIN_COMMIT_MS,
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientCommand,
    Dialect,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    JsonDict,
    OutputAudioClear,
    ProtocolError,
    ResponseCancel,
    ResponseCreate,
    ServerEvent,
    SessionKind,
    SessionUpdate,
    error_event,
    new_id,
)
from session.commands import (
    CancelResponse,
    Command,
    ConfigureTurnDetection,
    FeedAudio,
    Modality,
    ProviderFailure,
    ResetTurnDetection,
    RunResponse,
    Transcribe,
    Usage,
)
from wire.beta import render_event, to_beta_session, to_beta_transcription_session
from wire.canonical import check_modalities, check_tool, check_tool_choice
from wire.parsing import parse_client_event

# Bounds that keep one misbehaving client from growing server memory without limit.
MAX_INPUT_BUFFER_MS = 15 * 60 * 1000
MAX_CONCURRENT_RESPONSES = 8


@dataclass(frozen=True)
class SessionDefaults:
    """What a new session starts with, from the server's settings."""

    model: str = "gpt-realtime"
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = "alloy"
    temperature: float = 0.8
    llm_max_tokens: int = 1024
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    transcription_model: str = "whisper-1"
    lifetime_s: int = 30 * 60
    max_retained_audio_ms: float = 5 * 60 * 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionDefaults:
        return cls(
            model=settings.model_name,
            instructions=settings.llm_system_prompt,
            temperature=settings.llm_temperature,
            llm_max_tokens=settings.llm_max_tokens,
            vad_threshold=settings.vad_threshold,
            vad_prefix_padding_ms=settings.vad_prefix_padding_ms,
            vad_silence_duration_ms=settings.vad_silence_duration_ms,
            lifetime_s=settings.session_max_duration_s,
            max_retained_audio_ms=settings.max_retained_audio_s * 1000,
        )


@dataclass
class _Speculation:
    """A transcription of the turn so far, started when the speaker paused: if the turn ends at that pause, it is
    the turn's transcript, ready sooner than a transcription started when the VAD's silence window has passed."""

    request_id: str
    speech_end_ms: float
    transcript: str | None = None
    failure: ProviderFailure | None = None
    done: bool = False
    deltas: list[str] = field(default_factory=list)  # streamed words, sent only if the speculation is adopted


# --------------------------------------------------------------------------------------------------------------
# Response bookkeeping
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _OpenMessage:
    stored: StoredItem
    output_index: int
    text: list[str] = field(default_factory=list)
    truncated: bool = False


@dataclass
class _OpenCall:
    item: JsonDict
    output_index: int
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Response:
    id: str
    in_band: bool
    modality: Modality
    audio_format: JsonDict
    voice: str | JsonDict
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    encoder: OutputEncoder
    status: str = "in_progress"
    status_details: JsonDict | None = None
    output: list[JsonDict] = field(default_factory=list)
    message: _OpenMessage | None = None
    calls: dict[int, _OpenCall] = field(default_factory=dict)
    usage: Usage | None = None
    run: RunResponse | None = None  # held back until the user turns it answers are transcribed
    input_items: list[JsonDict] | None = None  # explicit `input`, else the conversation at the time it runs
    instructions: str = ""


def _audio_part_index(item: JsonDict) -> int:
    """Where a user item's audio is (a committed turn has only that; a client-made item may have text first)."""
    return next((i for i, part in enumerate(item.get("content", [])) if part["type"] == "input_audio"), 0)


def _snapshot(item: JsonDict) -> JsonDict:
    """A copy of an item safe to put in an event (items change as a response goes on)."""
    return copy.deepcopy(item)


class RealtimeSession:
    """The state of one Realtime connection. See the module docstring."""

    def __init__(
        self,
        defaults: SessionDefaults,
        dialect: Dialect,
        kind: SessionKind = "realtime",
        model: str | None = None,
        clock: Callable[[], float] = time.time,
        initial_config: JsonDict | None = None,
    ) -> None:
        self.defaults = defaults
        self.dialect = dialect
        self.kind = kind
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.temperature = defaults.temperature
        self.conversation = Conversation()
        self.config = self._initial_config(model, clock())
        self._outbox: list[JsonDict] = []
        self._commands: list[Command] = []
        self._responses: dict[str, _Response] = {}
        self._in_band_id: str | None = None
        self._input_item_id = new_id("item")
        self._input = InputAudioBuffer(self.input_format)
        self._speech_start_ms: float | None = None  # audio_start_ms of the turn in progress
        self._transcribing: set[str] = set()  # user items whose transcript the LLM waits for
        self._transcription_requests: dict[str, str] = {}  # request id → item id
        self._speculation: _Speculation | None = None
        self._respond_when_idle = False  # a VAD turn ended while a response was still running
        self._idle_deadline_ms: float | None = None  # when `idle_timeout_ms` fires, on the audio clock
        if initial_config:  # a configuration the session starts from (an ephemeral key's, say)
            self._apply_session_update(SessionUpdate(None, kind, initial_config))
            self._commands.clear()  # `open` configures the pipeline from the result

    # ---- outputs ---------------------------------------------------------------------------------------------

    def take_events(self) -> list[JsonDict]:
        events, self._outbox = self._outbox, []
        return events

    def take_commands(self) -> list[Command]:
        commands, self._commands = self._commands, []
        return commands

    @property
    def active_response_ids(self) -> list[str]:
        return list(self._responses)

    @property
    def in_band_response_id(self) -> str | None:
        return self._in_band_id

    def _emit(self, event_type: ServerEvent, **fields: object) -> None:
        self._emit_event({"type": event_type.value, "event_id": new_id("event"), **fields})

    def _emit_event(self, event: JsonDict) -> None:
        rendered = render_event(event, self.dialect, beta_temperature=self.temperature)
        if rendered is not None:
            self._outbox.append(rendered)

    # ---- configuration ---------------------------------------------------------------------------------------

    def _initial_config(self, model: str | None, now: float) -> JsonDict:
        d = self.defaults
        turn_detection = {"type": "server_vad", **self._turn_detection_defaults()["server_vad"]}
        pcm = {"type": "audio/pcm", "rate": 24000}
        audio_input = {"format": pcm, "transcription": None, "noise_reduction": None, "turn_detection": turn_detection}
        expires_at = int(now) + d.lifetime_s
        if self.kind == "transcription":
            audio_input["transcription"] = {"model": d.transcription_model, "language": None, "prompt": ""}
            return {
                "type": "transcription",
                "object": "realtime.transcription_session",
                "id": self.id,
                "expires_at": expires_at,
                "audio": {"input": audio_input},
                "include": None,
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": model or d.model,
            "output_modalities": ["audio"],
            "instructions": d.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": expires_at,
            "include": None,
            "audio": {"input": audio_input, "output": {"format": dict(pcm), "voice": d.voice, "speed": 1.0}},
        }

    def _turn_detection_defaults(self) -> dict[str, JsonDict]:
        d = self.defaults
        return {
            "server_vad": {
                "threshold": d.vad_threshold,
                "prefix_padding_ms": d.vad_prefix_padding_ms,
                "silence_duration_ms": d.vad_silence_duration_ms,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
            "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
        }

    def session_object(self) -> JsonDict:
        """The full effective session in this connection's dialect."""
        if self.dialect == "ga":
            return copy.deepcopy(self.config)
        if self.kind == "transcription":
            return to_beta_transcription_session(self.config)
        return to_beta_session(self.config, self.temperature)

    @property
    def input_format(self) -> AudioFormat:
        return AudioFormat.from_wire(self.config["audio"]["input"]["format"])

    @property
    def turn_detection(self) -> JsonDict | None:
        return self.config["audio"]["input"]["turn_detection"]

    # ---- client events ---------------------------------------------------------------------------------------

    def open(self) -> None:
        """The events a new connection starts with."""
        self._emit(ServerEvent.SESSION_CREATED, session=self.session_object())
        if self.kind == "realtime":
            conversation = {"id": self.conversation_id, "object": "realtime.conversation"}
            self._emit(ServerEvent.CONVERSATION_CREATED, conversation=conversation)
        self._commands.append(ConfigureTurnDetection(copy.deepcopy(self.turn_detection)))

    def receive(self, message: str | bytes) -> None:
        """Handles one client WebSocket message. Bad input becomes an `error` event; the session goes on."""
        try:
            command = parse_client_event(message, self.dialect)
            self._dispatch(command)
        except ProtocolError as error:
            self._emit_event(error.to_event())

    def report_error(self, error: ProtocolError) -> None:
        self._emit_event(error.to_event())

    def _dispatch(self, command: ClientCommand) -> None:
        match command:
            case SessionUpdate():
                self._session_update(command)
            case AudioAppend():
                self._audio_append(command)
            case AudioCommit():
                self._audio_commit(command)
            case AudioClear():
                self._input.clear()
                self._speculation = None
                if self._speech_start_ms is not None:
                    self._speech_start_ms = None
                    self._input_item_id = new_id("item")
                self._commands.append(ResetTurnDetection())
                self._emit(ServerEvent.INPUT_AUDIO_BUFFER_CLEARED)
            case OutputAudioClear():
                raise ProtocolError(
                    "output_audio_buffer.clear applies to WebRTC and SIP connections only; on a WebSocket, stop "
                    "playback in the client and send response.cancel and conversation.item.truncate.",
                    code="invalid_event",
                    param="type",
                    event_id=command.event_id,
                )
            case ItemCreate():
                self._item_create(command)
            case ItemRetrieve():
                stored = self._require_item(command.item_id, command.event_id)
                self._emit(ServerEvent.CONVERSATION_ITEM_RETRIEVED, item=stored.with_audio())
            case ItemDelete():
                self._require_item(command.item_id, command.event_id)
                self.conversation.delete(command.item_id)
                self._emit(ServerEvent.CONVERSATION_ITEM_DELETED, item_id=command.item_id)
            case ItemTruncate():
                self._item_truncate(command)
            case ResponseCreate():
                self._response_create(command)
            case ResponseCancel():
                self._response_cancel(command)

    def _session_update(self, command: SessionUpdate) -> None:
        if command.kind != self.kind:
            which = "transcription" if command.kind == "transcription" else "realtime"
            raise ProtocolError(
                f"Passing a {which} session update event to a {self.kind} session is not allowed.",
                param="session.type",
                event_id=command.event_id,
            )
        self._apply_session_update(command)
        event_type = ServerEvent.SESSION_UPDATED
        if self.dialect == "beta" and self.kind == "transcription":
            event_type = ServerEvent.TRANSCRIPTION_SESSION_UPDATED
        self._emit(event_type, session=self.session_object())

    def _apply_session_update(self, command: SessionUpdate) -> None:
        patch = command.patch
        event_id = command.event_id
        if "output_modalities" in patch:
            check_modalities(patch["output_modalities"], "session.output_modalities", event_id)
        for index, tool in enumerate(patch.get("tools") or []):
            check_tool(tool, f"session.tools[{index}]", event_id)
        if "tool_choice" in patch:
            check_tool_choice(patch["tool_choice"], "session.tool_choice", event_id)
        names = [tool["name"] for tool in patch.get("tools") or []]
        if len(names) != len(set(names)):
            raise ProtocolError("Tool names must be unique.", param="session.tools", event_id=event_id)
        before = self.config
        self.config = merge_session(self.config, patch, self._turn_detection_defaults())
        if command.temperature is not None:
            self.temperature = command.temperature
        if self.turn_detection != before["audio"]["input"]["turn_detection"]:
            self._commands.append(ConfigureTurnDetection(copy.deepcopy(self.turn_detection)))
            if self.turn_detection is None and self._speech_start_ms is not None:
                self._speech_start_ms = None
        if self.input_format is not self._input.format:
            self._input.set_format(self.input_format)
            self._commands.append(ResetTurnDetection())

    # ---- input audio buffer ----------------------------------------------------------------------------------

    def _audio_append(self, command: AudioAppend) -> None:
        try:
            audio = decode_base64(command.audio)
            if self.input_format is AudioFormat.PCM16 and len(audio) % 2:
                raise InvalidAudio("PCM16 audio must have an even number of bytes.")
        except InvalidAudio as exc:
            raise ProtocolError(str(exc), param="audio", event_id=command.event_id) from None
        if len(audio) > MAX_APPEND_AUDIO_BYTES:
            raise ProtocolError(
                f"Invalid 'audio': {len(audio)} bytes of audio in one append; the most allowed is 15 MiB.",
                param="audio",
                event_id=command.event_id,
            )
        if self._input.buffered_ms + self.input_format.duration_ms(len(audio)) > MAX_INPUT_BUFFER_MS:
            raise ProtocolError(
                f"The input audio buffer is full ({MAX_INPUT_BUFFER_MS // 60000} minutes): commit or clear it.",
                code="input_audio_buffer_full",
                event_id=command.event_id,
            )
        self._commands.append(FeedAudio(self._input.append(audio)))
        if self.turn_detection is not None and self._speech_start_ms is None:
            self._check_idle_timeout()

    def _check_idle_timeout(self) -> None:
        """`idle_timeout_ms` after the last reply finished playing with no speech since: the server commits
        the silence and asks the model to prompt the user (GA `input_audio_buffer.timeout_triggered`)."""
        deadline = self._idle_deadline_ms
        if deadline is None or self._input.clock_ms < deadline or self._in_band_id is not None:
            return
        timeout_ms = (self.turn_detection or {}).get("idle_timeout_ms")
        self._idle_deadline_ms = None
        if not timeout_ms:
            return
        start_ms = deadline - timeout_ms  # when the last reply finished playing
        end_ms = self._input.clock_ms
        self._emit(
            ServerEvent.INPUT_AUDIO_BUFFER_TIMEOUT_TRIGGERED,
            audio_start_ms=int(start_ms),
            audio_end_ms=int(end_ms),
            item_id=self._input_item_id,
        )
        self._commit(self._input.take(start_ms, end_ms))
        if self.kind == "realtime":
            self.create_response()

    def _audio_commit(self, command: AudioCommit) -> None:
        buffered_ms = self._input.buffered_ms
        if buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but "
                f"buffer only has {buffered_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                event_id=command.event_id,
            )
        if self._speech_start_ms is not None:
            self._speech_start_ms = None
            self._commands.append(ResetTurnDetection())
        self._commit(self._input.take())

    def _commit(self, audio: bytes, speech_end_ms: float | None = None) -> str:
        """Turns audio into a user item (client commit, or the end of a VAD turn) and has it transcribed."""
        item_id = self._input_item_id
        self._input_item_id = new_id("item")
        previous = self.conversation.last_id()
        self._emit(ServerEvent.INPUT_AUDIO_BUFFER_COMMITTED, previous_item_id=previous, item_id=item_id)
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._add_item(StoredItem(item=item, audio=bytearray(audio), audio_format=self.input_format), None)
        self.conversation.limit_audio(self.defaults.max_retained_audio_ms)
        self._transcribing.add(item_id)
        speculation, self._speculation = self._speculation, None
        if speculation is not None and speech_end_ms is not None and speculation.speech_end_ms == speech_end_ms:
            # The turn ended where the speaker paused: the transcription started then is this turn's.
            self._transcription_requests[speculation.request_id] = item_id
            for delta in speculation.deltas:
                self.on_transcription_delta(speculation.request_id, delta)
            if speculation.done:
                self._transcription_done(speculation.request_id, speculation.transcript, speculation.failure)
            return item_id
        request_id = new_id("stt")
        self._transcription_requests[request_id] = item_id
        self._commands.append(self._transcribe(request_id, audio))
        return item_id

    def _transcribe(self, request_id: str, audio: bytes) -> Transcribe:
        transcription = self.config["audio"]["input"]["transcription"] or {}
        return Transcribe(
            request_id,
            to_pipeline_pcm(audio, self.input_format),
            transcription.get("language") or None,
            transcription.get("prompt") or None,
        )

    # ---- turn detection and transcription (reported by the pipeline) ----------------------------------------

    def on_audio_analysed(self, position_ms: float) -> None:
        """The VAD has analysed the audio up to `position_ms`: while nobody speaks, older audio can go."""
        detection = self.turn_detection
        if detection is not None and self._speech_start_ms is None:
            self._input.forget_before(detection.get("prefix_padding_ms") or 0, position_ms)

    def on_speech_started(self, onset_ms: float) -> None:
        """The VAD heard speech begin at `onset_ms` (ms of audio received)."""
        detection = self.turn_detection
        if detection is None or self._speech_start_ms is not None:
            return
        padding = detection.get("prefix_padding_ms") or 0
        start_ms = max(self._input.start_ms, onset_ms - padding)
        self._speech_start_ms = start_ms
        self._idle_deadline_ms = None
        self._emit(
            ServerEvent.INPUT_AUDIO_BUFFER_SPEECH_STARTED, audio_start_ms=int(start_ms), item_id=self._input_item_id
        )
        if detection.get("interrupt_response", True) and self._in_band_id is not None:
            self.cancel_response(self._in_band_id, "turn_detected")

    def on_speech_paused(self, speech_end_ms: float) -> None:
        """The speaker paused: transcribe the turn so far now, in case the pause is its end."""
        start_ms = self._speech_start_ms
        if start_ms is None:
            return
        request_id = new_id("stt")
        self._speculation = _Speculation(request_id, speech_end_ms)
        # A little of the silence too: the decoder should hear the last word end.
        self._commands.append(self._transcribe(request_id, self._input.peek(start_ms, speech_end_ms + 100)))

    def on_speech_stopped(self, end_ms: float, speech_end_ms: float | None = None) -> None:
        """The VAD judged the turn over at `end_ms`: the turn is committed, and answered if so configured."""
        detection = self.turn_detection
        start_ms = self._speech_start_ms
        if detection is None or start_ms is None:
            return
        self._speech_start_ms = None
        end_ms = min(end_ms, self._input.clock_ms)
        self._emit(ServerEvent.INPUT_AUDIO_BUFFER_SPEECH_STOPPED, audio_end_ms=int(end_ms), item_id=self._input_item_id)
        self._commit(self._input.take(start_ms, end_ms), speech_end_ms)
        if self.kind == "realtime" and detection.get("create_response", True):
            if self._in_band_id is None:
                self.create_response()
            else:
                self._respond_when_idle = True

    def on_transcription_delta(self, request_id: str, delta: str) -> None:
        speculation = self._speculation
        if speculation is not None and speculation.request_id == request_id:
            speculation.deltas.append(delta)
            return
        item_id = self._transcription_requests.get(request_id)
        stored = self.conversation.get(item_id) if item_id is not None else None
        if delta and stored is not None and self._transcription_events:
            index = _audio_part_index(stored.item)
            self._emit(ServerEvent.INPUT_TRANSCRIPTION_DELTA, item_id=item_id, content_index=index, delta=delta)

    def on_transcription_completed(self, request_id: str, transcript: str) -> None:
        self._transcription_done(request_id, transcript, None)

    def on_transcription_failed(self, request_id: str, failure: ProviderFailure) -> None:
        self._transcription_done(request_id, None, failure)

    def _transcription_done(self, request_id: str, transcript: str | None, failure: ProviderFailure | None) -> None:
        speculation = self._speculation
        if speculation is not None and speculation.request_id == request_id:
            speculation.transcript, speculation.failure, speculation.done = transcript, failure, True
            return  # kept until the turn ends (or is dropped when the speaker goes on)
        item_id = self._transcription_requests.pop(request_id, None)
        if item_id is None or item_id not in self._transcribing:
            return  # a speculation the speaker talked past
        self._transcribing.discard(item_id)
        stored = self.conversation.get(item_id)
        content_index = _audio_part_index(stored.item) if stored is not None else 0
        if transcript is not None:
            if stored is not None:
                stored.item["content"][content_index]["transcript"] = transcript
            if self._transcription_events:
                seconds = stored.audio_ms / 1000 if stored is not None else 0.0
                self._emit(
                    ServerEvent.INPUT_TRANSCRIPTION_COMPLETED,
                    item_id=item_id,
                    content_index=content_index,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": round(seconds, 3)},
                )
        elif failure is not None and self._transcription_events:
            error = {"type": "transcription_error", "code": failure.code, "message": failure.message, "param": None}
            self._emit(
                ServerEvent.INPUT_TRANSCRIPTION_FAILED, item_id=item_id, content_index=content_index, error=error
            )
        self._release_held_responses()

    @property
    def _transcription_events(self) -> bool:
        """Transcripts go to the client only when it asked for them; the LLM gets them either way."""
        return self.config["audio"]["input"]["transcription"] is not None

    # ---- conversation items ----------------------------------------------------------------------------------

    def _require_item(self, item_id: str, event_id: str | None) -> StoredItem:
        stored = self.conversation.get(item_id)
        if stored is None:
            raise ProtocolError(
                f"Item with item_id '{item_id}' not found in the conversation.", param="item_id", event_id=event_id
            )
        return stored

    def _item_create(self, command: ItemCreate) -> None:
        item = dict(command.item)
        event_id = command.event_id
        item_id = item.pop("id", None) or new_id("item")
        if item_id in self.conversation or any(item_id == r.message.stored.id for r in self._open_messages()):
            raise ProtocolError(
                f"Item with id '{item_id}' already exists in the conversation.", param="item.id", event_id=event_id
            )
        previous = command.previous_item_id
        if previous is not None and previous != ROOT and previous not in self.conversation:
            raise ProtocolError(
                f"Error adding item: the previous item with id '{previous}' does not exist.",
                param="previous_item_id",
                event_id=event_id,
            )
        audio = bytearray()
        untranscribed = False
        for index, part in enumerate(item.get("content", [])):
            if part["type"] == "input_audio" and part.get("audio") is not None:
                try:
                    audio = bytearray(decode_base64(part.pop("audio")))
                    format_to_pcm(bytes(audio), self.input_format)
                except InvalidAudio as exc:
                    raise ProtocolError(str(exc), param=f"item.content[{index}].audio", event_id=event_id) from None
                untranscribed = part.get("transcript") is None
        item = {"id": item_id, "object": "realtime.item", **item}
        self._add_item(StoredItem(item=item, audio=audio, audio_format=self.input_format), previous)
        if untranscribed and audio:
            # Audio the client recorded itself: transcribed like a committed turn, so that the LLM hears it.
            request_id = new_id("stt")
            self._transcribing.add(item_id)
            self._transcription_requests[request_id] = item_id
            self._commands.append(self._transcribe(request_id, bytes(audio)))

    def _add_item(self, stored: StoredItem, after: str | None) -> None:
        previous = self.conversation.add(stored, after)
        self._emit(ServerEvent.CONVERSATION_ITEM_ADDED, previous_item_id=previous, item=_snapshot(stored.item))
        self._emit(ServerEvent.CONVERSATION_ITEM_DONE, previous_item_id=previous, item=_snapshot(stored.item))

    def _item_truncate(self, command: ItemTruncate) -> None:
        event_id = command.event_id
        stored = self._require_item(command.item_id, event_id)
        item = stored.item
        if item["type"] != "message" or item["role"] != "assistant":
            raise ProtocolError("Only assistant messages can be truncated.", param="item_id", event_id=event_id)
        content = item["content"]
        if command.content_index >= len(content) or content[command.content_index]["type"] != "output_audio":
            raise ProtocolError(
                f"Content index {command.content_index} of item '{item['id']}' is not an audio part.",
                param="content_index",
                event_id=event_id,
            )
        total_ms = stored.audio_ms
        if command.audio_end_ms > total_ms + 0.5:
            raise ProtocolError(
                f"audio_end_ms ({command.audio_end_ms}) is beyond the end of the item's audio ({total_ms:.0f}ms).",
                param="audio_end_ms",
                event_id=event_id,
            )
        part = content[command.content_index]
        heard = heard_text(stored.spoken, total_ms, command.audio_end_ms)
        part["transcript"] = heard
        if stored.released_ms:
            stored.released_ms = command.audio_end_ms  # the bytes are gone already; only the length changes
        else:
            keep = int(command.audio_end_ms * stored.audio_format.bytes_per_ms)
            keep -= keep % (2 if stored.audio_format is AudioFormat.PCM16 else 1)
            del stored.audio[keep:]
        stored.spoken = [SpokenSegment(0.0, heard)]
        for response in self._responses.values():
            if response.message is not None and response.message.stored is stored:
                response.message.truncated = True
        self._emit(
            ServerEvent.CONVERSATION_ITEM_TRUNCATED,
            item_id=item["id"],
            content_index=command.content_index,
            audio_end_ms=command.audio_end_ms,
        )

    # ---- responses -------------------------------------------------------------------------------------------

    def _open_messages(self) -> list[_Response]:
        return [r for r in self._responses.values() if r.message is not None]

    def create_response(
        self, params: JsonDict | None = None, *, event_id: str | None = None, temperature: float | None = None
    ) -> str:
        """Starts a response (client `response.create`, or the server after a VAD turn). Returns its id."""
        params = params or {}
        config = self.config
        if self.kind != "realtime":
            raise ProtocolError(
                "Transcription sessions do not create responses.",
                code="invalid_event",
                param="type",
                event_id=event_id,
            )
        in_band = params.get("conversation", "auto") != "none"
        if in_band and self._in_band_id is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self._in_band_id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                event_id=event_id,
            )
        if len(self._responses) >= MAX_CONCURRENT_RESPONSES:
            raise ProtocolError(
                f"Too many responses in progress (at most {MAX_CONCURRENT_RESPONSES}).",
                code="too_many_active_responses",
                event_id=event_id,
            )
        tools = params["tools"] if "tools" in params else config["tools"]
        tool_choice = params.get("tool_choice", config["tool_choice"])
        if isinstance(tool_choice, dict) and tool_choice["name"] not in {tool["name"] for tool in tools}:
            raise ProtocolError(
                f"Tool choice '{tool_choice['name']}' does not name one of the tools.",
                param="response.tool_choice.name",
                event_id=event_id,
            )
        input_items = self._resolve_input(params["input"], event_id) if "input" in params else None
        audio_output = params.get("audio", {}).get("output", {})
        session_output = config["audio"]["output"]
        audio_format = audio_output.get("format") or session_output["format"]
        voice = audio_output.get("voice") or session_output["voice"]
        modality: Modality = (params.get("output_modalities") or config["output_modalities"])[0]
        max_output_tokens = params.get("max_output_tokens", config["max_output_tokens"])
        instructions = params["instructions"] if "instructions" in params else config["instructions"]
        effective_temperature = temperature if temperature is not None else self.temperature

        response = _Response(
            id=new_id("resp"),
            in_band=in_band,
            modality=modality,
            audio_format=dict(audio_format),
            voice=voice,
            max_output_tokens=max_output_tokens,
            metadata=params.get("metadata"),
            encoder=OutputEncoder(AudioFormat.from_wire(audio_format)),
            input_items=input_items,
            instructions=instructions,
        )
        response.run = RunResponse(
            response_id=response.id,
            messages=[],
            tools=tools_for_chat(tools),
            tool_choice=tool_choice_for_chat(tool_choice),
            max_tokens=self.defaults.llm_max_tokens if max_output_tokens == "inf" else int(max_output_tokens),
            temperature=effective_temperature,
            modality=modality,
            voice=voice["id"] if isinstance(voice, dict) else voice,
            speed=float(session_output.get("speed", 1.0)),
        )
        self._responses[response.id] = response
        if in_band:
            self._in_band_id = response.id
        self._emit(ServerEvent.RESPONSE_CREATED, response=self._response_object(response))
        self._release_held_responses()
        return response.id

    def _release_held_responses(self) -> None:
        """Hands the pipeline every response whose context is ready: a user turn still being transcribed holds
        back the responses that include it (the LLM must see what the user said)."""
        for response in self._responses.values():
            if response.run is None:
                continue
            items = response.input_items if response.input_items is not None else self.conversation.items()
            if any(item.get("id") in self._transcribing for item in items):
                continue
            run, response.run = response.run, None
            run.messages = chat_messages(items, response.instructions)
            run.has_images = any(has_image(item) for item in items if item["type"] == "message")
            self._commands.append(run)

    def _resolve_input(self, entries: list[JsonDict], event_id: str | None) -> list[JsonDict]:
        items = []
        for index, entry in enumerate(entries):
            if entry.get("type") == "item_reference":
                stored = self.conversation.get(entry["id"])
                if stored is None:
                    raise ProtocolError(
                        f"Item with id '{entry['id']}' not found in the conversation.",
                        param=f"response.input[{index}].id",
                        event_id=event_id,
                    )
                items.append(stored.item)
            else:
                item = {"id": entry.get("id") or new_id("item"), "object": "realtime.item", **entry}
                for part in item.get("content", []):
                    part.pop("audio", None)
                items.append(item)
        return items

    def _response_create(self, command: ResponseCreate) -> None:
        self.create_response(command.params, event_id=command.event_id, temperature=command.temperature)

    def _response_cancel(self, command: ResponseCancel) -> None:
        if command.response_id is not None:
            if command.response_id not in self._responses:
                raise ProtocolError(
                    f"Cancellation failed: no active response found with id '{command.response_id}'.",
                    code="response_cancel_not_active",
                    param="response_id",
                    event_id=command.event_id,
                )
            response_id = command.response_id
        elif self._in_band_id is not None:
            response_id = self._in_band_id
        elif self._responses:
            response_id = next(reversed(self._responses))
        else:
            raise ProtocolError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
                event_id=command.event_id,
            )
        self.cancel_response(response_id, "client_cancelled")

    def cancel_response(self, response_id: str, reason: Literal["client_cancelled", "turn_detected"]) -> None:
        """Ends a response as cancelled (client request, or the user speaking over it)."""
        response = self._responses.get(response_id)
        if response is None:
            return
        self._commands.append(CancelResponse(response_id))
        self._finish(response, "cancelled", {"type": "cancelled", "reason": reason})

    def _arm_idle_timeout(self, response: _Response) -> None:
        """The idle timer starts when the reply has finished playing: now plus the length of its audio."""
        timeout_ms = (self.turn_detection or {}).get("idle_timeout_ms")
        if not timeout_ms or self.turn_detection.get("type") != "server_vad" or self._speech_start_ms is not None:
            return
        played_ms = 0.0
        for item in response.output:
            stored = self.conversation.get(item["id"])
            if stored is not None and item["type"] == "message":
                played_ms += stored.audio_ms
        self._idle_deadline_ms = self._input.clock_ms + played_ms + timeout_ms

    def fail_all_responses(self, failure: ProviderFailure) -> None:
        """Ends every response in progress as failed (the server is shutting down, say)."""
        for response_id in list(self._responses):
            self._commands.append(CancelResponse(response_id))
            self.on_response_failed(response_id, failure)

    def _response_object(self, response: _Response) -> JsonDict:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": response.status,
            "status_details": response.status_details,
            "output": [_snapshot(item) for item in response.output],
            "conversation_id": self.conversation_id if response.in_band else None,
            "output_modalities": [response.modality],
            "max_output_tokens": response.max_output_tokens,
            "audio": {"output": {"format": response.audio_format, "voice": response.voice}},
            "usage": response.usage.to_wire() if response.usage else None,
            "metadata": response.metadata,
        }

    # ---- what the pipeline reports ---------------------------------------------------------------------------

    def on_message_started(self, response_id: str) -> None:
        """The LLM began a text reply: the assistant message item opens (before its audio is ready)."""
        response = self._responses.get(response_id)
        if response is not None:
            self._ensure_message(response)

    def on_text(self, response_id: str, text: str) -> None:
        """A text delta of a text-modality response (for an audio response: text that is spoken)."""
        self._reply_text(response_id, text)

    def on_transcript(self, response_id: str, text: str) -> None:
        """Text about to be spoken by an audio-modality response (sent just ahead of its audio)."""
        self._reply_text(response_id, text)

    def _reply_text(self, response_id: str, text: str) -> None:
        response = self._responses.get(response_id)
        if response is None or not text:
            return
        message = self._ensure_message(response)
        message.text.append(text)
        part = message.stored.item["content"][0]
        if response.modality == "text":
            part["text"] += text
            self._emit(ServerEvent.RESPONSE_OUTPUT_TEXT_DELTA, **self._part_ids(response, message), delta=text)
            return
        if not message.truncated:
            message.stored.spoken.append(SpokenSegment(message.stored.audio_ms, text))
            part["transcript"] += text
        self._emit(ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA, **self._part_ids(response, message), delta=text)

    def on_audio(self, response_id: str, pcm: bytes) -> None:
        """PCM16 mono 24 kHz audio of an audio-modality response."""
        response = self._responses.get(response_id)
        if response is None or not pcm or response.modality != "audio":
            return
        message = self._ensure_message(response)
        encoded = response.encoder.encode(pcm)
        if not encoded:
            return
        if not message.truncated:
            message.stored.audio.extend(encoded)
        self._emit(
            ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA,
            **self._part_ids(response, message),
            delta=encode_base64(encoded),
        )

    def on_tool_call(self, response_id: str, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        """A piece of a tool call the LLM is making: the first piece of each call names it."""
        response = self._responses.get(response_id)
        if response is None:
            return
        call = response.calls.get(index)
        if call is None:
            self._close_message(response, "completed")
            for open_call in list(response.calls.values()):
                self._close_call(response, open_call, "completed")
            item = {
                "id": new_id("item"),
                "type": "function_call",
                "object": "realtime.item",
                "status": "in_progress",
                "name": name or "",
                "call_id": call_id or new_id("call"),
                "arguments": "",
            }
            call = _OpenCall(item=item, output_index=len(response.output))
            response.calls[index] = call
            response.output.append(item)
            self._item_started(response, item, call.output_index)
        elif name and not call.item["name"]:
            call.item["name"] = name
        if arguments:
            call.arguments.append(arguments)
            self._emit(
                ServerEvent.RESPONSE_FUNCTION_CALL_ARGUMENTS_DELTA,
                response_id=response.id,
                item_id=call.item["id"],
                output_index=call.output_index,
                call_id=call.item["call_id"],
                delta=arguments,
            )

    def on_response_done(self, response_id: str, usage: Usage | None, finish_reason: str | None) -> None:
        """The pipeline finished the response (all text, audio and tool calls delivered)."""
        response = self._responses.get(response_id)
        if response is None:
            return
        response.usage = usage
        flushed = response.encoder.flush()
        if flushed and response.message is not None:
            self._emit(
                ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA,
                **self._part_ids(response, response.message),
                delta=encode_base64(flushed),
            )
            if not response.message.truncated:
                response.message.stored.audio.extend(flushed)
        if finish_reason == "length":
            self._finish(response, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"})
        elif finish_reason == "content_filter":
            self._finish(response, "incomplete", {"type": "incomplete", "reason": "content_filter"})
        else:
            self._finish(response, "completed", None)

    def on_response_failed(self, response_id: str, failure: ProviderFailure) -> None:
        """A provider failed while generating the response: an `error` event, then a failed `response.done`."""
        response = self._responses.get(response_id)
        if response is None:
            return
        self._emit_event(error_event(failure.error_type, failure.code, failure.message))
        error = {"type": failure.error_type, "code": failure.code, "message": failure.message}
        self._finish(response, "failed", {"type": "failed", "error": error})

    # ---- response helpers ------------------------------------------------------------------------------------

    def _part_ids(self, response: _Response, message: _OpenMessage) -> JsonDict:
        return {
            "response_id": response.id,
            "item_id": message.stored.id,
            "output_index": message.output_index,
            "content_index": 0,
        }

    def _ensure_message(self, response: _Response) -> _OpenMessage:
        if response.message is not None:
            return response.message
        for open_call in list(response.calls.values()):
            self._close_call(response, open_call, "completed")
        item = {
            "id": new_id("item"),
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        audio_format = AudioFormat.from_wire(response.audio_format)
        message = _OpenMessage(StoredItem(item=item, audio_format=audio_format), output_index=len(response.output))
        response.message = message
        response.output.append(item)
        self._item_started(response, item, message.output_index)
        part = {"type": "audio", "transcript": ""} if response.modality == "audio" else {"type": "text", "text": ""}
        self._emit(ServerEvent.RESPONSE_CONTENT_PART_ADDED, **self._part_ids(response, message), part=part)
        # From here on the stored item shows the reply so far (retrieve and truncate see it mid-response).
        if response.modality == "audio":
            item["content"] = [{"type": "output_audio", "transcript": ""}]
        else:
            item["content"] = [{"type": "output_text", "text": ""}]
        return message

    def _item_started(self, response: _Response, item: JsonDict, output_index: int) -> None:
        self._emit(
            ServerEvent.RESPONSE_OUTPUT_ITEM_ADDED,
            response_id=response.id,
            output_index=output_index,
            item=_snapshot(item),
        )
        if response.in_band:
            stored = response.message.stored if item["type"] == "message" and response.message else StoredItem(item)
            previous = self.conversation.add(stored)
            self._emit(ServerEvent.CONVERSATION_ITEM_ADDED, previous_item_id=previous, item=_snapshot(item))

    def _item_finished(self, response: _Response, item: JsonDict, output_index: int) -> None:
        self._emit(
            ServerEvent.RESPONSE_OUTPUT_ITEM_DONE,
            response_id=response.id,
            output_index=output_index,
            item=_snapshot(item),
        )
        if response.in_band and item["id"] in self.conversation:
            previous = self.conversation.previous_id(item["id"])
            self._emit(ServerEvent.CONVERSATION_ITEM_DONE, previous_item_id=previous, item=_snapshot(item))

    def _close_message(self, response: _Response, status: str) -> None:
        message = response.message
        if message is None:
            return
        response.message = None
        item = message.stored.item
        ids = self._part_ids(response, message)
        full_text = "".join(message.text)
        if response.modality == "audio":
            transcript = full_text
            # After a truncation the stored transcript is what the user heard, not all that was generated.
            item_transcript = item["content"][0]["transcript"] if message.truncated else full_text
            self._emit(ServerEvent.RESPONSE_OUTPUT_AUDIO_DONE, **ids)
            self._emit(ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE, **ids, transcript=transcript)
            self._emit(ServerEvent.RESPONSE_CONTENT_PART_DONE, **ids, part={"type": "audio", "transcript": transcript})
            item["content"] = [{"type": "output_audio", "transcript": item_transcript}]
        else:
            self._emit(ServerEvent.RESPONSE_OUTPUT_TEXT_DONE, **ids, text=full_text)
            self._emit(ServerEvent.RESPONSE_CONTENT_PART_DONE, **ids, part={"type": "text", "text": full_text})
            item["content"] = [{"type": "output_text", "text": full_text}]
        item["status"] = status
        self._item_finished(response, item, message.output_index)

    def _close_call(self, response: _Response, call: _OpenCall, status: str) -> None:
        del response.calls[next(index for index, open_call in response.calls.items() if open_call is call)]
        item = call.item
        item["arguments"] = "".join(call.arguments)
        item["status"] = status
        self._emit(
            ServerEvent.RESPONSE_FUNCTION_CALL_ARGUMENTS_DONE,
            response_id=response.id,
            item_id=item["id"],
            output_index=call.output_index,
            call_id=item["call_id"],
            name=item["name"],
            arguments=item["arguments"],
        )
        self._item_finished(response, item, call.output_index)

    def _finish(self, response: _Response, status: str, details: JsonDict | None) -> None:
        item_status = "completed" if status == "completed" else "incomplete"
        self._close_message(response, item_status)
        for call in list(response.calls.values()):
            self._close_call(response, call, item_status)
        response.status = status
        response.status_details = details
        del self._responses[response.id]
        if self._in_band_id == response.id:
            self._in_band_id = None
        self.conversation.limit_audio(self.defaults.max_retained_audio_ms)
        self._emit(ServerEvent.RESPONSE_DONE, response=self._response_object(response))
        if response.in_band:
            self._arm_idle_timeout(response)
        if response.in_band and self._respond_when_idle:
            self._respond_when_idle = False
            self.create_response()


# --------------------------------------------------------------------------------------------------------------
# session.update merge semantics
# --------------------------------------------------------------------------------------------------------------

# Keys whose value is replaced as a whole rather than merged key by key.
_REPLACED_KEYS = frozenset({"format", "voice", "tools", "tool_choice", "tracing", "truncation", "prompt", "include"})


def merge_session(current: JsonDict, patch: JsonDict, turn_detection_defaults: dict[str, JsonDict]) -> JsonDict:
    """`current` with `patch` applied: nested objects merge, `null` clears, lists and the keys in
    `_REPLACED_KEYS` are replaced, and a turn detection of another `type` starts from that type's defaults."""
    merged = copy.deepcopy(current)
    for key, value in patch.items():
        old = merged.get(key)
        if key == "turn_detection" and isinstance(value, dict):
            kind = value.get("type") or (old or {}).get("type") or "server_vad"
            base = dict(old) if old is not None and old.get("type") == kind else dict(turn_detection_defaults[kind])
            merged[key] = {**base, "type": kind, **value}
        elif isinstance(value, dict) and isinstance(old, dict) and key not in _REPLACED_KEYS:
            merged[key] = merge_session(old, value, turn_detection_defaults)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
