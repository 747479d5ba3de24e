"""Property-based tests: random sequences of client events, valid and invalid, against the session state machine
(many examples, no sockets) and against the live server (fewer). Whatever the sequence:

- no exception escapes;
- an event yields at most one `error`, carrying the client's `event_id`; an event built to be invalid yields exactly
  one;
- at most one in-band response is active; item ids are unique;
- every response that was created ends with exactly one `response.done`;
- the conversation's order is the one the `previous_item_id`s of the item events describe.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_session import RealtimeSession
from session.commands import ProviderFailure, RunResponse, Usage
from tests.conftest import RunningServer
from tests.realtime_client import connect, validate_server_event
from tests.support.session_core import DEFAULTS

EVENT_ID = "evt_{}"

# ---- event strategies --------------------------------------------------------------------------------------------

text_item = st.builds(
    lambda text, previous: {
        "type": "conversation.item.create",
        **({"previous_item_id": previous} if previous is not None else {}),
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    },
    st.text(max_size=20),
    st.sampled_from([None, None, None, "root", "@existing", "item_missing"]),
)
response_create = st.builds(
    lambda modality, oob, tokens: {
        "type": "response.create",
        "response": {
            "output_modalities": [modality],
            **({"conversation": "none"} if oob else {}),
            **({"max_output_tokens": tokens} if tokens else {}),
        },
    },
    st.sampled_from(["text", "audio"]),
    st.booleans(),
    st.sampled_from([None, 5, 4096]),
)
valid_events = st.one_of(
    text_item,
    response_create,
    st.just({"type": "response.cancel"}),
    st.builds(
        lambda target: {"type": "conversation.item.delete", "item_id": target},
        st.sampled_from(["@existing", "item_missing"]),
    ),
    st.builds(
        lambda target: {"type": "conversation.item.retrieve", "item_id": target},
        st.sampled_from(["@existing", "item_missing"]),
    ),
    st.builds(
        lambda target, ms: {
            "type": "conversation.item.truncate",
            "item_id": target,
            "content_index": 0,
            "audio_end_ms": ms,
        },
        st.sampled_from(["@existing", "item_missing"]),
        st.integers(0, 3000),
    ),
    st.builds(
        lambda ms: {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x00" * 24 * ms).decode()},
        st.integers(1, 200),
    ),
    st.just({"type": "input_audio_buffer.commit"}),
    st.just({"type": "input_audio_buffer.clear"}),
    st.builds(
        lambda instructions, detection: {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": instructions,
                "audio": {"input": {"turn_detection": detection}},
            },
        },
        st.text(max_size=10),
        st.sampled_from(
            [None, {"type": "server_vad", "silence_duration_ms": 200}, {"type": "semantic_vad", "eagerness": "high"}]
        ),
    ),
)
invalid_events = st.one_of(
    st.builds(lambda value: value, st.sampled_from([[], 3, "text", None, True])),  # not objects
    st.builds(lambda name: {"type": name}, st.text(max_size=12).filter(lambda t: "." not in t)),
    st.just({"type": "session.update", "session": {"type": "realtime", "instructions": 5}}),
    st.just({"type": "session.update", "session": {"type": "realtime", "bogus": 1}}),
    st.just({"type": "conversation.item.create"}),
    st.just({"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}}),
    st.just({"type": "conversation.item.truncate", "item_id": "x", "content_index": -1, "audio_end_ms": 0}),
    st.just({"type": "input_audio_buffer.append", "audio": "###"}),
    st.just({"type": "response.create", "response": {"max_output_tokens": 0}}),
    st.just({"type": "response.create", "response": {"output_modalities": ["text", "audio"]}}),
    st.just({"type": "response.cancel", "response_id": 12}),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), valid_events),
        st.tuples(st.just("invalid"), invalid_events),
        st.tuples(st.just("pipeline"), st.sampled_from(["text", "audio", "tool", "done", "fail"])),
    ),
    max_size=40,
)


# ---- invariants, checked over the events a session produced ------------------------------------------------------


class Observer:
    """Follows the server events like a client would, and checks what the properties demand."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.created: list[str] = []
        self.done: list[str] = []
        self.order: list[str] = []  # the conversation, as the item events describe it

    def observe(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            validate_server_event(event, self.dialect)  # type: ignore[arg-type]
            kind = event["type"]
            if kind == "response.created":
                self.created.append(event["response"]["id"])
            elif kind == "response.done":
                self.done.append(event["response"]["id"])
            elif kind in ("conversation.item.added", "conversation.item.created"):
                item_id, previous = event["item"]["id"], event.get("previous_item_id")
                assert item_id not in self.order, f"item {item_id} added twice"
                self.order.insert(self.order.index(previous) + 1 if previous else 0, item_id)
            elif kind == "conversation.item.deleted":
                self.order.remove(event["item_id"])


def send_one(session: RealtimeSession, raw: str, event_id: str, must_fail: bool) -> list[dict[str, Any]]:
    session.receive(raw)
    events = session.take_events()
    errors = [event for event in events if event["type"] == "error"]
    assert len(errors) <= 1, errors
    if must_fail:
        assert len(errors) == 1, (raw, events)
    for error in errors:
        assert error["error"]["event_id"] in (event_id, None)
        if event_id and isinstance(json.loads(raw), dict):
            assert error["error"]["event_id"] == event_id
    return events


def materialise(event: Any, index: int, session_ids: list[str]) -> tuple[str, str]:
    """The JSON to send: '@existing' becomes an id from the conversation; dict events get an event_id."""
    if isinstance(event, dict):
        event = json.loads(json.dumps(event).replace("@existing", session_ids[-1] if session_ids else "item_none"))
        event["event_id"] = EVENT_ID.format(index)
        return json.dumps(event), event["event_id"]
    return json.dumps(event), ""


def drive_pipeline(session: RealtimeSession, action: str, runs: list[RunResponse]) -> None:
    for command in session.take_commands():
        if isinstance(command, RunResponse):
            runs.append(command)
    active = session.active_response_ids
    if not active:
        return
    response_id = active[0]
    if action == "text":
        session.on_text(response_id, "hello ")
    elif action == "audio":
        session.on_transcript(response_id, "Hi.")
        session.on_audio(response_id, b"\x00\x01" * 480)
    elif action == "tool":
        session.on_tool_call(response_id, 0, "call_x", "f", '{"a": 1}')
    elif action == "done":
        session.on_response_done(response_id, Usage(3, 4), "stop")
    else:
        session.on_response_failed(response_id, ProviderFailure("provider_error", "boom"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.sampled_from(["ga", "beta"]))
def test_state_machine_properties(sequence: list[tuple[str, Any]], dialect: str) -> None:
    session = RealtimeSession(DEFAULTS, dialect)  # type: ignore[arg-type]
    observer = Observer(dialect)
    session.open()
    observer.observe(session.take_events())
    runs: list[RunResponse] = []
    for index, (kind, payload) in enumerate(sequence):
        if kind == "pipeline":
            drive_pipeline(session, payload, runs)
            observer.observe(session.take_events())
            continue
        raw, event_id = materialise(payload, index, session.conversation.ids())
        observer.observe(send_one(session, raw, event_id, must_fail=kind == "invalid"))
        in_band = [rid for rid in session.active_response_ids if rid == session.in_band_response_id]
        assert len(in_band) <= 1
        ids = session.conversation.ids()
        assert len(ids) == len(set(ids))
    for response_id in session.active_response_ids:
        session.on_response_done(response_id, None, "stop")
    observer.observe(session.take_events())
    assert sorted(observer.created) == sorted(observer.done)
    assert len(observer.done) == len(set(observer.done))
    assert observer.order == session.conversation.ids()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(st.tuples(st.just("valid"), valid_events), st.tuples(st.just("invalid"), invalid_events)), max_size=15
    )
)
def test_live_server_properties(server: RunningServer, sequence: list[tuple[str, Any]]) -> None:
    asyncio.run(_live(server, sequence))


