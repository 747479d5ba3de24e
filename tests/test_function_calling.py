"""Function calling and image input through the official SDK and the Agents SDK, against a fake chat endpoint that
streams tool calls in the real SSE shape (arguments split over many chunks)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import pcm24k, silence24k
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient, connect, without_deltas
from tests.support.servers import RunningServer

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIMER_TOOL = {
    "type": "function",
    "name": "set_timer",
    "description": "Start a timer.",
    "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}},
}
NAMES = {
    "ga": {
        "added": "conversation.item.added",
        "text_delta": "response.output_text.delta",
        "text_done": "response.output_text.done",
    },
    "beta": {
        "added": "conversation.item.created",
        "text_delta": "response.text.delta",
        "text_done": "response.text.done",
    },
}


async def setup(client: RealtimeTestClient, tools: list[dict], tool_choice: str | dict = "auto") -> None:
    await client.until("conversation.created")
    if client.dialect == "ga":
        session = {"type": "realtime", "tools": tools, "tool_choice": tool_choice, "output_modalities": ["text"]}
    else:
        choice = tool_choice if isinstance(tool_choice, str) else tool_choice["name"]
        session = {"tools": tools, "tool_choice": choice, "modalities": ["text"]}
    await client.send({"type": "session.update", "session": session})
    await client.until("session.updated")


async def ask(client: RealtimeTestClient, text: str) -> list[dict]:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    await client.send({"type": "response.create"})
    return await client.until("response.done")


def call_sequence(dialect: str) -> list[str]:
    sequence = [
        "response.output_item.added",
        NAMES[dialect]["added"],
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    return sequence + (["conversation.item.done"] if dialect == "ga" else [])


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_one_call_streams_its_arguments(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    async with connect(server.base_url, dialect) as client:
        await setup(client, [WEATHER_TOOL])
        script(
            fake,
            client.session_id,
            chat=[{"text": "", "tool_calls": [{"name": "get_weather", "arguments": arguments, "id": "call_A"}]}],
        )
        events = await ask(client, "Weather in Paris?")
    events = events[events.index(next(e for e in events if e["type"] == "response.created")) :]
    assert without_deltas(events) == ["response.created", *call_sequence(dialect), "response.done"]
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) == -(-len(arguments) // 4)  # streamed as the provider streamed them: 4 characters a chunk
    assert "".join(e["delta"] for e in deltas) == arguments
    assert all(e["call_id"] == "call_A" and e["output_index"] == 0 for e in deltas)
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert (done["name"], done["arguments"], done["call_id"]) == ("get_weather", arguments, "call_A")
    item = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert item["type"] == "function_call" and item["status"] == "completed"
    assert events[-1]["response"]["output"] == [item]
    request = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER_TOOL["description"],
                "parameters": WEATHER_TOOL["parameters"],
            },
        }
    ]
    assert request["tool_choice"] == "auto"


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_text_then_two_parallel_calls(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    async with connect(server.base_url, dialect) as client:
        await setup(client, [WEATHER_TOOL, TIMER_TOOL])
        script(
            fake,
            client.session_id,
            chat=[
                {
                    "text": "Let me check both.",
                    "tool_calls": [
                        {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        {"name": "set_timer", "arguments": '{"minutes": 10}'},
                    ],
                }
            ],
        )
        events = await ask(client, "Weather in Oslo, and a ten minute timer.")
    events = events[events.index(next(e for e in events if e["type"] == "response.created")) :]
    names = NAMES[dialect]
    message = [
        "response.output_item.added",
        names["added"],
        "response.content_part.added",
        names["text_delta"],
        names["text_done"],
        "response.content_part.done",
        "response.output_item.done",
    ]
    message += ["conversation.item.done"] if dialect == "ga" else []
    assert without_deltas(events) == [
        "response.created",
        *message,
        *call_sequence(dialect),
        *call_sequence(dialect),
        "response.done",
    ]
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "function_call"]
    assert [item.get("name") for item in output[1:]] == ["get_weather", "set_timer"]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2]
    assert output[1]["call_id"] != output[2]["call_id"]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_tool_output_round_trip(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    async with connect(server.base_url, dialect) as client:
        await setup(client, [WEATHER_TOOL])
        script(
            fake,
            client.session_id,
            chat=[
                {"text": "", "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Rome"}', "id": "call_R"}]},
                {"text": "It is 24 degrees and sunny in Rome."},
            ],
        )
        await ask(client, "Weather in Rome?")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": "call_R",
                    "output": '{"temperature": 24, "sky": "sunny"}',
                },
            }
        )
        added = await client.until(NAMES[dialect]["added"])
        assert added[-1]["item"]["type"] == "function_call_output"
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == "It is 24 degrees and sunny in Rome."
    messages = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"][0]["id"] == "call_R"
    assert messages[3] == {"role": "tool", "tool_call_id": "call_R", "content": '{"temperature": 24, "sky": "sunny"}'}


async def test_a_voice_turn_after_a_tool_call_keeps_the_history_valid(server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(server.base_url) as client:
        await setup(client, [TIMER_TOOL])
        script(
            fake,
            client.session_id,
            chat=[
                {"text": "", "tool_calls": [{"name": "set_timer", "arguments": '{"minutes": 5}', "id": "call_T"}]},
                {"text": "Timer set."},
                {"text": "You're welcome."},
            ],
            transcription=[{"text": "Thank you."}] * 3,
        )
        await ask(client, "Set a five minute timer.")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "call_T", "output": "ok"},
            }
        )
        await client.send({"type": "response.create"})
        await client.until("response.done")
        for chunk in [pcm24k("hello.wav") + silence24k(700)]:
            for start in range(0, len(chunk), 1920):
                await client.send(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": __import__("base64").b64encode(chunk[start : start + 1920]).decode(),
                    }
                )
        await client.until("response.done", timeout=20)
    messages = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"] == "call_T"
    assert messages[-1]["content"] == "Thank you."


async def test_tool_choice_forcing_a_function(server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(server.base_url) as client:
        await setup(client, [WEATHER_TOOL, TIMER_TOOL], tool_choice={"type": "function", "name": "set_timer"})
        await ask(client, "Anything.")
        await client.send(
            {
                "type": "response.create",
                "event_id": "evt_bad",
                "response": {"tool_choice": {"type": "function", "name": "nope"}},
            }
        )
        error = (await client.until("error"))[-1]["error"]
        assert (error["param"], error["event_id"]) == ("response.tool_choice.name", "evt_bad")
    request = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]
    assert request["tool_choice"] == {"type": "function", "function": {"name": "set_timer"}}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_image_reaches_the_provider_as_an_image_part(
    server: RunningServer, fake: FakeOpenAI, dialect: str
) -> None:
    image = (
        "data:image/png;base64,"
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    async with connect(server.base_url, dialect) as client:
        await client.until("conversation.created")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in this picture?"},
                        {"type": "input_image", "image_url": image},
                    ],
                },
            }
        )
        await client.until(NAMES[dialect]["added"])
        await client.send(
            {
                "type": "response.create",
                "response": {"output_modalities": ["text"]} if dialect == "ga" else {"modalities": ["text"]},
            }
        )
        events = await client.until("response.done")
        assert events[-1]["response"]["status"] == "completed"
    content = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "auto"}},
    ]


async def test_agents_sdk_runs_a_tool_round_trip(
    server_factory: Callable[..., RunningServer], fake: FakeOpenAI
) -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"The weather in {city} is 19 degrees and cloudy."

    server = server_factory()  # the Agents SDK does not show the session's id: the fake is scripted for this server
    script(
        fake,
        server.provider_key,
        chat=[
            {"text": "", "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Lisbon"}', "id": "call_L"}]},
            {"text": "Lisbon is at 19 degrees and cloudy."},
        ],
    )
    agent = RealtimeAgent(name="Weather", instructions="Use the tool.", tools=[get_weather])
    runner = RealtimeRunner(agent, config={"model_settings": {"output_modalities": ["text"]}})
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    session = await runner.run(model_config={"url": url, "api_key": "dummy"})
    errors: list[object] = []
    tool_ends = 0
    async with session:
        await session.send_message("What's the weather in Lisbon?")
        async with asyncio.timeout(20):
            async for event in session:
                if event.type == "error" or (
                    event.type == "raw_model_event" and event.data.type in ("error", "exception")
                ):
                    errors.append(event)
                if event.type == "tool_end":
                    tool_ends += 1
                if event.type == "agent_end" and tool_ends:
                    break
    assert errors == []
    assert calls == ["Lisbon"]
    messages = fake_requests(fake, "/v1/chat/completions", server.provider_key)[-1]["body"]["messages"]
    assert messages[-1] == {
        "role": "tool",
        "tool_call_id": "call_L",
        "content": "The weather in Lisbon is 19 degrees and cloudy.",
    }
