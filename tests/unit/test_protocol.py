"""`protocol.py` without sockets: parsing, error mapping, and agreement with the official SDK's client types."""

from __future__ import annotations

import collections.abc
import json
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
import typing_extensions
from openai.types.beta.realtime.realtime_client_event_param import RealtimeClientEventParam as BetaClientEvent
from openai.types.realtime.realtime_client_event_param import RealtimeClientEventParam as GaClientEvent

from protocol import (
    ItemCreate,
    ProtocolError,
    ResponseCreate,
    SessionUpdate,
    new_id,
)
from wire.beta import render_event
from wire.parsing import parse_client_event

# ---- every field the official SDK lets a client send is understood -------------------------------------------

_SPECIAL_STRINGS = {
    "image_url": "data:image/png;base64,iVBORw0KGgo=",
    "audio": "AAAA",
    "conversation": "auto",
    "include": "item.input_audio_transcription.logprobs",
}


def _samples(tp: Any, name: str = "") -> list[Any]:
    """Example values for a type from the SDK's TypedDict params: one per branch of each union."""
    origin = get_origin(tp)
    if origin in (typing_extensions.Required, typing_extensions.NotRequired, typing_extensions.Annotated):
        return _samples(get_args(tp)[0], name)
    if typing_extensions.is_typeddict(tp):
        return _typeddict_samples(tp)
    if origin is Union:
        values = []
        for arg in get_args(tp):
            if arg is type(None):
                continue
            values.extend(_samples(arg, name))
        return values or [None]
    if origin in (Literal, typing_extensions.Literal):
        return list(get_args(tp))
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        return [[value] for value in _samples(get_args(tp)[0], name)]
    if origin is dict or tp is dict:
        return [{"key": "value"}]
    if tp is str:
        return [_SPECIAL_STRINGS.get(name, "x")]
    if tp is bool:
        return [True]
    if tp is int:
        return [100]
    if tp is float:
        return [0.8]  # inside every range: VAD threshold, beta temperature, speed
    if tp is object:
        return [{"type": "object", "properties": {}}]
    raise TypeError(f"no sample for {tp!r}")


def _typeddict_samples(tp: Any) -> list[dict[str, Any]]:
    hints = get_type_hints(tp, include_extras=True)
    options = {key: _samples(value, key) for key, value in hints.items()}
    base = {key: values[0] for key, values in options.items()}
    result = [base]
    for key, values in options.items():
        for value in values[1:]:
            result.append({**base, key: value})
    return result


def _client_event_samples(union: Any) -> list[dict[str, Any]]:
    samples = []
    for member in get_args(union):
        samples.extend(_typeddict_samples(member))
    return samples


@pytest.mark.parametrize(("dialect", "union"), [("ga", GaClientEvent), ("beta", BetaClientEvent)], ids=["ga", "beta"])
def test_every_sdk_field_is_known(dialect: Literal["ga", "beta"], union: Any) -> None:
    """Every field of every client event the SDK can build parses: none is unknown or of a refused type.

    The only refusals are deliberate: MCP connectors hosted by OpenAI, MCP items only the server makes (calls,
    listings, approval requests), assistant audio created by
    the client (the real API refuses it too) and content types that don't belong to the message's role."""
    samples = _client_event_samples(union)
    assert len(samples) > 80
    for sample in samples:
        try:
            parse_client_event(json.dumps(sample), dialect)
        except ProtocolError as error:
            deliberate = error.code in ("unsupported_tool", "unsupported_item") or (
                error.code == "invalid_value" and error.param.endswith(("content[0].audio", "content[0].type"))
            )
            assert deliberate, (sample, error)


# ---- parsing ------------------------------------------------------------------------------------------------


def test_beta_session_update_becomes_ga_patch() -> None:
    event = {
        "type": "session.update",
        "session": {
            "modalities": ["text", "audio"],
            "voice": "verse",
            "input_audio_format": "g711_ulaw",
            "turn_detection": None,
            "input_audio_transcription": {"model": "whisper-1", "language": "zh"},
            "max_response_output_tokens": "inf",
            "tool_choice": "get_weather",
            "temperature": 0.7,
        },
    }
    command = parse_client_event(json.dumps(event), "beta")
    assert isinstance(command, SessionUpdate)
    assert command.temperature == 0.7
    assert command.patch == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "tool_choice": {"type": "function", "name": "get_weather"},
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "whisper-1", "language": "zh"},
                "turn_detection": None,
            },
            "output": {"voice": "verse"},
        },
    }


