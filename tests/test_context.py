"""Long sessions: the session's `truncation` keeps every request inside the model's context, through the official
SDK, on the real local model (its own tokenizer) and on an OpenAI-compatible provider (the loopback fake, whose
requests show what the model was given). The conversation the client sees never changes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient, connect
from tests.support.servers import RunningServer, start_server

SIXTY_WORDS = (
    "Tell me about turn {n}: the harbour, the boats, the nets, the gulls, the tide, the wind, the rain, the sun, "
    "the fish market, the old lighthouse keeper, his dog, his garden, the bakery on the corner, the bread, the "
    "church bells, the school, the children, the bus to town, the long road over the hill and the farms beside it."
)


def user_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def text_turn(client: RealtimeTestClient, text: str, **response: Any) -> dict[str, Any]:
    """One user message and its text reply; returns the reply's `response.done`."""
    await client.send({"type": "conversation.item.create", "item": user_item(text)})
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"], **response}})
    return (await client.until("response.done", timeout=60))[-1]


async def configure(client: RealtimeTestClient, **session: Any) -> None:
    payload = {"type": "realtime", **session} if client.dialect == "ga" else session
    await client.send({"type": "session.update", "session": payload})
    await client.until("session.updated")


def user_texts(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["body"]["messages"] if m["role"] == "user"]


# --------------------------------------------------------------------------------------------------------------
# The local model, its context set small
# --------------------------------------------------------------------------------------------------------------


SHORT_TURN = "Tell me about turn {n}: the harbour, the boats, the nets, the gulls, the tide, the wind and the sun."
CONTEXT = 512  # the smallest LOCAL_LLM_CONTEXT: once it is full, every turn's prompt is evaluated anew (seconds)


@pytest.fixture(scope="module")
def small_local() -> Iterator[RunningServer]:
    """The offline default with the smallest context it takes: 30 turns need several times that."""
    running = start_server({"LOCAL_LLM_CONTEXT": str(CONTEXT), "LOCAL_LLM_PARALLEL": "1", "LLM_TEMPERATURE": "0"})
    yield running
    running.stop()


async def test_thirty_turns_on_the_local_model_all_complete_inside_its_context(small_local: RunningServer) -> None:
    async with connect(small_local.base_url) as client:
        await client.until("conversation.created")
        await configure(client, instructions="Answer in one short sentence.")
        first_item = None
        inputs = []
        for n in range(30):
            done = await text_turn(client, SHORT_TURN.format(n=n), max_output_tokens=16)
            assert done["response"]["status"] in ("completed", "incomplete"), done["response"]["status_details"]
            inputs.append(done["response"]["usage"]["input_tokens"])
            first_item = first_item or next(e for e in client.events if e["type"] == "conversation.item.done")
        # The oldest items are still the client's: truncation changed only what the model saw.
        await client.send({"type": "conversation.item.retrieve", "item_id": first_item["item"]["id"]})
        retrieved = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert retrieved["content"][0]["text"] == SHORT_TURN.format(n=0)
    # Every request fitted the context, by the model's own count, leaving the reply its 16 tokens (without
    # truncation the 30th would hold 30 turns: about 60 tokens a turn).
    assert max(inputs) <= CONTEXT - 16 and inputs[1] - inputs[0] > 40, inputs
    truncated = [line for line in small_local.log().splitlines() if "context truncated (auto)" in line]
    assert truncated and re.search(r"\d+ oldest item\(s\) left out", truncated[-1])
    assert "turn 0" not in small_local.log()  # and no user text in the log


async def test_disabled_on_the_local_model_fails_with_the_context_size(small_local: RunningServer) -> None:
    async with connect(small_local.base_url) as client:
        await client.until("conversation.created")
        await configure(client, truncation="disabled")
        items = []
        for n in range(12):
            await client.send({"type": "conversation.item.create", "item": user_item(SIXTY_WORDS.format(n=n))})
            items.append((await client.until("conversation.item.done"))[-1]["item"]["id"])
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await client.until("response.done", timeout=60)
        (error,) = [e["error"] for e in events if e["type"] == "error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert f"{CONTEXT} tokens" in error["message"] and "'disabled'" in error["message"]
        assert events[-1]["response"]["status"] == "failed"
        for item_id in items[:-1]:  # the client makes room: the session goes on
            await client.send({"type": "conversation.item.delete", "item_id": item_id})
            await client.until("conversation.item.deleted")
        await client.send(
            {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 8}}
        )
        assert (await client.until("response.done", timeout=60))[-1]["response"]["status"] in (
            "completed",
            "incomplete",
        )


