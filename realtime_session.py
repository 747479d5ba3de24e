"""One Realtime session: its configuration, conversation, input turns and responses, coordinated.

Pure: no sockets, no pipeline, no asyncio, no settings. Client messages go in through `receive`; what the pipeline
produces goes in through the `on_*` methods; out come server events (`take_events`, already in the connection's
dialect) and commands for the pipeline (`take_commands`). Every ordering rule and error code of the protocol lives
in this module, the `session` package and the `wire` package, so they are tested with plain function calls.

The session is made of parts that each own one concern (see the `session` package):

* `SessionConfig` (`session.configuration`): the effective configuration, replaced as a whole by `session.update`;
* `InputTurns` (`session.input_turns`): the input buffer, VAD turns, commits and their transcription;
* `ResponseStream` (`session.responses`): responses, their output items and `response.done`;
* `Conversation` (`session.conversation`): the items both sides read and write.

This class dispatches client events to them and carries what one part's change means for another: speech over
a reply cancels it, a finished turn is answered, a transcript releases the responses waiting for it, the end of a
reply arms the idle timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from audio_utils import AudioFormat, InvalidAudio, decode_base64, format_to_pcm
from protocol import (
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
from session.commands import AudioOutput, Command, McpCallError, PreemptionEnd, ProviderFailure, Usage
from session.configuration import RealtimeConfig, SessionConfig, SessionDefaults, as_wire, new_session_config
from session.conversation import ROOT, Conversation, SpokenSegment, StoredItem, heard_text
from session.input_turns import InputTurns
from session.mcp import McpTools
from session.outbox import Outbox
from session.output_audio import OutputAudioBuffer, PlayedAudio
from session.responses import CancelReason, FinishedResponse, ResponseStream
from wire.parsing import parse_client_event


class RealtimeSession:
    """The state of one Realtime connection. See the module docstring."""

    def __init__(
        self,
        defaults: SessionDefaults,
        dialect: Dialect,
        kind: SessionKind = "realtime",
        model: str | None = None,
        clock: Callable[[], float] = time.time,
        initial_update: SessionUpdate | None = None,
        audio_output: AudioOutput = AudioOutput.EVENTS,
        call_update: SessionUpdate | None = None,
    ) -> None:
        self.defaults = defaults
        self.audio_output = audio_output
        self.dialect = dialect
        self.conversation_id = new_id("conv")
        self.conversation = Conversation()
        config = new_session_config(defaults, kind, now=clock(), model=model)
        if initial_update is not None:  # a configuration the session starts from (a client secret's, say)
            config = config.updated(initial_update, defaults)
        if call_update is not None:  # a WebRTC call's own `session`, over its secret's
            config = config.updated(call_update, defaults)
        self.config: SessionConfig = config
        self._outbox = Outbox(dialect, self._beta_temperature)
        self._input = InputTurns(
            config.id, config.input, self.conversation, self._outbox, defaults.max_retained_audio_ms
        )
        self._mcp = McpTools(self.conversation, self._outbox)
        self._responses = ResponseStream(
            config.id,
            self.conversation,
            self._outbox,
            self.conversation_id,
            defaults.llm_max_tokens,
            self._in_band_finished,
            self._mcp,
            defaults.mcp_allowed_hosts,
            audio_output,
        )
        self._output = OutputAudioBuffer(self._outbox)
        starting = (initial_update, call_update)
        self._initial_mcp = any(update is not None and "tools" in update.patch for update in starting)
        self._answer_when_idle = False  # a turn ended while the in-band response was still running

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def kind(self) -> SessionKind:
        return self.config.kind

    @property
    def active_response_ids(self) -> list[str]:
        return self._responses.active_ids

    @property
    def in_band_response_id(self) -> str | None:
        return self._responses.in_band_id

    def _beta_temperature(self) -> float:
        """What beta responses report: the session's temperature (a transcription session has none of its own)."""
        config = self.config
        return config.temperature if isinstance(config, RealtimeConfig) else self.defaults.temperature

    def session_object(self) -> JsonDict:
        """The full effective session in this connection's dialect."""
        return self.config.render(self.dialect)

    # ---- outputs ---------------------------------------------------------------------------------------------

    def take_events(self) -> list[JsonDict]:
        return self._outbox.take_events()

    def take_commands(self) -> list[Command]:
        return self._outbox.take_commands()

    # ---- client events ---------------------------------------------------------------------------------------

    def open(self) -> None:
        """The events a new connection starts with."""
        self._outbox.emit(ServerEvent.SESSION_CREATED, session=self.session_object())
        if self.kind == "realtime":
            conversation = {"id": self.conversation_id, "object": "realtime.conversation"}
            self._outbox.emit(ServerEvent.CONVERSATION_CREATED, conversation=conversation)
        self._input.start()
        if self._initial_mcp:
            self._list_mcp_servers()

    def receive(self, message: str | bytes) -> None:
        """Handles one client WebSocket message. Bad input becomes an `error` event; the session goes on."""
        try:
            self._dispatch(parse_client_event(message, self.dialect))
        except ProtocolError as error:
            self.report_error(error)

    def report_error(self, error: ProtocolError) -> None:
        self._outbox.emit_event(error.to_event())

    def _dispatch(self, command: ClientCommand) -> None:
        if not isinstance(command, AudioAppend | ItemRetrieve | ResponseCancel | OutputAudioClear):
            # The session, the conversation or the input changes: a reply started early may not be the one due.
            self._responses.discard_preemption(PreemptionEnd.CLIENT_EVENT)
        match command:
            case SessionUpdate():
                self._session_update(command)
            case AudioAppend():
                self._input.append(command.audio, command.event_id)
                if self._responses.in_band_id is None and self._input.check_idle_timeout():
                    self._turn_ended(answer=self.kind == "realtime")
            case AudioCommit():
                self._input.commit(command.event_id)
                self._release_responses()
            case AudioClear():
                self._input.clear()
            case OutputAudioClear() if self.audio_output is AudioOutput.TRACK:
                self._output.clear()
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
                self._outbox.emit(ServerEvent.CONVERSATION_ITEM_RETRIEVED, item=stored.with_audio())
            case ItemDelete():
                self._require_item(command.item_id, command.event_id)
                self.conversation.delete(command.item_id)
                self._outbox.emit(ServerEvent.CONVERSATION_ITEM_DELETED, item_id=command.item_id)
            case ItemTruncate():
                self._item_truncate(command)
            case ResponseCreate():
                self.create_response(command.params, event_id=command.event_id, temperature=command.temperature)
            case ResponseCancel():
                self._responses.cancel_request(command.response_id, command.event_id)

    def _session_update(self, command: SessionUpdate) -> None:
        self.config = self.config.updated(command, self.defaults)
        self._input.configure(self.config.input)
        event_type = ServerEvent.SESSION_UPDATED
        if self.dialect == "beta" and self.kind == "transcription":
            event_type = ServerEvent.TRANSCRIPTION_SESSION_UPDATED
        self._outbox.emit(event_type, session=self.session_object())
        if "tools" in command.patch:
            self._list_mcp_servers()

    def _list_mcp_servers(self) -> None:
        """MCP servers the session's tools name are listed once (`session.mcp`)."""
        if isinstance(self.config, RealtimeConfig):
            self._mcp.ensure_listed([as_wire(tool) for tool in self.config.tools])

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
        if item["type"] == "mcp_approval_response":
            self._mcp.check_approval_response(item, "item", event_id)
        item_id = item.pop("id", None) or new_id("item")
        if item_id in self.conversation or self._responses.has_open_item(item_id):
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
        audio_format = self._input.format
        audio = bytearray()
        untranscribed = False
        for index, part in enumerate(item.get("content", [])):
            if part["type"] == "input_audio" and part.get("audio") is not None:
                try:
                    audio = bytearray(decode_base64(part.pop("audio")))
                    format_to_pcm(bytes(audio), audio_format)
                except InvalidAudio as exc:
                    raise ProtocolError(str(exc), param=f"item.content[{index}].audio", event_id=event_id) from None
                untranscribed = part.get("transcript") is None
        stored = StoredItem(
            item={"id": item_id, "object": "realtime.item", **item}, audio=audio, audio_format=audio_format
        )
        after = self.conversation.add(stored, previous)
        self._outbox.item_added(after, stored.item)
        self._outbox.item_done(after, stored.item)
        if untranscribed and audio:
            self._input.transcribe_client_audio(stored)

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
        self._truncate(stored, command.content_index, command.audio_end_ms)

    def _truncate(self, stored: StoredItem, content_index: int, audio_end_ms: int) -> None:
        """Cuts an assistant audio item to its first `audio_end_ms` (what the user heard)."""
        heard = heard_text(stored.spoken, stored.audio_ms, audio_end_ms)
        stored.item["content"][content_index]["transcript"] = heard
        if stored.released_ms:
            stored.released_ms = audio_end_ms  # the bytes are gone already; only the length changes
        else:
            keep = int(audio_end_ms * stored.audio_format.bytes_per_ms)
            keep -= keep % (2 if stored.audio_format is AudioFormat.PCM16 else 1)
            del stored.audio[keep:]
        stored.spoken = [SpokenSegment(0.0, heard)]
        self._responses.mark_truncated(stored)
        self._outbox.emit(
            ServerEvent.CONVERSATION_ITEM_TRUNCATED,
            item_id=stored.id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )

    # ---- responses -------------------------------------------------------------------------------------------

    def create_response(
        self, params: JsonDict | None = None, *, event_id: str | None = None, temperature: float | None = None
    ) -> str:
        """Starts a response (client `response.create`, or the server after a turn). Returns its id."""
        if not isinstance(self.config, RealtimeConfig):
            raise ProtocolError(
                "Transcription sessions do not create responses.", code="invalid_event", param="type", event_id=event_id
            )
        response_id = self._responses.create(params or {}, self.config, event_id=event_id, temperature=temperature)
        self._release_responses()
        return response_id

    def cancel_response(self, response_id: str, reason: CancelReason) -> None:
        """Ends a response as cancelled (client request, or the user speaking over it)."""
        self._responses.cancel(response_id, reason)

    def fail_all_responses(self, failure: ProviderFailure) -> None:
        """Ends every response in progress as failed (the server is shutting down, say)."""
        self._responses.fail_all(failure)

    def _release_responses(self) -> None:
        self._responses.release_ready(self._input.is_transcribing)

    def _turn_ended(self, answer: bool) -> None:
        """A user turn was committed by the server (VAD, idle timeout): it is answered now, or once the in-band
        response still running has ended."""
        self._release_responses()
        if not answer:
            return
        if self._responses.in_band_id is None and isinstance(self.config, RealtimeConfig):
            # The server's reply to the turn: a preemptive response started for it is adopted if it stands.
            self._responses.create({}, self.config, answers_turn=self._input.is_transcribing)
            self._release_responses()
        else:
            self._answer_when_idle = True

    def _in_band_finished(self, finished: FinishedResponse) -> None:
        self.conversation.limit_audio(self.defaults.max_retained_audio_ms)
        self._input.arm_idle_timeout(finished.audio_ms)
        if self._answer_when_idle:
            self._answer_when_idle = False
            self.create_response()

    # ---- what the pipeline reports: turns and transcripts ----------------------------------------------------

    def on_audio_analysed(self, position_ms: float) -> None:
        """The VAD has analysed the audio up to `position_ms`."""
        self._input.on_audio_analysed(position_ms)

    def on_speech_started(self, onset_ms: float) -> None:
        """The VAD heard speech begin at `onset_ms` (ms of audio received): a reply still running is cut off."""
        detection = self.config.input.turn_detection
        if not self._input.on_speech_started(onset_ms) or detection is None or not detection.interrupt_response:
            return
        in_band = self._responses.in_band_id
        if in_band is not None:
            self._responses.cancel(in_band, "turn_detected")
        if self.audio_output is AudioOutput.TRACK:
            self._output.clear()  # the reply may have been generated already and still be playing

    # ---- what a media transport reports: input audio and the output track -----------------------------------

    @property
    def input_format(self) -> AudioFormat:
        """The format `append_media_audio` takes (the session's input format)."""
        return self._input.format

    def append_media_audio(self, audio: bytes) -> None:
        """Input audio from a media track, in `input_format`: the same path as `input_audio_buffer.append`."""
        try:
            self._input.append_audio(audio, None)
        except ProtocolError as error:
            self.report_error(error)
            return
        if self._responses.in_band_id is None and self._input.check_idle_timeout():
            self._turn_ended(answer=self.kind == "realtime")

    def on_output_audio_started(self, response_id: str) -> None:
        self._output.on_started(response_id)

    def on_output_audio_stopped(self, response_id: str) -> None:
        self._output.on_stopped(response_id)

    def on_output_audio_cleared(self, played: PlayedAudio | None) -> None:
        """The track dropped its queued audio: the item is cut to what had played, as the API does over WebRTC
        (its clients send no `conversation.item.truncate` there)."""
        if played is not None:
            stored = self.conversation.get(played.item_id)
            if stored is not None and stored.audio_ms > played.played_ms:
                content = stored.item.get("content") or []
                if content and content[0].get("type") == "output_audio":
                    self._truncate(stored, 0, int(played.played_ms))
        self._output.on_cleared(played)

    def on_speech_paused(self, speech_end_ms: float) -> None:
        self._responses.discard_preemption(PreemptionEnd.SPEECH_RESUMED)
        self._input.on_speech_paused(speech_end_ms)

    def on_speech_resumed(self) -> None:
        """The speaker went on after a pause: what was started on the speculation made at it is dropped."""
        self._input.on_speech_resumed()
        self._responses.discard_preemption(PreemptionEnd.SPEECH_RESUMED)

    def on_turn_likely_complete(self) -> None:
        """Semantic VAD: the turn model thinks the pause may be the turn's end: its reply may start early."""
        self._input.on_turn_likely_complete()
        self._preempt()

    def on_speech_stopped(self, end_ms: float, speech_end_ms: float | None = None) -> None:
        """The VAD judged the turn over at `end_ms`: it is committed, and answered if so configured."""
        detection = self.config.input.turn_detection
        if self._input.on_speech_stopped(end_ms, speech_end_ms) and detection is not None:
            self._turn_ended(answer=self.kind == "realtime" and detection.create_response)
        # Whatever was started early and not adopted by now is not this turn's reply.
        self._responses.discard_preemption(PreemptionEnd.SPEECH_RESUMED)

    def on_transcription_delta(self, request_id: str, delta: str) -> None:
        self._input.on_transcription_delta(request_id, delta)

    def on_transcription_completed(self, request_id: str, transcript: str) -> None:
        if self._input.on_transcription_done(request_id, transcript, None):
            self._release_responses()
        self._preempt()

    def _preempt(self) -> None:
        """If the turn in progress has a speculative transcript and would be answered when it ends, its reply
        starts now, held back until the turn ends (`session.responses`: preemptive responses)."""
        detection = self.config.input.turn_detection
        if (
            not self.defaults.preemptive_responses
            or not isinstance(self.config, RealtimeConfig)
            or detection is None
            or not detection.create_response
            or self._answer_when_idle
        ):
            return
        turn = self._input.speculative_turn()
        if turn is not None:
            self._responses.preempt(self.config, turn, self._input.is_transcribing)

    def on_transcription_failed(self, request_id: str, failure: ProviderFailure) -> None:
        if self._input.on_transcription_done(request_id, None, failure):
            self._release_responses()

    # ---- what the pipeline reports: responses ----------------------------------------------------------------

    def on_message_started(self, response_id: str) -> None:
        self._responses.on_message_started(response_id)

    def on_text(self, response_id: str, text: str) -> None:
        """A text delta of a text-modality response."""
        self._responses.on_reply_text(response_id, text)

    def on_transcript(self, response_id: str, text: str) -> None:
        """Text about to be spoken by an audio-modality response (sent just ahead of its audio)."""
        self._responses.on_reply_text(response_id, text)

    def on_audio(self, response_id: str, pcm: bytes) -> None:
        self._responses.on_audio(response_id, pcm)

    def on_tool_call(self, response_id: str, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        self._responses.on_tool_call(response_id, index, call_id, name, arguments)

    def on_response_done(self, response_id: str, usage: Usage | None, finish_reason: str | None) -> None:
        self._responses.on_done(response_id, usage, finish_reason)

    def on_response_failed(self, response_id: str, failure: ProviderFailure) -> None:
        self._responses.on_failed(response_id, failure)

    def on_reply_not_spoken(self, response_id: str, failure: ProviderFailure) -> None:
        """No voice speaks the reply's language: the client is told, and the response goes on as text and
        transcript (its audio simply stays empty)."""
        if response_id in self.active_response_ids:
            self._outbox.emit_event(error_event(failure.error_type, failure.code, failure.message))

    # ---- what the pipeline reports: MCP servers --------------------------------------------------------------

    def on_mcp_tools_listed(self, request_id: str, tools: list[JsonDict] | None, failure: str | None) -> None:
        """An MCP server's tools (None: listing failed, `failure` says why); responses waiting for them go on."""
        configs = [as_wire(tool) for tool in self.config.tools] if isinstance(self.config, RealtimeConfig) else []
        self._mcp.on_listed(request_id, tools, failure, [*configs, *self._responses.mcp_configs()])
        self._release_responses()

    def on_mcp_call_done(self, request_id: str, output: str | None, error: McpCallError | None) -> None:
        self._responses.on_mcp_call_done(request_id, output, error)
