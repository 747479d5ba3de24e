"""The output side of a session: its responses, their output items and content parts, and `response.done`.

A response's life (`ResponseState`):

* `HELD`: created (`response.created` was sent), but a user turn it answers is still being transcribed: the LLM
  must see what the user said, so the pipeline does not get it yet;
* `GENERATING`: handed to the pipeline (`RunResponse`), whose reports (`on_text`, `on_audio`, `on_tool_call`, …)
  become output items and deltas;
* `CALLING_TOOLS`: the LLM called tools of MCP servers, which the server runs itself (`CallMcpTool`); once every
  call has ended the LLM runs again on their results (`GENERATING`), in the same response;
* then it ends — `completed`, `incomplete` (token limit, content filter), `cancelled` (by the client, or by the user
  speaking over it) or `failed` (a provider) — with `response.done`, and is forgotten.

A response's output is a sequence of items: at most one assistant message open at a time (its one content part
streams text, or audio with its transcript), function calls whose arguments stream, MCP calls (their arguments
stream, then they run and end `completed` or `failed`) and MCP approval requests (a call that waits for the client's
`mcp_approval_response`; the next response runs it, or tells the model it was refused). Opening a new item closes the
open ones, and the end of the response closes whatever is still open, so every `*.added` has its `*.done`, in order.

The in-band response (one at a time, `conversation: "auto"`) writes its items into the conversation; out-of-band
responses (`conversation: "none"`) only report them.

A preemptive response (`PreemptionState`) is the reply a paused user turn would get, started on the turn's
speculative transcript while the VAD waits out the silence: the pipeline runs it like any response, but it is no
response yet — no event, id or item of it exists for the client, and what the pipeline reports of it is held here
(`GENERATING`, then `GENERATED` once the LLM's run is over, or `FAILED`). When the turn ends at that pause, the
response the server creates for it takes the preemptive run over if that run is exactly the request the response
would make now (same conversation, transcript, instructions, tools, settings): `response.created` goes out, then
what was held, in order, at once. Otherwise, or when anything changes meanwhile, it is discarded: the pipeline
cancels it and nothing of it is ever seen.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Literal, TypeAlias

from audio_utils import AudioFormat, OutputEncoder, encode_base64
from protocol import JsonDict, Modality, ProtocolError, ServerEvent, error_event, new_id
from session.commands import (
    AudioOutput,
    CallMcpTool,
    CancelResponse,
    EndAudio,
    EndPreemption,
    McpCallError,
    McpErrorKind,
    PlayAudio,
    PreemptionEnd,
    PreemptResponse,
    ProviderFailure,
    RunResponse,
    TruncationPolicy,
    Usage,
)
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
from session.mcp import McpBinding, McpTools, mcp_tools_of
from session.outbox import Outbox, snapshot
from wire.canonical import check_mcp_hosts
from wire.models import RetentionRatioTruncation

MAX_CONCURRENT_RESPONSES = 8  # keeps one misbehaving client from growing server memory without limit
MAX_MCP_ROUNDS = 8  # LLM runs of one response that may call MCP tools; the next one may not (no endless loops)

ResponseStatus: TypeAlias = Literal["completed", "incomplete", "cancelled", "failed"]
CancelReason: TypeAlias = Literal["client_cancelled", "turn_detected"]


class ResponseState(Enum):
    HELD = "held"
    GENERATING = "generating"
    CALLING_TOOLS = "calling_tools"


class PreemptionState(Enum):
    GENERATING = "generating"  # the pipeline is running it; its reports are held
    GENERATED = "generated"  # the LLM's run is over: everything it produced is held
    FAILED = "failed"  # a provider failed it: it cannot be adopted (a response runs afresh)


@dataclass
class _Preemption:
    run: RunResponse
    state: PreemptionState = PreemptionState.GENERATING
    held: list[Callable[[], None]] = field(default_factory=list)  # the pipeline's reports, replayed on adoption


class OutputKind(Enum):
    """What a tool call the LLM makes becomes: a function call the client runs, an MCP call the server runs, or an
    MCP approval request the client answers."""

    FUNCTION_CALL = "function_call"
    MCP_CALL = "mcp_call"
    MCP_APPROVAL = "mcp_approval_request"


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
    kind: OutputKind = OutputKind.FUNCTION_CALL
    binding: McpBinding | None = None


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
    tools: list[JsonDict]  # as the client gave them: function tools and MCP servers
    state: ResponseState = ResponseState.HELD
    output: list[JsonDict] = field(default_factory=list)
    message: _OpenMessage | None = None
    calls: dict[int, _OpenCall] = field(default_factory=dict)
    mcp: dict[str, McpBinding] = field(default_factory=dict)  # chat tool name → MCP tool, once released
    mcp_running: dict[str, _OpenCall] = field(default_factory=dict)  # MCP calls the pipeline is running, by item id
    mcp_ran: bool = False  # this LLM run called MCP tools: once they end, the LLM runs again
    llm_running: bool = False
    rounds: int = 0
    usage: Usage | None = None

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
        mcp: McpTools,
        mcp_allowed_hosts: tuple[str, ...] = (),
        audio_output: AudioOutput = AudioOutput.EVENTS,
    ) -> None:
        self._audio_output = audio_output
        self._session_id = session_id
        self._conversation = conversation
        self._outbox = outbox
        self._conversation_id = conversation_id
        self._llm_max_tokens = llm_max_tokens
        self._on_in_band_finished = on_in_band_finished
        self._mcp = mcp
        self._mcp_allowed_hosts = mcp_allowed_hosts
        self._responses: dict[str, _Response] = {}
        self._preemption: _Preemption | None = None

    @property
    def preemption_state(self) -> PreemptionState | None:
        return self._preemption.state if self._preemption is not None else None

    @property
    def active_ids(self) -> list[str]:
        return list(self._responses)

    @property
    def in_band_id(self) -> str | None:
        return next((response.id for response in self._responses.values() if response.in_band), None)

    def mcp_configs(self) -> list[JsonDict]:
        """The MCP tools the responses in progress were given."""
        return [tool for response in self._responses.values() for tool in mcp_tools_of(response.tools)]

    def has_open_item(self, item_id: str) -> bool:
        return any(
            (r.message is not None and r.message.stored.id == item_id)
            or any(call.item["id"] == item_id for call in [*r.calls.values(), *r.mcp_running.values()])
            for r in self._responses.values()
        )

    # ---- creating and cancelling -----------------------------------------------------------------------------

    def create(
        self,
        params: JsonDict,
        config: RealtimeConfig,
        *,
        event_id: str | None = None,
        temperature: float | None = None,
        answers_turn: Callable[[str | None], bool] | None = None,
    ) -> str:
        """Starts a response (client `response.create`, or the server after a turn). Returns its id.

        `answers_turn` (the server's response to a turn that just ended; it says which items are still being
        transcribed): a preemptive response started for that turn is adopted if it stands."""
        preemption, self._preemption = self._preemption, None
        try:
            response = self._build(params, config, event_id, temperature)
        except ProtocolError:
            self._end_preemption(preemption, PreemptionEnd.CLIENT_EVENT)
            raise
        if preemption is not None and answers_turn is not None and self._adopt(response, preemption, answers_turn):
            return response.id
        if preemption is not None and preemption.state is PreemptionState.FAILED:
            self._end_preemption(preemption, PreemptionEnd.FAILED)
        else:
            self._end_preemption(
                preemption, PreemptionEnd.CONTEXT_CHANGED if answers_turn else PreemptionEnd.CLIENT_EVENT
            )
        self._register(response)
        return response.id

    def _build(
        self, params: JsonDict, config: RealtimeConfig, event_id: str | None, temperature: float | None
    ) -> _Response:
        """The response `params` ask for, checked, not started yet."""
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
        if "tools" in params:
            check_mcp_hosts(tools, self._mcp_allowed_hosts, "response", event_id)
        tool_choice = params.get("tool_choice", as_wire(config.tool_choice))
        if isinstance(tool_choice, dict) and tool_choice["type"] == "function":
            if tool_choice["name"] not in {tool.get("name") for tool in tools if tool["type"] == "function"}:
                raise ProtocolError(
                    f"Tool choice '{tool_choice['name']}' does not name one of the tools.",
                    param="response.tool_choice.name",
                    event_id=event_id,
                )
        elif isinstance(tool_choice, dict) and tool_choice["server_label"] not in {
            tool["server_label"] for tool in mcp_tools_of(tools)
        }:
            raise ProtocolError(
                f"Tool choice names the MCP server '{tool_choice['server_label']}', which is not one of the tools.",
                param="response.tool_choice.server_label",
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
            tools=tools_for_chat([tool for tool in tools if tool["type"] == "function"]),
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
            tools=tools,
        )
        if "tools" in params:
            self._mcp.ensure_listed(tools)  # a response's own MCP servers are listed as a session's are
        return response

    def _register(self, response: _Response) -> None:
        self._responses[response.id] = response
        self._outbox.emit(ServerEvent.RESPONSE_CREATED, response=self._response_object(response, None, None))

    # ---- preemptive responses --------------------------------------------------------------------------------

    def preempt(
        self, config: RealtimeConfig, turn_item: JsonDict, is_transcribing: Callable[[str | None], bool]
    ) -> None:
        """A paused turn's speculative transcript is ready: the reply the server would make if the turn ended now
        (with `turn_item`, the turn as the conversation would have it) starts in the pipeline, held back here.
        Only when nothing else is in progress, and not with MCP tools (listing and approvals have effects)."""
        if self._preemption is not None or self._responses:
            return
        items = self._conversation.items()
        if any(is_transcribing(item.get("id")) for item in items):
            return
        try:
            response = self._build({}, config, None, None)
        except ProtocolError:
            return
        if mcp_tools_of(response.tools):
            return
        run, _ = self._released_run(response)
        run = _with_context(run, [*items, turn_item])
        self._preemption = _Preemption(run)
        self._outbox.command(PreemptResponse(run))

    def discard_preemption(self, end: PreemptionEnd) -> None:
        """The preemptive response (if any) cannot be the turn's reply any more: the pipeline drops it."""
        preemption, self._preemption = self._preemption, None
        self._end_preemption(preemption, end)

    def _end_preemption(self, preemption: _Preemption | None, end: PreemptionEnd) -> None:
        if preemption is not None:
            self._outbox.command(EndPreemption(preemption.run.response_id, end))

    def _adopt(
        self, response: _Response, preemption: _Preemption, is_transcribing: Callable[[str | None], bool]
    ) -> bool:
        """`response` takes the preemptive run over if that run is what the response would ask for now; what the
        pipeline reported of it goes out at once, after `response.created`."""
        if preemption.state is PreemptionState.FAILED or not response.in_band or mcp_tools_of(response.tools):
            return False
        items = self._conversation.items()
        if any(is_transcribing(item.get("id")) for item in items):
            return False
        run, bindings = self._released_run(response)
        run = _with_context(dataclasses.replace(run, response_id=preemption.run.response_id), items)
        if run != preemption.run:
            return False
        response.id, response.run, response.mcp = run.response_id, preemption.run, bindings
        response.state = ResponseState.GENERATING
        response.llm_running = True
        self._register(response)
        self._outbox.command(EndPreemption(response.id, PreemptionEnd.ADOPTED))
        for report in preemption.held:
            report()
        return True

    def _held(self, response_id: str, report: Callable[[], None]) -> bool:
        """Whether `response_id` is the preemptive response's: then its report waits for the adoption."""
        preemption = self._preemption
        if preemption is None or preemption.run.response_id != response_id:
            return False
        if preemption.state is PreemptionState.GENERATING:
            preemption.held.append(report)
        return True

    def release_ready(self, is_transcribing: Callable[[str | None], bool]) -> None:
        """Hands the pipeline every held response whose context is ready: a user turn still being transcribed holds
        back the responses that include it."""
        for response in self._responses.values():
            if response.state is not ResponseState.HELD:
                continue
            items = response.input_items if response.input_items is not None else self._conversation.items()
            if any(is_transcribing(item.get("id")) for item in items) or self._mcp.is_listing(response.tools):
                continue
            response.run, response.mcp = self._released_run(response)
            if response.in_band and self._run_approved(response):
                continue  # the approved MCP calls run first; the LLM runs on their results
            self._generate(response)

    def _released_run(self, response: _Response) -> tuple[RunResponse, dict[str, McpBinding]]:
        """The response's run as it is released: its instructions, and the MCP tools listed by now."""
        run = response.run
        mcp_chat, bindings = self._mcp.chat_tools(response.tools)
        system = [{"role": "system", "content": response.instructions}] if response.instructions else []
        choice = self._mcp_choice(run.tool_choice, bindings)
        return dataclasses.replace(run, system=system, tools=[*run.tools, *mcp_chat], tool_choice=choice), bindings

    def _generate(self, response: _Response) -> None:
        """Hands the response to the pipeline: the LLM runs on the conversation as it is now."""
        items = response.input_items if response.input_items is not None else self._conversation.items()
        if response.input_items is not None:
            items = [*items, *response.output]  # an out-of-band response sees its own MCP calls
        response.state = ResponseState.GENERATING
        response.llm_running = True
        response.mcp_ran = False
        run = response.run
        if response.rounds:
            # A forced tool call was made already; and past the last round no more MCP calls are offered.
            choice: str | JsonDict = "auto" if response.rounds < MAX_MCP_ROUNDS else "none"
            run = response.run = dataclasses.replace(run, tool_choice=choice)
        response.run = run = _with_context(run, items)
        self._outbox.command(run)

    @staticmethod
    def _mcp_choice(choice: str | JsonDict, bindings: dict[str, McpBinding]) -> str | JsonDict:
        """A `tool_choice` of type `mcp` in chat terms: its one tool, or any tool (of that server, by the model's
        choice among those offered)."""
        if not isinstance(choice, dict) or choice.get("type") != "mcp":
            return choice
        for name, binding in bindings.items():
            if binding.server.label == choice["server_label"] and binding.tool == choice.get("name"):
                return {"type": "function", "function": {"name": name}}
        return "required" if any(b.server.label == choice["server_label"] for b in bindings.values()) else "auto"

    def _run_approved(self, response: _Response) -> bool:
        """Starts the MCP calls the client approved since the last response; False if there are none."""
        approved = self._mcp.take_approved()
        for approval_id, binding, arguments in approved:
            call = self._open_mcp_call(response, binding, approval_request_id=approval_id)
            call.arguments.append(arguments)
            self._emit_mcp_arguments(response, call, arguments)
            self._close_call(response, call, "completed")  # its arguments are done: it runs
        if not approved:
            return False
        response.state = ResponseState.CALLING_TOOLS
        self._continue_if_idle(response)
        return True

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
        self.discard_preemption(PreemptionEnd.SESSION_ENDED)
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
        if self._held(response_id, partial(self.on_message_started, response_id)):
            return
        response = self._responses.get(response_id)
        if response is not None:
            self._ensure_message(response)

    def on_reply_text(self, response_id: str, text: str) -> None:
        """Text of the reply: written text for a text response, the transcript of what is about to be spoken for an
        audio response."""
        if self._held(response_id, partial(self.on_reply_text, response_id, text)):
            return
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
        if self._held(response_id, partial(self.on_audio, response_id, pcm)):
            return
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
        if self._audio_output is AudioOutput.TRACK:
            # The track plays it in real time; the API sends no audio deltas over WebRTC.
            self._outbox.command(PlayAudio(response.id, message.stored.id, encoded, message.stored.audio_format))
            return
        self._outbox.emit(
            ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA, **response.part_ids(message), delta=encode_base64(encoded)
        )

    def on_tool_call(self, response_id: str, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        """A piece of a tool call the LLM is making: the first piece of each call names it."""
        if self._held(response_id, partial(self.on_tool_call, response_id, index, call_id, name, arguments)):
            return
        response = self._responses.get(response_id)
        if response is None:
            return
        call = response.calls.get(index)
        if call is None:
            self._close_message(response, "completed")
            self._close_calls(response, "completed")
            binding = response.mcp.get(name or "")
            if binding is not None and binding.approval:
                item = _new_mcp_item(
                    "mcp_approval_request", server_label=binding.server.label, name=binding.tool, arguments=""
                )
                call = _OpenCall(item, len(response.output), kind=OutputKind.MCP_APPROVAL, binding=binding)
                response.output.append(item)
                self._item_started(response, item, call.output_index)
            elif binding is not None:
                call = self._open_mcp_call(response, binding)
            else:
                item = _new_item("function_call", name=name or "", call_id=call_id or new_id("call"), arguments="")
                call = _OpenCall(item=item, output_index=len(response.output))
                response.output.append(item)
                self._item_started(response, item, call.output_index)
            response.calls[index] = call
        elif name and call.kind is OutputKind.FUNCTION_CALL and not call.item["name"]:
            call.item["name"] = name
        if arguments and call.kind is not OutputKind.FUNCTION_CALL:
            call.arguments.append(arguments)
            if call.kind is OutputKind.MCP_CALL:
                self._emit_mcp_arguments(response, call, arguments)
        elif arguments:
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
        """The pipeline finished the LLM's run (all text, audio and tool calls delivered): the response ends, or
        goes on once the MCP calls it made have ended."""
        if self._held(response_id, partial(self.on_done, response_id, usage, finish_reason)):
            if self._preemption is not None:
                self._preemption.state = PreemptionState.GENERATED
            return
        response = self._responses.get(response_id)
        if response is None or response.state is ResponseState.CALLING_TOOLS:
            return  # not the LLM's: its MCP calls are running
        response.llm_running = False
        response.usage = _added(response.usage, usage)
        if response.message is not None:
            self._send_audio(response, response.message, response.encoder.flush())
        if finish_reason == "length":
            self._finish(response, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"})
        elif finish_reason == "content_filter":
            self._finish(response, "incomplete", {"type": "incomplete", "reason": "content_filter"})
        else:
            self._close_message(response, "completed")
            self._close_calls(response, "completed")  # MCP calls whose arguments are complete start here
            if response.mcp_ran:
                response.state = ResponseState.CALLING_TOOLS
                self._continue_if_idle(response)
            else:
                self._finish(response, "completed", None)

    def on_mcp_call_done(self, item_id: str, output: str | None, error: McpCallError | None) -> None:
        """The pipeline ran an MCP call: its item ends `completed` (with the output) or `failed` (with the error)."""
        response = next((r for r in self._responses.values() if item_id in r.mcp_running), None)
        if response is None:
            return
        call = response.mcp_running.pop(item_id)
        self._end_mcp_call(response, call, output, error)
        self._continue_if_idle(response)

    def _continue_if_idle(self, response: _Response) -> None:
        """Once the LLM's run is over and its MCP calls have all ended, the LLM runs again on their results."""
        if response.state is ResponseState.CALLING_TOOLS and not response.llm_running and not response.mcp_running:
            response.rounds += 1
            self._generate(response)

    def on_failed(self, response_id: str, failure: ProviderFailure) -> None:
        """A provider failed while generating the response: an `error` event, then a failed `response.done`."""
        if self._held(response_id, partial(self.on_failed, response_id, failure)):
            if self._preemption is not None:
                self._preemption.state, self._preemption.held = PreemptionState.FAILED, []
            return
        response = self._responses.get(response_id)
        if response is None:
            return
        response.llm_running = False
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
        if call.kind is OutputKind.MCP_CALL:
            call.item["arguments"] = "".join(call.arguments)
            self._outbox.emit(
                ServerEvent.RESPONSE_MCP_CALL_ARGUMENTS_DONE,
                response_id=response.id,
                item_id=call.item["id"],
                output_index=call.output_index,
                arguments=call.item["arguments"],
            )
            if status == "completed":
                self._start_mcp_call(response, call)
            else:
                self._end_mcp_call(response, call, None, _NOT_RUN)
            return
        if call.kind is OutputKind.MCP_APPROVAL:
            call.item["arguments"] = "".join(call.arguments)
            if call.binding is not None and status == "completed":
                self._mcp.request_approval(call.item["id"], call.binding, call.item["arguments"])
            self._item_finished(response, call.item, call.output_index)
            return
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

    # ---- MCP calls -------------------------------------------------------------------------------------------

    def _open_mcp_call(
        self, response: _Response, binding: McpBinding, approval_request_id: str | None = None
    ) -> _OpenCall:
        item = _new_mcp_item(
            "mcp_call",
            server_label=binding.server.label,
            name=binding.tool,
            arguments="",
            approval_request_id=approval_request_id,
            output=None,
            error=None,
        )
        call = _OpenCall(item, len(response.output), kind=OutputKind.MCP_CALL, binding=binding)
        response.output.append(item)
        self._item_started(response, item, call.output_index)
        return call

    def _emit_mcp_arguments(self, response: _Response, call: _OpenCall, delta: str) -> None:
        self._outbox.emit(
            ServerEvent.RESPONSE_MCP_CALL_ARGUMENTS_DELTA,
            response_id=response.id,
            item_id=call.item["id"],
            output_index=call.output_index,
            delta=delta,
        )

    def _start_mcp_call(self, response: _Response, call: _OpenCall) -> None:
        """The call's arguments are complete: the pipeline runs it (unless they are not a JSON object)."""
        item, binding = call.item, call.binding
        item["arguments"] = "".join(call.arguments)
        assert binding is not None
        response.mcp_ran = True
        self._outbox.emit(ServerEvent.RESPONSE_MCP_CALL_IN_PROGRESS, item_id=item["id"], output_index=call.output_index)
        try:
            arguments = json.loads(item["arguments"] or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            error = McpCallError(McpErrorKind.TOOL_EXECUTION, "The model's arguments are not a JSON object.")
            self._end_mcp_call(response, call, None, error)
            return
        response.mcp_running[item["id"]] = call
        self._outbox.command(CallMcpTool(item["id"], response.id, binding.server, binding.tool, arguments))

    def _end_mcp_call(
        self, response: _Response, call: _OpenCall, output: str | None, error: McpCallError | None
    ) -> None:
        item = call.item
        ids = {"item_id": item["id"], "output_index": call.output_index}
        if error is None:
            item["output"] = output or ""
            self._outbox.emit(ServerEvent.RESPONSE_MCP_CALL_COMPLETED, **ids)
        else:
            item["error"] = error.to_wire()
            self._outbox.emit(ServerEvent.RESPONSE_MCP_CALL_FAILED, **ids)
        self._item_finished(response, item, call.output_index)

    # ---- the end ---------------------------------------------------------------------------------------------

    def _finish(
        self, response: _Response, status: ResponseStatus, details: JsonDict | None, usage: Usage | None = None
    ) -> None:
        item_status = "completed" if status == "completed" else "incomplete"
        self._close_message(response, item_status)
        self._close_calls(response, item_status)
        running, response.mcp_running = response.mcp_running, {}
        if running and status != "cancelled":  # `cancel` has told the pipeline already
            self._outbox.command(CancelResponse(response.id))
        for call in running.values():
            self._end_mcp_call(response, call, None, _CANCELLED)
        del self._responses[response.id]
        if self._audio_output is AudioOutput.TRACK and response.modality == "audio":
            self._outbox.command(EndAudio(response.id))  # the track ignores it if it played nothing of it
        done = self._response_object(response, status, details, _added(response.usage, usage))
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


def _new_mcp_item(item_type: str, **fields: object) -> JsonDict:
    """An MCP output item as it opens: MCP items have no `status` (their events tell how they are doing)."""
    return {"id": new_id("item"), "type": item_type, **fields}


_NOT_RUN = McpCallError(McpErrorKind.TOOL_EXECUTION, "The response ended before the call could run.")
_CANCELLED = McpCallError(McpErrorKind.TOOL_EXECUTION, "The call was cancelled with its response.")


def _added(total: Usage | None, usage: Usage | None) -> Usage | None:
    """Token usage over the LLM runs of one response."""
    if total is None or usage is None:
        return usage or total
    return Usage(
        total.input_tokens + usage.input_tokens,
        total.output_tokens + usage.output_tokens,
        total.cached_tokens + usage.cached_tokens,
        total.image_tokens + usage.image_tokens,
    )


def truncation_policy(truncation: Literal["auto", "disabled"] | RetentionRatioTruncation) -> TruncationPolicy:
    """The session's `truncation` as the LLM stage applies it."""
    if isinstance(truncation, RetentionRatioTruncation):
        limits = truncation.token_limits
        limit = limits.post_instructions if limits is not None else None
        return TruncationPolicy("retention_ratio", truncation.retention_ratio, limit)
    return TruncationPolicy(truncation)


def _with_context(run: RunResponse, items: list[JsonDict]) -> RunResponse:
    """`run` on the conversation `items` (what the LLM sees of them)."""
    has_images = any(has_image(item) for item in items if item["type"] == "message")
    return dataclasses.replace(run, units=chat_units(items), has_images=has_images)
