"""Bad client input: each answered by one `error` event with the right code, param and event_id; the session goes on."""

from __future__ import annotations

import json

import pytest

from tests.support.realtime_client import RealtimeTestClient, connect
from tests.support.servers import RunningServer

GA_CASES = [
    # (raw message, code, param)
    ("{not json", "invalid_json", None),
    ("[1, 2, 3]", "invalid_event", None),
    ('"a string"', "invalid_event", None),
    ('{"event_id": "evt_x"}', "invalid_event", "type"),
    ('{"type": 42, "event_id": "evt_x"}', "invalid_type", "type"),
    ('{"type": "session.fly", "event_id": "evt_x"}', "invalid_value", "type"),
    ('{"type": "session.update", "event_id": "evt_x"}', "missing_required_parameter", "session"),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", "instructions": 7}}',
        "invalid_type",
        "session.instructions",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", "voice": "alloy"}}',
        "unknown_parameter",
        "session.voice",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"instructions": "x"}}',
        "missing_required_parameter",
        "session.type",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", "audio": {"input": '
        '{"turn_detection": {"type": "server_vad", "threshold": 1.5}}}}}',
        "decimal_above_max_value",
        "session.audio.input.turn_detection.threshold",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", "audio": {"input": '
        '{"turn_detection": {"type": "push_to_talk"}}}}}',
        "invalid_value",
        "session.audio.input.turn_detection.type",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", "max_output_tokens": 99999}}',
        "integer_above_max_value",
        "session.max_output_tokens",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", '
        '"output_modalities": ["text", "audio"]}}',
        "invalid_value",
        "session.output_modalities",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime", "tools": '
        '[{"type": "function", "name": "f", "parameters": {}, "strict": true}]}}',
        "unknown_parameter",
        "session.tools[0].strict",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "transcription"}}',
        "invalid_value",
        "session.type",
    ),
    (
        '{"type": "conversation.item.create", "event_id": "evt_x", "item": {"type": "message", "role": "user", '
        '"content": [{"type": "input_text"}]}}',
        "missing_required_parameter",
        "item.content[0].text",
    ),
    (
        '{"type": "conversation.item.create", "event_id": "evt_x", "item": {"type": "message", "role": "user", '
        '"content": [{"type": "output_text", "text": "x"}]}}',
        "invalid_value",
        "item.content[0].type",
    ),
    (
        '{"type": "conversation.item.create", "event_id": "evt_x", "previous_item_id": "item_nope", '
        '"item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}}',
        "invalid_value",
        "previous_item_id",
    ),
    ('{"type": "conversation.item.retrieve", "event_id": "evt_x", "item_id": "item_nope"}', "invalid_value", "item_id"),
    ('{"type": "conversation.item.delete", "event_id": "evt_x", "item_id": "item_nope"}', "invalid_value", "item_id"),
    (
        '{"type": "conversation.item.truncate", "event_id": "evt_x", "item_id": "item_nope", "content_index": 0, '
        '"audio_end_ms": -5}',
        "integer_below_min_value",
        "audio_end_ms",
    ),
    (
        '{"type": "conversation.item.truncate", "event_id": "evt_x", "item_id": "item_nope", "content_index": 0, '
        '"audio_end_ms": 10}',
        "invalid_value",
        "item_id",
    ),
    ('{"type": "response.cancel", "event_id": "evt_x"}', "response_cancel_not_active", None),
    (
        '{"type": "response.cancel", "event_id": "evt_x", "response_id": "resp_nope"}',
        "response_cancel_not_active",
        "response_id",
    ),
    (
        '{"type": "response.create", "event_id": "evt_x", "response": {"conversation": "other"}}',
        "invalid_value",
        "response.conversation",
    ),
    (
        '{"type": "response.create", "event_id": "evt_x", "response": {"input": [{"type": "item_reference", '
        '"id": "item_nope"}]}}',
        "invalid_value",
        "response.input[0].id",
    ),
    (
        '{"type": "response.create", "event_id": "evt_x", "response": {"tools": [{"type": "mcp", '
        '"server_label": "x", "connector_id": "connector_gmail"}]}}',
        "unsupported_tool",
        "response.tools[0].connector_id",
    ),
    ('{"type": "input_audio_buffer.append", "event_id": "evt_x", "audio": "@@not base64@@"}', "invalid_value", "audio"),
    ('{"type": "input_audio_buffer.append", "event_id": "evt_x"}', "missing_required_parameter", "audio"),
    ('{"type": "input_audio_buffer.commit", "event_id": "evt_x"}', "input_audio_buffer_commit_empty", None),
]


