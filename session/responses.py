"""The output side of a session: its responses, their output items and content parts, and `response.done`.

A response's life (`ResponseState`):

* `HELD`: created (`response.created` was sent), but a user turn it answers is still being transcribed: the LLM
  must see what the user said, so the pipeline does not get it yet;
* `GENERATING`: handed to the pipeline (`RunResponse`), whose reports (`on_text`, `on_audio`, `on_tool_call`, …)
  become output items and deltas;
* then it ends — `completed`, `incomplete` (token limit, content filter), `cancelled` (by the client, or by the user
  speaking over it) or `failed` (a provider) — with `response.done`, and is forgotten.

A response's output is a sequence of items: at most one assistant message open at a time (its one content part
streams text, or audio with its transcript) and function calls whose arguments stream. Opening a new item closes the
open ones, and the end of the response closes whatever is still open, so every `*.added` has its `*.done`, in order.

The in-band response (one at a time, `conversation: "auto"`) writes its items into the conversation; out-of-band
responses (`conversation: "none"`) only report them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, TypeAlias

from audio_utils import AudioFormat, OutputEncoder, encode_base64
from protocol import JsonDict, Modality, ProtocolError, ServerEvent, error_event, new_id
from session.commands import CancelResponse, ProviderFailure, RunResponse, TruncationPolicy, Usage
from session.configuration import RealtimeConfig, as_wire
from session.conversation import (
    Conversation,
    SpokenSegment,
    StoredItem,
    chat_units,
    has_image,
    tool_choice_for_chat,
    tools_for_chat,
)
from session.outbox import Outbox, snapshot
from wire.models import RetentionRatioTruncation

MAX_CONCURRENT_RESPONSES = 8  # keeps one misbehaving client from growing server memory without limit

ResponseStatus: TypeAlias = Literal["completed", "incomplete", "cancelled", "failed"]
CancelReason: TypeAlias = Literal["client_cancelled", "turn_detected"]


class ResponseState(Enum):
    HELD = "held"
    GENERATING = "generating"


@dataclass
class _OpenMessage:
    stored: StoredItem
    output_index: int
    text: list[str] = field(default_factory=list)
    truncated: bool = False  # the client cut the item to what was heard: later audio is not kept in it


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
    run: RunResponse  # what the pipeline gets; its messages are filled in when it is released
    instructions: str
    input_items: list[JsonDict] | None  # explicit `input`, else the conversation at the time it runs
    state: ResponseState = ResponseState.HELD
    output: list[JsonDict] = field(default_factory=list)
    message: _OpenMessage | None = None
    calls: dict[int, _OpenCall] = field(default_factory=dict)

    def part_ids(self, message: _OpenMessage) -> JsonDict:
        return {
            "response_id": self.id,
            "item_id": message.stored.id,
            "output_index": message.output_index,
            "content_index": 0,
        }


@dataclass(frozen=True)
class FinishedResponse:
    """What the session does after an in-band response ends: the idle timer counts from the end of its audio."""

    response_id: str
    audio_ms: float


class ResponseStream:
    def __init__(
        self,
        session_id: str,
        conversation: Conversation,
        outbox: Outbox,
        conversation_id: str,
        llm_max_tokens: int,
        on_in_band_finished: Callable[[FinishedResponse], None],
    ) -> None:
        self._session_id = session_id
        self._conversation = conversation
        self._outbox = outbox
        self._conversation_id = conversation_id
        self._llm_max_tokens = llm_max_tokens
        self._on_in_band_finished = on_in_band_finished
        self._responses: dict[str, _Response] = {}

    @property
    def active_ids(self) -> list[str]:
        return list(self._responses)

    @property
    def in_band_id(self) -> str | None:
        return next((response.id for response in self._responses.values() if response.in_band), None)

    def has_open_item(self, item_id: str) -> bool:
        return any(r.message is not None and r.message.stored.id == item_id for r in self._responses.values())

    # ---- creating and cancelling -----------------------------------------------------------------------------

    def create(
        self,
        params: JsonDict,
        config: RealtimeConfig,
        *,
        event_id: str | None = None,
        temperature: float | None = None,
    ) -> str:
        """Starts a response (client `response.create`, or the server after a turn). Returns its id."""
        in_band = params.get("conversation", "auto") != "none"
        if in_band and self.in_band_id is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.in_band_id}. Wait until the "
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
        tools = params["tools"] if "tools" in params else [as_wire(tool) for tool in config.tools]
        tool_choice = params.get("tool_choice", as_wire(config.tool_choice))
        if isinstance(tool_choice, dict) and tool_choice["name"] not in {tool["name"] for tool in tools}:
            raise ProtocolError(
                f"Tool choice '{tool_choice['name']}' does not name one of the tools.",
                param="response.tool_choice.name",
                event_id=event_id,
            )
        input_items = self._resolve_input(params["input"], event_id) if "input" in params else None
        audio_output = params.get("audio", {}).get("output", {})
        session_output = config.audio.output
        audio_format = audio_output.get("format") or as_wire(session_output.format)
        voice = audio_output.get("voice") or as_wire(session_output.voice)
        modality: Modality = (params.get("output_modalities") or config.output_modalities)[0]
        max_output_tokens = params.get("max_output_tokens", config.max_output_tokens)
        run = RunResponse(
            response_id=new_id("resp"),
            system=[],
            units=[],
            tools=tools_for_chat(tools),
            tool_choice=tool_choice_for_chat(tool_choice),
            max_tokens=self._llm_max_tokens if max_output_tokens == "inf" else int(max_output_tokens),
            temperature=temperature if temperature is not None else config.temperature,
            modality=modality,
            voice=voice["id"] if isinstance(voice, dict) else voice,
            speed=session_output.speed,
            session_id=self._session_id,
            truncation=truncation_policy(config.truncation),
            in_band=in_band,
        )
        response = _Response(
            id=run.response_id,
            in_band=in_band,
            modality=modality,
            audio_format=dict(audio_format),
            voice=voice,
            max_output_tokens=max_output_tokens,
            metadata=params.get("metadata"),
            encoder=OutputEncoder(AudioFormat.from_wire(audio_format)),
            run=run,
            instructions=params.get("instructions", config.instructions),
            input_items=input_items,
        )
        self._responses[response.id] = response
        self._outbox.emit(ServerEvent.RESPONSE_CREATED, response=self._response_object(response, None, None))
        return response.id

    def release_ready(self, is_transcribing: Callable[[str | None], bool]) -> None:
        """Hands the pipeline every held response whose context is ready: a user turn still being transcribed holds
        back the responses that include it."""
        for response in self._responses.values():
            if response.state is not ResponseState.HELD:
                continue
            items = response.input_items if response.input_items is not None else self._conversation.items()
            if any(is_transcribing(item.get("id")) for item in items):
                continue
            response.state = ResponseState.GENERATING
            response.run.system = (
                [{"role": "system", "content": response.instructions}] if response.instructions else []
            )
            response.run.units = chat_units(items)
            response.run.has_images = any(has_image(item) for item in items if item["type"] == "message")
            self._outbox.command(response.run)

    def _resolve_input(self, entries: list[JsonDict], event_id: str | None) -> list[JsonDict]:
        items = []
        for index, entry in enumerate(entries):
            if entry.get("type") == "item_reference":
                stored = self._conversation.get(entry["id"])
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

    def cancel_request(self, response_id: str | None, event_id: str | None) -> None:
        """`response.cancel`: the named response, else the in-band one, else the latest."""
        if response_id is not None:
            if response_id not in self._responses:
                raise ProtocolError(
                    f"Cancellation failed: no active response found with id '{response_id}'.",
                    code="response_cancel_not_active",
                    param="response_id",
                    event_id=event_id,
                )
        elif self.in_band_id is not None:
            response_id = self.in_band_id
        elif self._responses:
            response_id = next(reversed(self._responses))
        else:
            raise ProtocolError(
                "Cancellation failed: no active response found", code="response_cancel_not_active", event_id=event_id
            )
        self.cancel(response_id, "client_cancelled")

    def cancel(self, response_id: str, reason: CancelReason) -> None:
        """Ends a response as cancelled (client request, or the user speaking over it)."""
        response = self._responses.get(response_id)
        if response is None:
            return
        self._outbox.command(CancelResponse(response_id))
        self._finish(response, "cancelled", {"type": "cancelled", "reason": reason})

    def fail_all(self, failure: ProviderFailure) -> None:
        """Ends every response in progress as failed (the server is shutting down, say)."""
        for response_id in list(self._responses):
            self._outbox.command(CancelResponse(response_id))
            self.on_failed(response_id, failure)

    def mark_truncated(self, stored: StoredItem) -> None:
        """The client truncated `stored`: if a response is still writing it, its later audio stays out of it."""
        for response in self._responses.values():
            if response.message is not None and response.message.stored is stored:
                response.message.truncated = True

    # ---- what the pipeline reports ---------------------------------------------------------------------------

    def on_message_started(self, response_id: str) -> None:
        """The LLM began a text reply: the assistant message item opens (before its audio is ready)."""
        response = self._responses.get(response_id)
        if response is not None:
            self._ensure_message(response)

    def on_reply_text(self, response_id: str, text: str) -> None:
        """Text of the reply: written text for a text response, the transcript of what is about to be spoken for an
        audio response."""
        response = self._responses.get(response_id)
        if response is None or not text:
            return
        message = self._ensure_message(response)
        message.text.append(text)
        part = message.stored.item["content"][0]
        if response.modality == "text":
            part["text"] += text
            self._outbox.emit(ServerEvent.RESPONSE_OUTPUT_TEXT_DELTA, **response.part_ids(message), delta=text)
            return
        if not message.truncated:
            message.stored.spoken.append(SpokenSegment(message.stored.audio_ms, text))
            part["transcript"] += text
        self._outbox.emit(ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA, **response.part_ids(message), delta=text)

    def on_audio(self, response_id: str, pcm: bytes) -> None:
        """PCM16 mono 24 kHz audio of an audio-modality response."""
        response = self._responses.get(response_id)
        if response is None or not pcm or response.modality != "audio":
            return
        message = self._ensure_message(response)
        self._send_audio(response, message, response.encoder.encode(pcm))

    def _send_audio(self, response: _Response, message: _OpenMessage, encoded: bytes) -> None:
        if not encoded:
            return
        if not message.truncated:
            message.stored.audio.extend(encoded)
        self._outbox.emit(
            ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA, **response.part_ids(message), delta=encode_base64(encoded)
        )

    def on_tool_call(self, response_id: str, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        """A piece of a tool call the LLM is making: the first piece of each call names it."""
        response = self._responses.get(response_id)
        if response is None:
            return
        call = response.calls.get(index)
        if call is None:
            self._close_message(response, "completed")
            self._close_calls(response, "completed")
            item = _new_item("function_call", name=name or "", call_id=call_id or new_id("call"), arguments="")
            call = _OpenCall(item=item, output_index=len(response.output))
            response.calls[index] = call
            response.output.append(item)
            self._item_started(response, item, call.output_index)
        elif name and not call.item["name"]:
            call.item["name"] = name
        if arguments:
            call.arguments.append(arguments)
            self._outbox.emit(
                ServerEvent.RESPONSE_FUNCTION_CALL_ARGUMENTS_DELTA,
                response_id=response.id,
                item_id=call.item["id"],
                output_index=call.output_index,
                call_id=call.item["call_id"],
                delta=arguments,
            )

    def on_done(self, response_id: str, usage: Usage | None, finish_reason: str | None) -> None:
        """The pipeline finished the response (all text, audio and tool calls delivered)."""
        response = self._responses.get(response_id)
        if response is None:
            return
        if response.message is not None:
            self._send_audio(response, response.message, response.encoder.flush())
        if finish_reason == "length":
            self._finish(response, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, usage)
        elif finish_reason == "content_filter":
            self._finish(response, "incomplete", {"type": "incomplete", "reason": "content_filter"}, usage)
        else:
            self._finish(response, "completed", None, usage)

    def on_failed(self, response_id: str, failure: ProviderFailure) -> None:
        """A provider failed while generating the response: an `error` event, then a failed `response.done`."""
        response = self._responses.get(response_id)
        if response is None:
            return
        self._outbox.emit_event(error_event(failure.error_type, failure.code, failure.message))
        error = {"type": failure.error_type, "code": failure.code, "message": failure.message}
        self._finish(response, "failed", {"type": "failed", "error": error})

    # ---- output items ----------------------------------------------------------------------------------------

    def _ensure_message(self, response: _Response) -> _OpenMessage:
        if response.message is not None:
            return response.message
        self._close_calls(response, "completed")
        item = _new_item("message", role="assistant", content=[])
        audio_format = AudioFormat.from_wire(response.audio_format)
        message = _OpenMessage(StoredItem(item=item, audio_format=audio_format), output_index=len(response.output))
        response.message = message
        response.output.append(item)
        self._item_started(response, item, message.output_index)
        part = {"type": "audio", "transcript": ""} if response.modality == "audio" else {"type": "text", "text": ""}
        self._outbox.emit(ServerEvent.RESPONSE_CONTENT_PART_ADDED, **response.part_ids(message), part=part)
        # From here on the stored item shows the reply so far (retrieve and truncate see it mid-response).
        if response.modality == "audio":
            item["content"] = [{"type": "output_audio", "transcript": ""}]
        else:
            item["content"] = [{"type": "output_text", "text": ""}]
        return message

    def _item_started(self, response: _Response, item: JsonDict, output_index: int) -> None:
        self._outbox.emit(
            ServerEvent.RESPONSE_OUTPUT_ITEM_ADDED,
            response_id=response.id,
            output_index=output_index,
            item=snapshot(item),
        )
        if response.in_band:
            stored = response.message.stored if item["type"] == "message" and response.message else StoredItem(item)
            self._outbox.item_added(self._conversation.add(stored), item)

    def _item_finished(self, response: _Response, item: JsonDict, output_index: int) -> None:
        self._outbox.emit(
            ServerEvent.RESPONSE_OUTPUT_ITEM_DONE,
            response_id=response.id,
            output_index=output_index,
            item=snapshot(item),
        )
        if response.in_band and item["id"] in self._conversation:
            self._outbox.item_done(self._conversation.previous_id(item["id"]), item)

    def _close_message(self, response: _Response, status: str) -> None:
        message = response.message
        if message is None:
            return
        response.message = None
        item = message.stored.item
        ids = response.part_ids(message)
        full_text = "".join(message.text)
        if response.modality == "audio":
            # After a truncation the stored transcript is what the user heard, not all that was generated.
            item_transcript = item["content"][0]["transcript"] if message.truncated else full_text
            self._outbox.emit(ServerEvent.RESPONSE_OUTPUT_AUDIO_DONE, **ids)
            self._outbox.emit(ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE, **ids, transcript=full_text)
            part = {"type": "audio", "transcript": full_text}
            self._outbox.emit(ServerEvent.RESPONSE_CONTENT_PART_DONE, **ids, part=part)
            item["content"] = [{"type": "output_audio", "transcript": item_transcript}]
        else:
            self._outbox.emit(ServerEvent.RESPONSE_OUTPUT_TEXT_DONE, **ids, text=full_text)
            self._outbox.emit(ServerEvent.RESPONSE_CONTENT_PART_DONE, **ids, part={"type": "text", "text": full_text})
            item["content"] = [{"type": "output_text", "text": full_text}]
        item["status"] = status
        self._item_finished(response, item, message.output_index)

    def _close_calls(self, response: _Response, status: str) -> None:
        calls, response.calls = response.calls, {}
        for call in calls.values():
            self._close_call(response, call, status)

    def _close_call(self, response: _Response, call: _OpenCall, status: str) -> None:
        item = call.item
        item["arguments"] = "".join(call.arguments)
        item["status"] = status
        self._outbox.emit(
            ServerEvent.RESPONSE_FUNCTION_CALL_ARGUMENTS_DONE,
            response_id=response.id,
            item_id=item["id"],
            output_index=call.output_index,
            call_id=item["call_id"],
            name=item["name"],
            arguments=item["arguments"],
        )
        self._item_finished(response, item, call.output_index)

    # ---- the end ---------------------------------------------------------------------------------------------

    def _finish(
        self, response: _Response, status: ResponseStatus, details: JsonDict | None, usage: Usage | None = None
    ) -> None:
        item_status = "completed" if status == "completed" else "incomplete"
        self._close_message(response, item_status)
        self._close_calls(response, item_status)
        del self._responses[response.id]
        done = self._response_object(response, status, details, usage)
        self._outbox.emit(ServerEvent.RESPONSE_DONE, response=done)
        if response.in_band:
            audio_ms = sum(
                stored.audio_ms
                for item in response.output
                if item["type"] == "message" and (stored := self._conversation.get(item["id"])) is not None
            )
            self._on_in_band_finished(FinishedResponse(response.id, audio_ms))

    def _response_object(
        self, response: _Response, status: ResponseStatus | None, details: JsonDict | None, usage: Usage | None = None
    ) -> JsonDict:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status or "in_progress",
            "status_details": details,
            "output": [snapshot(item) for item in response.output],
            "conversation_id": self._conversation_id if response.in_band else None,
            "output_modalities": [response.modality],
            "max_output_tokens": response.max_output_tokens,
            "audio": {"output": {"format": response.audio_format, "voice": response.voice}},
            "usage": usage.to_wire() if usage else None,
            "metadata": response.metadata,
        }


def _new_item(item_type: str, **fields: object) -> JsonDict:
    """An output item as it opens (`in_progress`)."""
    return {"id": new_id("item"), "type": item_type, "object": "realtime.item", "status": "in_progress", **fields}


def truncation_policy(truncation: Literal["auto", "disabled"] | RetentionRatioTruncation) -> TruncationPolicy:
    """The session's `truncation` as the LLM stage applies it."""
    if isinstance(truncation, RetentionRatioTruncation):
        limits = truncation.token_limits
        limit = limits.post_instructions if limits is not None else None
        return TruncationPolicy("retention_ratio", truncation.retention_ratio, limit)
    return TruncationPolicy(truncation)