async def _live(server: RunningServer, sequence: list[tuple[str, Any]]) -> None:
    observer = Observer("ga")
    async with connect(server.base_url) as client:
        observer.observe(await client.until("conversation.created"))
        invalid_ids = []
        for index, (kind, payload) in enumerate(sequence):
            raw, event_id = materialise(payload, index, observer.order)
            await client.send_raw(raw)
            if kind == "invalid":
                invalid_ids.append(event_id or None)
        # A marker (its answer names it): everything sent before it has been handled once that answer arrives.
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_marker", "event_id": "evt_marker"})
        while True:
            event = await client.recv(timeout=20)
            observer.observe([event])
            if event["type"] == "error" and event["error"]["event_id"] == "evt_marker":
                break
        errors = [e["error"]["event_id"] for e in client.events[:-1] if e["type"] == "error"]
        named = [event_id for event_id in errors if event_id is not None]
        assert len(named) == len(set(named)), errors  # at most one error per event
        for event_id in invalid_ids:
            assert event_id is None or event_id in named, (event_id, errors)
        assert errors.count(None) >= invalid_ids.count(None)
        # Responses still running end with exactly one response.done each.
        deadline = asyncio.get_running_loop().time() + 20
        while sorted(observer.created) != sorted(observer.done):
            observer.observe([await client.recv(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))])
        # The session still works.
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        observer.observe(await client.until("response.done", timeout=20))
    assert len(observer.done) == len(set(observer.done))
    assert sorted(observer.created) == sorted(observer.done)
