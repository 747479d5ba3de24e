"""Random sequences of client events, valid and invalid, for the property-based tests of the session (pure, in
`tests/unit/test_session_properties.py`) and of the live server (`tests/test_live_properties.py`), and the client's
view of a session's events that checks the properties on them."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from tests.support.realtime_client import validate_server_event

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


def materialise(event: Any, index: int, session_ids: list[str]) -> tuple[str, str]:
    """The JSON to send: '@existing' becomes an id from the conversation; dict events get an event_id."""
    if isinstance(event, dict):
        event = json.loads(json.dumps(event).replace("@existing", session_ids[-1] if session_ids else "item_none"))
        event["event_id"] = EVENT_ID.format(index)
        return json.dumps(event), event["event_id"]
    return json.dumps(event), ""
