"""The session's properties (see `tests/unit/test_session_properties.py`) against the live server: fewer random
sequences, through the official SDK, every frame validated."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.event_sequences import Observer, invalid_events, materialise, valid_events
from tests.support.realtime_client import connect
from tests.support.servers import RunningServer


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
