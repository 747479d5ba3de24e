"""Property-based tests: random sequences of client events, valid and invalid, against the session state machine
(many examples, no sockets); `tests/test_live_properties.py` runs fewer against the live server. Whatever the sequence:

- no exception escapes;
- an event yields at most one `error`, carrying the client's `event_id`; an event built to be invalid yields exactly
  one;
- at most one in-band response is active; item ids are unique;
- every response that was created ends with exactly one `response.done`;
- the conversation's order is the one the `previous_item_id`s of the item events describe.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_session import RealtimeSession
from session.commands import ProviderFailure, RunResponse, Usage
from tests.support.event_sequences import Observer, materialise, steps
from tests.support.session_core import DEFAULTS


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
