"""The session state machine with plain function calls: no sockets, no pipeline."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from realtime_session import RealtimeSession
from session.commands import CancelResponse, ProviderFailure, RunResponse, Transcribe, Usage
from session.configuration import merge_session
from session.conversation import SpokenSegment, chat_messages, heard_text
from tests.support.realtime_client import validate_server_event
from tests.support.session_core import DEFAULTS, defaults


def make_session(dialect: str = "ga") -> RealtimeSession:
    session = RealtimeSession(DEFAULTS, dialect)  # type: ignore[arg-type]
    session.open()
    session.take_events()
    session.take_commands()
    return session


def send(session: RealtimeSession, event: dict[str, Any]) -> list[dict[str, Any]]:
    session.receive(json.dumps(event))
    events = session.take_events()
    for event_out in events:
        validate_server_event(event_out, session.dialect)  # type: ignore[arg-type]
    return events


def drain(session: RealtimeSession) -> list[dict[str, Any]]:
    events = session.take_events()
    for event in events:
        validate_server_event(event, session.dialect)  # type: ignore[arg-type]
    return events


def start_response(session: RealtimeSession, **response: Any) -> str:
    events = send(session, {"type": "response.create", "response": response})
    assert events[-1]["type"] == "response.created", events
    return events[-1]["response"]["id"]


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def test_message_then_two_tool_calls() -> None:
    session = make_session()
    tools = [{"type": "function", "name": name, "parameters": {"type": "object"}} for name in ("a", "b")]
    send(session, {"type": "session.update", "session": {"type": "realtime", "tools": tools}})
    response_id = start_response(session, output_modalities=["text"])
    run = session.take_commands()[0]
    assert isinstance(run, RunResponse)
    assert run.tools[0] == {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}
    session.on_text(response_id, "Let me check.")
    session.on_tool_call(response_id, 0, "call_1", "a", '{"x":')
    session.on_tool_call(response_id, 0, None, None, " 1}")
    session.on_tool_call(response_id, 1, "call_2", "b", "{}")
    session.on_response_done(response_id, Usage(10, 5), "tool_calls")
    events = drain(session)
    assert names(events) == [
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = events[-1]["response"]
    assert [item["type"] for item in done["output"]] == ["message", "function_call", "function_call"]
    assert done["output"][1] == {
        **done["output"][1],
        "call_id": "call_1",
        "name": "a",
        "arguments": '{"x": 1}',
        "status": "completed",
    }
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2]
    args_done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert args_done[0]["name"] == "a" and args_done[0]["call_id"] == "call_1"
    assert done["usage"]["total_tokens"] == 15


def test_tool_output_round_trip_builds_a_valid_chat_history() -> None:
    session = make_session()
    send(
        session,
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        },
    )
    response_id = start_response(session)
    session.take_commands()
    session.on_tool_call(response_id, 0, "call_w", "weather", '{"city":"Paris"}')
    session.on_response_done(response_id, None, "tool_calls")
    drain(session)
    send(
        session,
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_w", "output": '{"temp": 21}'},
        },
    )
    start_response(session)
    run = session.take_commands()[0]
    assert run.messages[1:] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_w", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": '{"temp": 21}'},
    ]


def test_chat_messages_pairing_rules() -> None:
    def call(call_id: str) -> dict:
        return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}"}

    def output(call_id: str) -> dict:
        return {"type": "function_call_output", "call_id": call_id, "output": "ok"}

    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    items = [user, call("c1"), call("c2"), user, output("c2"), output("c1"), call("pending"), output("orphan")]
    messages = chat_messages(items, "")
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user", "system"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert [m["tool_call_id"] for m in messages[2:4]] == ["c1", "c2"]
    assert "orphan" in messages[-1]["content"]


def test_image_parts_reach_the_llm_messages() -> None:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        ],
    }
    assert chat_messages([item], "")[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]


def test_out_of_band_runs_beside_in_band_and_cancel_targets_in_band() -> None:
    session = make_session()
    in_band = start_response(session)
    out_of_band = start_response(session, conversation="none", output_modalities=["text"])
    assert set(session.active_response_ids) == {in_band, out_of_band}
    session.take_commands()
    events = send(session, {"type": "response.cancel"})
    assert names(events) == ["response.done"]
    assert events[0]["response"]["id"] == in_band
    assert session.take_commands() == [CancelResponse(in_band)]
    session.on_text(out_of_band, "still going")
    session.on_response_done(out_of_band, None, "stop")
    events = drain(session)
    assert events[-1]["response"]["status"] == "completed"
    assert "conversation.item.added" not in names(events)


def test_failure_emits_error_then_failed_done_and_ignores_late_output() -> None:
    session = make_session("beta")
    response_id = start_response(session)
    session.on_transcript(response_id, "Hello")
    session.on_audio(response_id, b"\x00\x01" * 2400)
    session.on_response_failed(response_id, ProviderFailure("provider_error", "boom"))
    events = drain(session)
    assert names(events)[-6:] == [
        "error",
        "response.audio.done",
        "response.audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["status_details"]["error"]["code"] == "provider_error"
    session.on_audio(response_id, b"\x00\x01" * 2400)
    session.on_response_done(response_id, None, "stop")
    assert drain(session) == []


def test_truncate_during_response_keeps_later_audio_out_of_the_item() -> None:
    session = make_session()
    response_id = start_response(session)
    session.on_transcript(response_id, "First sentence.")
    session.on_audio(response_id, b"\x00\x00" * 24_000)  # 1 s
    session.on_transcript(response_id, " Second sentence.")
    session.on_audio(response_id, b"\x00\x00" * 24_000)
    item_id = drain(session)[0]["item"]["id"]
    events = send(
        session, {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 1500}
    )
    assert names(events) == ["conversation.item.truncated"]
    session.on_transcript(response_id, " Third.")
    session.on_audio(response_id, b"\x00\x00" * 24_000)
    session.on_response_done(response_id, None, "stop")
    events = drain(session)
    done_item = events[-1]["response"]["output"][0]
    assert done_item["content"][0]["transcript"] == "First sentence. Second"
    stored = session.conversation.get(item_id)
    assert stored is not None and stored.audio_ms == 1500


@pytest.mark.parametrize(
    ("cut_ms", "heard"),
    [
        (0, ""),
        (500, "Hello"),
        (1000, "Hello there."),
        (1500, "Hello there. How"),
        (1800, "Hello there. How are"),
        (3000, "Hello there. How are you?"),
    ],
)
def test_heard_text(cut_ms: int, heard: str) -> None:
    segments = [SpokenSegment(0, "Hello there."), SpokenSegment(1000, " How are you?")]
    assert heard_text(segments, 2000, cut_ms) == heard


def test_heard_text_chinese_cuts_by_character() -> None:
    segments = [SpokenSegment(0, "你好，"), SpokenSegment(600, "今天天气很好。")]
    assert heard_text(segments, 1300, 900) == "你好，今天天"


def test_merge_session_semantics() -> None:
    defaults = {"server_vad": {"threshold": 0.5, "silence_duration_ms": 500}, "semantic_vad": {"eagerness": "auto"}}
    current = {
        "instructions": "a",
        "tools": [{"name": "x"}],
        "audio": {
            "input": {
                "turn_detection": {"type": "server_vad", "threshold": 0.7, "silence_duration_ms": 300},
                "transcription": None,
            },
            "output": {"voice": "alloy", "speed": 1.0},
        },
    }
    merged = merge_session(current, {"audio": {"output": {"speed": 1.2}}}, defaults)
    assert merged["audio"]["output"] == {"voice": "alloy", "speed": 1.2}
    merged = merge_session(
        current, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.9}}}}, defaults
    )
    assert merged["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.9,
        "silence_duration_ms": 300,
    }
    merged = merge_session(current, {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}, defaults)
    assert merged["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "auto"}
    merged = merge_session(
        current, {"audio": {"input": {"turn_detection": None}}, "tools": [], "instructions": ""}, defaults
    )
    assert merged["audio"]["input"]["turn_detection"] is None
    assert merged["tools"] == [] and merged["instructions"] == ""
    assert current["instructions"] == "a"  # the original is untouched


def test_session_update_with_error_leaves_session_unchanged() -> None:
    session = make_session()
    before = json.dumps(session.config.to_ga(), sort_keys=True)
    events = send(
        session,
        {
            "type": "session.update",
            "event_id": "e1",
            "session": {"type": "realtime", "instructions": "new", "tools": [{"type": "mcp", "server_label": "x"}]},
        },
    )
    assert names(events) == ["error"]
    assert events[0]["error"]["event_id"] == "e1"
    assert json.dumps(session.config.to_ga(), sort_keys=True) == before


def test_unknown_openai_values_are_accepted() -> None:
    session = make_session()
    events = send(
        session,
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "model": "gpt-realtime-2099",
                "tracing": "auto",
                "truncation": "disabled",
                "include": ["item.input_audio_transcription.logprobs"],
                "prompt": {"id": "pmpt_1", "version": "2"},
                "audio": {
                    "output": {"voice": "some-custom-voice"},
                    "input": {
                        "transcription": {"model": "gpt-4o-mini-transcribe"},
                        "noise_reduction": {"type": "near_field"},
                    },
                },
            },
        },
    )
    assert names(events) == ["session.updated"]
    session_out = events[0]["session"]
    assert session_out["tracing"] == "auto" and session_out["truncation"] == "disabled"
    assert session_out["audio"]["output"]["voice"] == "some-custom-voice"
    assert session_out["audio"]["input"]["noise_reduction"] == {"type": "near_field"}


def test_transcription_session_refuses_responses() -> None:
    session = RealtimeSession(DEFAULTS, "ga", kind="transcription")
    session.open()
    created = drain(session)
    assert names(created) == ["session.created"]
    assert created[0]["session"]["type"] == "transcription"
    events = send(session, {"type": "response.create", "event_id": "e"})
    assert names(events) == ["error"] and events[0]["error"]["event_id"] == "e"


def test_old_audio_is_released_but_truncation_still_works() -> None:
    session = RealtimeSession(defaults(max_retained_audio_ms=1500), "ga")
    session.open()
    ids = []
    for _ in range(3):
        response_id = start_response(session)
        session.on_transcript(response_id, "Some words here.")
        session.on_audio(response_id, b"\x01\x00" * 24_000)  # 1 s each
        session.on_response_done(response_id, None, "stop")
        ids.append(next(e for e in drain(session) if e["type"] == "response.done")["response"]["output"][0]["id"])
    oldest, middle, newest = (session.conversation.get(item_id) for item_id in ids)
    assert oldest.audio == bytearray() and middle.audio == bytearray() and len(newest.audio) == 48_000
    assert oldest.audio_ms == 1000  # its length is still known
    retrieved = send(session, {"type": "conversation.item.retrieve", "item_id": ids[0]})[0]["item"]
    assert "audio" not in retrieved["content"][0]
    events = send(
        session, {"type": "conversation.item.truncate", "item_id": ids[0], "content_index": 0, "audio_end_ms": 500}
    )
    assert [e["type"] for e in events] == ["conversation.item.truncated"]
    assert oldest.audio_ms == 500 and oldest.item["content"][0]["transcript"] == "Some"


def test_speculative_transcription_deltas_are_sent_only_when_adopted() -> None:
    session = make_session()
    send(
        session,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}},
        },
    )
    send(session, {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x00" * 24_000).decode()})
    session.take_commands()
    session.on_speech_started(100)
    # First pause: the speaker goes on, so its words are never sent.
    session.on_speech_paused(400)
    talked_past = next(c for c in session.take_commands() if isinstance(c, Transcribe)).request_id
    session.on_transcription_delta(talked_past, "Hello")
    session.on_speech_paused(800)
    adopted = next(c for c in session.take_commands() if isinstance(c, Transcribe)).request_id
    session.on_transcription_delta(talked_past, " there")
    session.on_transcription_completed(talked_past, "Hello there")
    session.on_transcription_delta(adopted, "Hello")
    assert names(drain(session)) == ["input_audio_buffer.speech_started"]
    session.on_speech_stopped(1000, 800)
    session.on_transcription_delta(adopted, " world")
    session.on_transcription_completed(adopted, "Hello world")
    events = drain(session)
    transcription = [e for e in events if e["type"].startswith("conversation.item.input_audio_transcription")]
    assert [(e["type"].rsplit(".", 1)[1], e.get("delta") or e.get("transcript")) for e in transcription] == [
        ("delta", "Hello"),
        ("delta", " world"),
        ("completed", "Hello world"),
    ]
    assert not [c for c in session.take_commands() if isinstance(c, Transcribe)]  # no second transcription