def test_beta_assistant_text_item_becomes_output_text() -> None:
    event = {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}]},
    }
    command = parse_client_event(json.dumps(event), "beta")
    assert isinstance(command, ItemCreate)
    assert command.item["content"] == [{"type": "output_text", "text": "hi"}]
    assert command.previous_item_id_given is False


def test_response_create_input_items_are_canonical() -> None:
    event = {
        "type": "response.create",
        "response": {
            "conversation": "none",
            "input": [
                {"type": "item_reference", "id": "item_1"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
            ],
        },
    }
    command = parse_client_event(json.dumps(event), "ga")
    assert isinstance(command, ResponseCreate)
    assert command.params["input"][0] == {"type": "item_reference", "id": "item_1"}
    assert command.params["input"][1]["status"] == "completed"


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ({"type": "input_audio_buffer.append", "audio": "AA", "extra": 1}, "unknown_parameter", "extra"),
        (
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"speed": 3}}}},
            "decimal_above_max_value",
            "session.audio.output.speed",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "tool_choice": "sometimes"}},
            "invalid_value",
            "session.tool_choice",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "file:///etc/passwd"}],
                },
            },
            "invalid_value",
            "item.content[0].image_url",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_audio", "audio": "AAAA"}],
                },
            },
            "invalid_value",
            "item.content[0].audio",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": "mcp_call", "id": "x"}},
            "unsupported_item",
            "item.type",
        ),
    ],
)
def test_error_codes(event: dict, code: str, param: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_event(json.dumps(event), "ga")
    assert (caught.value.code, caught.value.param) == (code, param)


def test_ids_look_like_openai_ids() -> None:
    ids = {new_id("item") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("item_") and len(i) == 26 and i[5:].isalnum() for i in ids)


# ---- rendering ------------------------------------------------------------------------------------------------


def test_beta_rendering_renames_and_drops() -> None:
    delta = {"type": "response.output_audio_transcript.delta", "event_id": "e", "delta": "x"}
    assert render_event(delta, "beta")["type"] == "response.audio_transcript.delta"
    assert render_event(delta, "ga") is delta
    assert render_event({"type": "conversation.item.done", "event_id": "e", "item": {}}, "beta") is None
    added = {
        "type": "conversation.item.added",
        "event_id": "e",
        "previous_item_id": None,
        "item": {
            "id": "i",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": "hi"}],
        },
    }
    rendered = render_event(added, "beta")
    assert rendered["type"] == "conversation.item.created"
    assert rendered["item"]["content"] == [{"type": "audio", "transcript": "hi"}]
    assert rendered["item"]["object"] == "realtime.item"


@pytest.mark.parametrize(
    ("truncation", "code", "param", "words"),
    [
        ("bogus", "invalid_value", "session.truncation", "an object of type 'retention_ratio'"),
        ({"type": "retention_ratio"}, "missing_required_parameter", "session.truncation.retention_ratio", "Missing"),
        ({"type": "retention_ratio", "retention_ratio": 2}, "decimal_above_max_value", None, "<= 1.0"),
        ({"type": "other", "retention_ratio": 0.5}, "invalid_value", "session.truncation.type", "'retention_ratio'"),
        (
            {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post_instructions": -1}},
            "integer_below_min_value",
            "session.truncation.token_limits.post_instructions",
            ">= 0",
        ),
    ],
)
def test_bad_truncation_is_named_exactly(truncation: Any, code: str, param: str | None, words: str) -> None:
    event = {"type": "session.update", "event_id": "evt_t", "session": {"type": "realtime", "truncation": truncation}}
    with pytest.raises(ProtocolError) as caught:
        parse_client_event(json.dumps(event), "ga")
    error = caught.value
    assert error.code == code and words in error.message and error.event_id == "evt_t"
    assert error.param == (param or "session.truncation.retention_ratio")
