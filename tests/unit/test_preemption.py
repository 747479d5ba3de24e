"""Preemptive responses in the session core, with plain function calls: a paused turn's reply starts on its
speculative transcript, is held back, and is either adopted when the turn ends there or discarded unseen."""

from __future__ import annotations

import base64
import json
from typing import Any

from realtime_session import RealtimeSession
from session.commands import (
    Command,
    EndPreemption,
    PreemptionEnd,
    PreemptResponse,
    ProviderFailure,
    RunResponse,
    Transcribe,
    Usage,
)
from session.responses import PreemptionState
from tests.support.realtime_client import validate_server_event
from tests.support.session_core import defaults

SPOKEN = "What is the weather like?"


def make_session(preemptive: bool = True, **session: Any) -> RealtimeSession:
    rt = RealtimeSession(defaults(preemptive_responses=preemptive), "ga")
    rt.open()
    update = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}, **session}
    rt.receive(json.dumps({"type": "session.update", "session": update}))
    audio = base64.b64encode(b"\x00\x00" * 24_000).decode()
    rt.receive(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
    rt.take_events()
    rt.take_commands()
    return rt


def drain(rt: RealtimeSession) -> list[dict[str, Any]]:
    events = rt.take_events()
    for event in events:
        validate_server_event(event, "ga")
    return events


def pause(rt: RealtimeSession, at_ms: float, transcript: str = SPOKEN) -> list[Command]:
    """The speaker pauses at `at_ms` and the speculation made there comes back: the commands that follow."""
    rt.on_speech_paused(at_ms)
    request = next(c for c in rt.take_commands() if isinstance(c, Transcribe))
    rt.on_transcription_completed(request.request_id, transcript)
    return rt.take_commands()


def reply(rt: RealtimeSession, response_id: str) -> None:
    """What the pipeline reports of a short spoken reply."""
    rt.on_message_started(response_id)
    rt.on_transcript(response_id, "Sunny.")
    rt.on_audio(response_id, b"\x01\x00" * 2400)
    rt.on_response_done(response_id, Usage(input_tokens=30, output_tokens=3), "stop")


def shape(events: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Event types with the ids they refer to, by order of first appearance (so two runs compare)."""
    seen: dict[str, str] = {}

    def ref(value: str | None) -> str:
        return "-" if value is None else seen.setdefault(value, f"#{len(seen)}")

    out = []
    for event in events:
        response = event.get("response") or {}
        item = event.get("item") or {}
        out.append(
            (
                event["type"],
                ref(event.get("item_id") or item.get("id")),
                ref(event.get("response_id") or response.get("id")),
                json.dumps(response.get("usage")),
            )
        )
    return out


def test_a_turn_that_ends_at_its_pause_gets_the_reply_made_during_it() -> None:
    rt = make_session()
    rt.on_speech_started(100)
    drain(rt)
    (preempt,) = pause(rt, 900)
    assert isinstance(preempt, PreemptResponse)
    assert preempt.run.messages[-1] == {"role": "user", "content": SPOKEN}
    reply(rt, preempt.run.response_id)
    assert drain(rt) == []  # nothing of it shows before the turn has ended
    rt.on_speech_stopped(1400, 900)
    events = drain(rt)
    kinds = [event["type"] for event in events]
    assert kinds[: kinds.index("response.created") + 1] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
    ]
    created = events[kinds.index("response.created")]
    assert created["response"]["id"] == preempt.run.response_id
    assert "response.output_audio.delta" in kinds and kinds[-1] == "response.done"
    assert events[-1]["response"]["status"] == "completed"
    assert rt.take_commands() == [EndPreemption(preempt.run.response_id, PreemptionEnd.ADOPTED)]


def test_the_adopted_reply_looks_exactly_like_one_made_after_the_turn() -> None:
    def run(preemptive: bool) -> list[tuple[str, ...]]:
        rt = make_session(preemptive)
        rt.on_speech_started(100)
        commands = pause(rt, 900)
        rt.on_speech_stopped(1400, 900)
        commands += rt.take_commands()
        (generate,) = [
            c.run if isinstance(c, PreemptResponse) else c
            for c in commands
            if isinstance(c, PreemptResponse | RunResponse)
        ]
        reply(rt, generate.response_id)
        return shape(drain(rt))

    assert run(True) == run(False)


def test_resumed_speech_discards_the_preemptive_reply() -> None:
    rt = make_session()
    rt.on_speech_started(100)
    (first,) = pause(rt, 900, "What is")
    assert isinstance(first, PreemptResponse)
    rt.on_speech_resumed()
    assert rt.take_commands() == [EndPreemption(first.run.response_id, PreemptionEnd.SPEECH_RESUMED)]
    reply(rt, first.run.response_id)  # what the pipeline had produced before the cancel reached it
    assert [e["type"] for e in drain(rt)] == ["input_audio_buffer.speech_started"]
    (second,) = pause(rt, 1700, "What is the weather like?")
    assert isinstance(second, PreemptResponse)
    assert second.run.messages[-1] == {"role": "user", "content": "What is the weather like?"}
    rt.on_speech_stopped(2200, 1700)
    reply(rt, second.run.response_id)
    events = drain(rt)
    created = [e for e in events if e["type"] == "response.created"]
    assert len(created) == 1 and created[0]["response"]["id"] == second.run.response_id
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Sunny."


def test_a_turn_that_ends_after_another_pause_runs_afresh() -> None:
    rt = make_session()
    rt.on_speech_started(100)
    (first,) = pause(rt, 900, "What is")
    # The VAD reports the stop at a later speech end (the speaker went on without a new pause report reaching us):
    # the turn's transcript is not the speculation's, so the request differs.
    rt.on_speech_stopped(2200, 1700)
    commands = rt.take_commands()
    assert EndPreemption(first.run.response_id, PreemptionEnd.CONTEXT_CHANGED) in commands
    (transcribe,) = [c for c in commands if isinstance(c, Transcribe)]
    rt.on_transcription_completed(transcribe.request_id, "What is the weather like today?")
    (run,) = [c for c in rt.take_commands() if isinstance(c, RunResponse)]
    assert run.response_id != first.run.response_id
    assert run.messages[-1] == {"role": "user", "content": "What is the weather like today?"}


def test_a_conversation_change_during_the_pause_discards_it() -> None:
    rt = make_session()
    rt.on_speech_started(100)
    (preempt,) = pause(rt, 900)
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Also: in Paris."}]}
    rt.receive(json.dumps({"type": "conversation.item.create", "item": item}))
    assert EndPreemption(preempt.run.response_id, PreemptionEnd.CLIENT_EVENT) in rt.take_commands()
    rt.on_speech_stopped(1400, 900)
    (run,) = [c for c in rt.take_commands() if isinstance(c, RunResponse)]
    assert run.response_id != preempt.run.response_id
    assert [m["content"] for m in run.messages[-2:]] == ["Also: in Paris.", SPOKEN]


def test_a_changed_request_is_not_adopted() -> None:
    """The comparison at the end of the turn catches what no event announced (here: the instructions changed in
    the defaults the preemptive run was made from, as a stand-in for any difference)."""
    rt = make_session()
    rt.on_speech_started(100)
    (preempt,) = pause(rt, 900)
    preempt.run.temperature += 0.1  # not the request the response would make now
    rt.on_speech_stopped(1400, 900)
    commands = rt.take_commands()
    assert EndPreemption(preempt.run.response_id, PreemptionEnd.CONTEXT_CHANGED) in commands
    (run,) = [c for c in commands if isinstance(c, RunResponse)]
    assert run.response_id != preempt.run.response_id


def test_a_failed_preemptive_reply_is_run_again() -> None:
    rt = make_session()
    rt.on_speech_started(100)
    (preempt,) = pause(rt, 900)
    rt.on_response_failed(preempt.run.response_id, ProviderFailure("server_error", "boom"))
    assert rt._responses.preemption_state is PreemptionState.FAILED
    rt.on_speech_stopped(1400, 900)
    events = drain(rt)
    assert "error" not in [e["type"] for e in events]
    commands = rt.take_commands()
    assert EndPreemption(preempt.run.response_id, PreemptionEnd.FAILED) in commands
    (run,) = [c for c in commands if isinstance(c, RunResponse)]
    assert run.response_id != preempt.run.response_id


def test_nothing_preemptive_without_create_response_or_when_turned_off() -> None:
    detection = {"type": "server_vad", "create_response": False}
    no_reply = {"audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": detection}}}
    for rt in (make_session(**no_reply), make_session(preemptive=False)):
        rt.on_speech_started(100)
        assert pause(rt, 900) == []


def test_nothing_preemptive_while_a_response_runs() -> None:
    rt = make_session()
    rt.receive(json.dumps({"type": "response.create", "response": {"conversation": "none"}}))
    rt.take_commands()
    rt.on_speech_started(100)
    assert not [c for c in pause(rt, 900) if isinstance(c, PreemptResponse)]


def test_semantic_vad_preempts_once_the_turn_model_thinks_the_turn_may_be_over() -> None:
    rt = make_session(audio={"input": {"turn_detection": {"type": "semantic_vad"}}})
    rt.on_speech_started(100)
    assert pause(rt, 900) == []  # a pause alone is not enough under semantic VAD
    rt.on_turn_likely_complete()
    (preempt,) = rt.take_commands()
    assert isinstance(preempt, PreemptResponse)
    rt.on_speech_stopped(2000, 900)
    assert rt.take_commands() == [EndPreemption(preempt.run.response_id, PreemptionEnd.ADOPTED)]


def test_semantic_vad_likely_end_before_the_transcript_preempts_when_it_comes() -> None:
    rt = make_session(audio={"input": {"turn_detection": {"type": "semantic_vad"}}})
    rt.on_speech_started(100)
    rt.on_speech_paused(900)
    (request,) = [c for c in rt.take_commands() if isinstance(c, Transcribe)]
    rt.on_turn_likely_complete()
    assert rt.take_commands() == []
    rt.on_transcription_completed(request.request_id, SPOKEN)
    (preempt,) = rt.take_commands()
    assert isinstance(preempt, PreemptResponse)