# --------------------------------------------------------------------------------------------------------------
# An OpenAI-compatible provider: what the model is sent
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_remote(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory(LLM_CONTEXT_TOKENS="1024", LLM_MAX_TOKENS="64")


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_auto_drops_the_oldest_turns_from_the_request_only(
    small_remote: RunningServer, fake: FakeOpenAI, dialect: str
) -> None:
    text_only = {"modalities": ["text"]} if dialect == "beta" else {"output_modalities": ["text"]}
    async with connect(small_remote.base_url, dialect) as client:
        await client.until("session.created")
        for n in range(20):
            script(fake, client.session_id, chat=[{"text": f"Reply {n}."}])
            await client.send({"type": "conversation.item.create", "item": user_item(SIXTY_WORDS.format(n=n))})
            await client.send({"type": "response.create", "response": text_only})
            done = (await client.until("response.done"))[-1]
            assert done["response"]["status"] == "completed"
            assert done["response"]["usage"]["input_tokens"] <= 1024 - 64
    requests = fake_requests(fake, "/v1/chat/completions", client.session_id)
    assert user_texts(requests[0]) == [SIXTY_WORDS.format(n=0)]
    last = user_texts(requests[-1])
    assert last[-1] == SIXTY_WORDS.format(n=19) and SIXTY_WORDS.format(n=0) not in last  # the oldest went first
    assert requests[-1]["body"]["messages"][0]["role"] == "system"  # the instructions stayed


async def test_retention_ratio_cuts_once_then_the_prefix_stays(small_remote: RunningServer, fake: FakeOpenAI) -> None:
    truncation = {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post_instructions": 600}}
    async with connect(small_remote.base_url) as client:
        await client.until("session.created")
        await configure(client, truncation=truncation)
        for n in range(16):
            script(fake, client.session_id, chat=[{"text": "OK."}])
            await text_turn(client, SIXTY_WORDS.format(n=n))
    firsts = [user_texts(request)[0] for request in fake_requests(fake, "/v1/chat/completions", client.session_id)]
    cuts = [index for index in range(1, len(firsts)) if firsts[index] != firsts[index - 1]]
    assert cuts, firsts  # the limit was passed
    assert all(later - earlier >= 3 for earlier, later in zip(cuts, cuts[1:], strict=False)), cuts
    # Between two cuts every request begins the same way: the provider's prompt cache holds.
    first_cut = cuts[0]
    assert len(set(firsts[first_cut : first_cut + 3])) == 1


async def test_a_tool_call_and_its_output_stay_together_at_the_cut(
    small_remote: RunningServer, fake: FakeOpenAI
) -> None:
    async with connect(small_remote.base_url) as client:
        await client.until("session.created")
        for n in range(14):
            if n % 3 == 1:  # a tool call and its output in the conversation, made by the client
                arguments = json.dumps({"n": n})
                call = {"type": "function_call", "name": "lookup", "arguments": arguments, "call_id": f"c{n}"}
                output = {"type": "function_call_output", "call_id": f"c{n}", "output": "x " * 120}
                for item in (call, output):
                    await client.send({"type": "conversation.item.create", "item": item})
                    await client.until("conversation.item.done")
            script(fake, client.session_id, chat=[{"text": "OK."}])
            await text_turn(client, SIXTY_WORDS.format(n=n))
    for request in fake_requests(fake, "/v1/chat/completions", client.session_id):
        messages = request["body"]["messages"]
        called = {call["id"] for m in messages for call in m.get("tool_calls") or []}
        answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
        assert called == answered, messages