async def assert_session_still_works(client: RealtimeTestClient) -> None:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "still there?"}]},
        }
    )
    await client.until("conversation.item.done" if client.dialect == "ga" else "conversation.item.created")
    modalities = {"output_modalities": ["text"]} if client.dialect == "ga" else {"modalities": ["text"]}
    await client.send({"type": "response.create", "response": modalities})
    events = await client.until("response.done")
    assert events[-1]["response"]["status"] == "completed"
    assert "error" not in [event["type"] for event in events]


@pytest.mark.parametrize(("raw", "code", "param"), GA_CASES, ids=[f"{c[1]}:{c[2]}" for c in GA_CASES])
async def test_bad_event_gets_one_error_and_session_continues(
    server: RunningServer, raw: str, code: str, param: str | None
) -> None:
    async with connect(server.base_url, "ga") as client:
        await client.until("conversation.created")
        await client.send_raw(raw)
        error = await client.expect("error")
        assert error["error"]["code"] == code, error
        assert error["error"]["param"] == param, error
        expected_event_id = "evt_x" if '"event_id": "evt_x"' in raw else None
        assert error["error"]["event_id"] == expected_event_id
        assert error["error"]["type"] == "invalid_request_error"
        await client.no_event(within=0.2)
        await assert_session_still_works(client)


BETA_CASES = [
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"modalities": ["video"]}}',
        "invalid_value",
        "session.modalities[0]",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"temperature": 3}}',
        "decimal_above_max_value",
        "session.temperature",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"type": "realtime"}}',
        "unknown_parameter",
        "session.type",
    ),
    (
        '{"type": "session.update", "event_id": "evt_x", "session": {"input_audio_format": "mp3"}}',
        "invalid_value",
        "session.input_audio_format",
    ),
    (
        '{"type": "conversation.item.create", "event_id": "evt_x", "item": {"type": "function_call_output"}}',
        "missing_required_parameter",
        "item.call_id",
    ),
]


@pytest.mark.parametrize(("raw", "code", "param"), BETA_CASES, ids=[f"{c[1]}:{c[2]}" for c in BETA_CASES])
async def test_bad_beta_event(server: RunningServer, raw: str, code: str, param: str | None) -> None:
    async with connect(server.base_url, "beta") as client:
        await client.until("conversation.created")
        await client.send_raw(raw)
        error = await client.expect("error")
        assert (error["error"]["code"], error["error"]["param"]) == (code, param), error
        assert error["error"]["event_id"] == "evt_x"
        await assert_session_still_works(client)


async def test_binary_frame_is_an_error(server: RunningServer) -> None:
    async with connect(server.base_url, "ga") as client:
        await client.until("conversation.created")
        await client.send_raw(b"\x00\x01binary")
        error = await client.expect("error")
        assert error["error"]["code"] == "invalid_event"
        await assert_session_still_works(client)


async def test_second_response_while_one_is_active(server: RunningServer, fake) -> None:
    from tests.support.fake_control import script

    async with connect(server.base_url, "ga") as client:
        await client.until("conversation.created")
        script(
            fake, client.session_id, chat=[{"text": "A slow reply that takes a while. " * 10, "chunk_delay_s": 0.03}]
        )
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        created = await client.expect("response.created")
        await client.send({"type": "response.create", "event_id": "evt_second"})
        events = await client.until("error")
        error = events[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response"
        assert error["event_id"] == "evt_second"
        assert created["response"]["id"] in error["message"]
        events = await client.until("response.done")
        assert events[-1]["response"]["id"] == created["response"]["id"]
        assert events[-1]["response"]["status"] == "completed"
        await assert_session_still_works(client)


async def test_wrong_field_types_everywhere_are_reported(server: RunningServer) -> None:
    """Every top-level field of every client event, given a value of the wrong JSON type."""
    events = [  # (event type, fields, the field with the wrong type)
        ("session.update", {"session": "x"}, "session"),
        ("input_audio_buffer.append", {"audio": 5}, "audio"),
        ("conversation.item.create", {"item": [1]}, "item"),
        ("conversation.item.retrieve", {"item_id": 5}, "item_id"),
        ("conversation.item.delete", {"item_id": None}, "item_id"),
        ("conversation.item.truncate", {"item_id": "i", "content_index": "0", "audio_end_ms": 1}, "content_index"),
        ("conversation.item.truncate", {"item_id": "i", "content_index": 0, "audio_end_ms": 1.5}, "audio_end_ms"),
        ("response.create", {"response": 3}, "response"),
        ("response.cancel", {"response_id": 7}, "response_id"),
    ]
    async with connect(server.base_url, "ga") as client:
        await client.until("conversation.created")
        for index, (event_type, fields, bad) in enumerate(events):
            await client.send_raw(json.dumps({"type": event_type, "event_id": f"evt_{index}", **fields}))
            error = (await client.expect("error"))["error"]
            assert error["code"] == "invalid_type", (event_type, error)
            assert error["param"] == bad, (event_type, error)
            assert error["event_id"] == f"evt_{index}"
        await assert_session_still_works(client)
