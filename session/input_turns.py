"""The input side of a session: the input audio buffer, the user turns found in it, and their transcription.

A turn is committed by the client (`input_audio_buffer.commit`), by server VAD (`speech_stopped`), or by the idle
timeout; either way it becomes a user item in the conversation and is transcribed, because the LLM reads what the
user said. Responses that include an item wait until its transcript is there (`is_transcribing`).

States (`InputTurns.state`):

* `LISTENING`: no turn in progress. Under server VAD the buffer keeps only the recent past that the next turn's
  prefix padding may need. After a reply has finished playing, the idle timer may be armed.
* `SPEAKING`: the VAD heard speech start (`speech_started` was sent). When the speaker pauses, the turn so far is
  transcribed at once (a speculation): if the turn ends at that pause, its transcript is ready when `speech_stopped`
  is sent, instead of transcription starting then. If the speaker goes on, the speculation is dropped. The turn ends
  at `speech_stopped`, a commit, a clear, or when turn detection is turned off. While a finished speculation stands,
  `speculative_turn` is the item the turn would become if it ended there (the session may start its reply early).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from audio_utils import AudioFormat, InvalidAudio, decode_base64
from protocol import MAX_APPEND_AUDIO_BYTES, MIN_COMMIT_MS, JsonDict, ProtocolError, ServerEvent, new_id
from session.commands import ConfigureTurnDetection, FeedAudio, ProviderFailure, ResetTurnDetection, Transcribe
from session.configuration import InputAudioConfig, SemanticVadConfig, ServerVadConfig
from session.conversation import Conversation, StoredItem
from session.input_buffer import InputAudioBuffer, to_pipeline_pcm
from session.outbox import Outbox

# Bound that keeps one misbehaving client from growing server memory without limit.
MAX_INPUT_BUFFER_MS = 15 * 60 * 1000
# Audio after the end of speech that goes to a speculative transcription: the decoder should hear the last word end.
_SPECULATION_TAIL_MS = 100


class TurnState(Enum):
    LISTENING = "listening"
    SPEAKING = "speaking"


@dataclass
class _Speculation:
    """A transcription of the turn so far, started when the speaker paused at `speech_end_ms`."""

    request_id: str
    speech_end_ms: float
    transcript: str | None = None
    failure: ProviderFailure | None = None
    done: bool = False
    deltas: list[str] = field(default_factory=list)  # streamed words, sent only if the speculation is adopted
    likely_complete: bool = False  # semantic VAD: the turn model thought the turn may end at this pause


@dataclass
class _Listening:
    idle_deadline_ms: float | None = None  # when `idle_timeout_ms` fires, on the audio clock


@dataclass
class _Speaking:
    start_ms: float  # the turn's `audio_start_ms`
    speculation: _Speculation | None = None


class InputTurns:
    def __init__(
        self,
        session_id: str,
        config: InputAudioConfig,
        conversation: Conversation,
        outbox: Outbox,
        max_retained_audio_ms: float,
    ) -> None:
        self._session_id = session_id
        self._config = config
        self._conversation = conversation
        self._outbox = outbox
        self._max_retained_audio_ms = max_retained_audio_ms
        self._buffer = InputAudioBuffer(config.audio_format)
        self._phase: _Listening | _Speaking = _Listening()
        self._item_id = new_id("item")  # the id the turn in progress will have as an item
        self._awaited: set[str] = set()  # items whose transcript the LLM waits for
        self._requests: dict[str, str] = {}  # transcription request id → item id

    @property
    def state(self) -> TurnState:
        return TurnState.SPEAKING if isinstance(self._phase, _Speaking) else TurnState.LISTENING

    @property
    def format(self) -> AudioFormat:
        return self._config.audio_format

    def is_transcribing(self, item_id: str | None) -> bool:
        return item_id in self._awaited

    def start(self) -> None:
        """The pipeline's turn detection starts from the session's configuration."""
        self._outbox.command(ConfigureTurnDetection(self._config.turn_detection))

    def configure(self, config: InputAudioConfig) -> None:
        """The session's `audio.input` changed."""
        before, self._config = self._config, config
        if config.turn_detection != before.turn_detection:
            self._outbox.command(ConfigureTurnDetection(config.turn_detection))
            if config.turn_detection is None and isinstance(self._phase, _Speaking):
                self._phase = _Listening()
        if config.audio_format is not self._buffer.format:
            self._buffer.set_format(config.audio_format)
            self._outbox.command(ResetTurnDetection())

    # ---- client events ---------------------------------------------------------------------------------------

    def append(self, audio_base64: str, event_id: str | None) -> None:
        """`input_audio_buffer.append`: the audio joins the buffer and goes to turn detection."""
        try:
            audio = decode_base64(audio_base64)
            if self.format is AudioFormat.PCM16 and len(audio) % 2:
                raise InvalidAudio("PCM16 audio must have an even number of bytes.")
        except InvalidAudio as exc:
            raise ProtocolError(str(exc), param="audio", event_id=event_id) from None
        self.append_audio(audio, event_id)

    def append_audio(self, audio: bytes, event_id: str | None) -> None:
        """Decoded audio in the session's input format (an append's, or a media track's)."""
        if len(audio) > MAX_APPEND_AUDIO_BYTES:
            raise ProtocolError(
                f"Invalid 'audio': {len(audio)} bytes of audio in one append; the most allowed is 15 MiB.",
                param="audio",
                event_id=event_id,
            )
        if self._buffer.buffered_ms + self.format.duration_ms(len(audio)) > MAX_INPUT_BUFFER_MS:
            raise ProtocolError(
                f"The input audio buffer is full ({MAX_INPUT_BUFFER_MS // 60000} minutes): commit or clear it.",
                code="input_audio_buffer_full",
                event_id=event_id,
            )
        self._outbox.command(FeedAudio(self._buffer.append(audio)))

    def commit(self, event_id: str | None) -> None:
        """`input_audio_buffer.commit`: the whole buffer becomes a user turn."""
        buffered_ms = self._buffer.buffered_ms
        if buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but "
                f"buffer only has {buffered_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                event_id=event_id,
            )
        if isinstance(self._phase, _Speaking):
            self._phase = _Listening()
            self._outbox.command(ResetTurnDetection())
        self._commit(self._buffer.take())

    def clear(self) -> None:
        """`input_audio_buffer.clear`: the buffer and any turn in progress are dropped."""
        self._buffer.clear()
        if isinstance(self._phase, _Speaking):
            self._item_id = new_id("item")
            self._phase = _Listening()
        self._outbox.command(ResetTurnDetection())
        self._outbox.emit(ServerEvent.INPUT_AUDIO_BUFFER_CLEARED)

    def transcribe_client_audio(self, stored: StoredItem) -> None:
        """A user item the client made with audio of its own: transcribed like a turn, so that the LLM hears it."""
        self._transcribe_item(stored.id, bytes(stored.audio))

    # ---- idle timeout ----------------------------------------------------------------------------------------

    def arm_idle_timeout(self, played_ms: float) -> None:
        """A reply ended: under server VAD with `idle_timeout_ms`, the timer runs from when it finishes playing
        (now plus the length of its audio)."""
        detection = self._config.turn_detection
        if not isinstance(detection, ServerVadConfig) or not detection.idle_timeout_ms:
            return
        if isinstance(self._phase, _Listening):
            self._phase.idle_deadline_ms = self._buffer.clock_ms + played_ms + detection.idle_timeout_ms

    def check_idle_timeout(self) -> bool:
        """Whether the idle timeout has just fired: no speech for `idle_timeout_ms` after the last reply finished
        playing. The server then commits the silence (GA `input_audio_buffer.timeout_triggered`); the caller asks
        the model to prompt the user."""
        phase = self._phase
        detection = self._config.turn_detection
        if not isinstance(phase, _Listening) or phase.idle_deadline_ms is None:
            return False
        deadline = phase.idle_deadline_ms
        if self._buffer.clock_ms < deadline:
            return False
        phase.idle_deadline_ms = None
        if not isinstance(detection, ServerVadConfig) or not detection.idle_timeout_ms:
            return False
        start_ms = deadline - detection.idle_timeout_ms  # when the last reply finished playing
        end_ms = self._buffer.clock_ms
        self._outbox.emit(
            ServerEvent.INPUT_AUDIO_BUFFER_TIMEOUT_TRIGGERED,
            audio_start_ms=int(start_ms),
            audio_end_ms=int(end_ms),
            item_id=self._item_id,
        )
        self._commit(self._buffer.take(start_ms, end_ms))
        return True

    # ---- turn detection (reported by the pipeline) -----------------------------------------------------------

    def on_audio_analysed(self, position_ms: float) -> None:
        """The VAD has analysed the audio up to `position_ms`: while nobody speaks, older audio can go."""
        detection = self._config.turn_detection
        if detection is not None and isinstance(self._phase, _Listening):
            padding = detection.prefix_padding_ms if isinstance(detection, ServerVadConfig) else 0
            self._buffer.forget_before(padding, position_ms)

    def on_speech_started(self, onset_ms: float) -> bool:
        """The VAD heard speech begin at `onset_ms` (ms of audio received). Returns whether a turn began."""
        detection = self._config.turn_detection
        if detection is None or isinstance(self._phase, _Speaking):
            return False
        padding = detection.prefix_padding_ms if isinstance(detection, ServerVadConfig) else 0
        start_ms = max(self._buffer.start_ms, onset_ms - padding)
        self._phase = _Speaking(start_ms)
        self._outbox.emit(
            ServerEvent.INPUT_AUDIO_BUFFER_SPEECH_STARTED, audio_start_ms=int(start_ms), item_id=self._item_id
        )
        return True

    def on_speech_paused(self, speech_end_ms: float) -> None:
        """The speaker paused: transcribe the turn so far now, in case the pause is its end."""
        phase = self._phase
        if not isinstance(phase, _Speaking):
            return
        phase.speculation = _Speculation(new_id("stt"), speech_end_ms)
        audio = self._buffer.peek(phase.start_ms, speech_end_ms + _SPECULATION_TAIL_MS)
        self._outbox.command(self._transcribe(phase.speculation.request_id, audio))

    def on_speech_resumed(self) -> None:
        """The speaker went on after a pause: the speculation made at it is not the turn's transcript."""
        if isinstance(self._phase, _Speaking):
            self._phase.speculation = None

    def on_turn_likely_complete(self) -> None:
        """Semantic VAD: the turn model judged the turn likely (not surely) complete at the current pause."""
        speculation = self._speculation()
        if speculation is not None:
            speculation.likely_complete = True

    def speculative_turn(self) -> JsonDict | None:
        """The user item the turn in progress would become, transcribed, if it ended at the pause its finished
        speculation was made at; None without one (or if it failed). Under semantic VAD only once the turn model
        has judged that pause a likely end (every short pause is not worth a reply)."""
        speculation = self._speculation()
        if speculation is None or not speculation.done or speculation.transcript is None:
            return None
        if isinstance(self._config.turn_detection, SemanticVadConfig) and not speculation.likely_complete:
            return None
        return _user_item(self._item_id, speculation.transcript)

    def on_speech_stopped(self, end_ms: float, speech_end_ms: float | None = None) -> bool:
        """The VAD judged the turn over at `end_ms`: the turn is committed. Returns whether it was."""
        phase = self._phase
        if self._config.turn_detection is None or not isinstance(phase, _Speaking):
            return False
        self._phase = _Listening()
        end_ms = min(end_ms, self._buffer.clock_ms)
        self._outbox.emit(
            ServerEvent.INPUT_AUDIO_BUFFER_SPEECH_STOPPED, audio_end_ms=int(end_ms), item_id=self._item_id
        )
        speculation = phase.speculation
        if speculation is not None and speculation.speech_end_ms != speech_end_ms:
            speculation = None  # the speaker went on after that pause
        self._commit(self._buffer.take(phase.start_ms, end_ms), speculation)
        return True

    # ---- commits and transcription ---------------------------------------------------------------------------

    def _commit(self, audio: bytes, speculation: _Speculation | None = None) -> None:
        """Turns audio into a user item (a client commit, the end of a VAD turn, the idle timeout) and has it
        transcribed, or adopts the transcription of the turn already made at its last pause."""
        item_id, self._item_id = self._item_id, new_id("item")
        previous = self._conversation.last_id()
        self._outbox.emit(ServerEvent.INPUT_AUDIO_BUFFER_COMMITTED, previous_item_id=previous, item_id=item_id)
        item = _user_item(item_id, None)
        stored = StoredItem(item=item, audio=bytearray(audio), audio_format=self.format)
        previous = self._conversation.add(stored)
        self._outbox.item_added(previous, item)
        self._outbox.item_done(previous, item)
        self._conversation.limit_audio(self._max_retained_audio_ms)
        if speculation is None:
            self._transcribe_item(item_id, audio)
            return
        self._awaited.add(item_id)
        self._requests[speculation.request_id] = item_id
        for delta in speculation.deltas:
            self._item_delta(item_id, delta)
        if speculation.done:
            self._item_transcribed(speculation.request_id, speculation.transcript, speculation.failure)

    def _transcribe_item(self, item_id: str, audio: bytes) -> None:
        request_id = new_id("stt")
        self._awaited.add(item_id)
        self._requests[request_id] = item_id
        self._outbox.command(self._transcribe(request_id, audio))

    def _transcribe(self, request_id: str, audio: bytes) -> Transcribe:
        transcription = self._config.transcription
        return Transcribe(
            request_id,
            to_pipeline_pcm(audio, self.format),
            (transcription.language if transcription else None) or None,
            (transcription.prompt if transcription else None) or None,
            self._session_id,
        )

    def on_transcription_delta(self, request_id: str, delta: str) -> None:
        speculation = self._speculation()
        if speculation is not None and speculation.request_id == request_id:
            speculation.deltas.append(delta)
        elif request_id in self._requests:
            self._item_delta(self._requests[request_id], delta)

    def on_transcription_done(self, request_id: str, transcript: str | None, failure: ProviderFailure | None) -> bool:
        """A transcription finished (`transcript`) or failed (`failure`). Returns whether an item's transcript
        arrived (responses held back for it may go on)."""
        speculation = self._speculation()
        if speculation is not None and speculation.request_id == request_id:
            speculation.transcript, speculation.failure, speculation.done = transcript, failure, True
            return False  # kept until the turn ends (or dropped when the speaker goes on)
        return self._item_transcribed(request_id, transcript, failure)

    def _speculation(self) -> _Speculation | None:
        return self._phase.speculation if isinstance(self._phase, _Speaking) else None

    def _item_delta(self, item_id: str, delta: str) -> None:
        stored = self._conversation.get(item_id)
        if delta and stored is not None and self._sends_transcripts:
            index = stored.audio_part_index()
            self._outbox.emit(ServerEvent.INPUT_TRANSCRIPTION_DELTA, item_id=item_id, content_index=index, delta=delta)

    def _item_transcribed(self, request_id: str, transcript: str | None, failure: ProviderFailure | None) -> bool:
        item_id = self._requests.pop(request_id, None)
        if item_id is None or item_id not in self._awaited:
            return False  # a speculation the speaker talked past
        self._awaited.discard(item_id)
        stored = self._conversation.get(item_id)
        content_index = stored.audio_part_index() if stored is not None else 0
        if transcript is not None:
            if stored is not None:
                stored.item["content"][content_index]["transcript"] = transcript
            if self._sends_transcripts:
                seconds = stored.audio_ms / 1000 if stored is not None else 0.0
                self._outbox.emit(
                    ServerEvent.INPUT_TRANSCRIPTION_COMPLETED,
                    item_id=item_id,
                    content_index=content_index,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": round(seconds, 3)},
                )
        elif failure is not None and self._sends_transcripts:
            error = {"type": "transcription_error", "code": failure.code, "message": failure.message, "param": None}
            self._outbox.emit(
                ServerEvent.INPUT_TRANSCRIPTION_FAILED, item_id=item_id, content_index=content_index, error=error
            )
        return True

    @property
    def _sends_transcripts(self) -> bool:
        """Transcripts go to the client only when it asked for them; the LLM gets them either way."""
        return self._config.transcription is not None


def _user_item(item_id: str, transcript: str | None) -> JsonDict:
    """A user turn's item (its audio is kept apart, in `StoredItem.audio`)."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }
