"""The OpenAI Agents SDK (`openai-agents`) holds a conversation with the server through its realtime model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agents.realtime import RealtimeAgent, RealtimeRunner
from agents.realtime.model_inputs import RealtimeModelSendRawMessage

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import fake_requests, script
from tests.support.mcp_server import LoopbackMcpServer
from tests.support.servers import RunningServer


async def test_agents_sdk_text_conversation(server_factory: Callable[..., RunningServer], fake: FakeOpenAI) -> None:
    server = server_factory()  # the Agents SDK does not show the session's id: the fake is read by this server's key
    agent = RealtimeAgent(name="Assistant", instructions="You are a terse assistant.")
    runner = RealtimeRunner(agent, config={"model_settings": {"output_modalities": ["text"]}})
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    session = await runner.run(model_config={"url": url, "api_key": "dummy"})
    errors: list[object] = []
    replies: list[str] = []
    async with session:
        for question in ("Hello there.", "What did I just say?"):
            await session.send_message(question)
            async with asyncio.timeout(15):
                async for event in session:
                    if event.type == "error":
                        errors.append(event.error)
                    if event.type == "raw_model_event" and event.data.type in ("error", "exception"):
                        errors.append(event.data)
                    if event.type == "agent_end":
                        break
            replies.append(question)
        history = [item for item in session._history if getattr(item, "role", None) == "assistant"]
    assert errors == []
    assert len(history) == 2
    texts = [part.text for item in history for part in item.content if getattr(part, "text", None)]
    assert texts[0] == "You said: Hello there.. That is all I have to say."
    requests = [r["body"] for r in fake_requests(fake, "/v1/chat/completions", server.provider_key)]
    assert requests[0]["messages"][0] == {"role": "system", "content": "You are a terse assistant."}
    assert [m["role"] for m in requests[1]["messages"]] == ["system", "user", "assistant", "user"]


async def test_agents_sdk_session_with_a_hosted_mcp_tool(
    server_factory: Callable[..., RunningServer], fake: FakeOpenAI
) -> None:
    """The Agents SDK's realtime agents take function tools only; its model sends the MCP tool as the API's own
    `session.update` (a raw message), and the turn completes with the call the server ran itself."""
    mcp_server = LoopbackMcpServer().start()
    server = server_factory()
    tool = {"type": "mcp", "server_label": "weather", "server_url": mcp_server.url, "require_approval": "never"}
    script(
        fake,
        server.provider_key,
        chat=[
            {"text": "", "tool_calls": [{"name": "weather__get_weather", "arguments": '{"city": "Lima"}'}]},
            {"text": "It is sunny in Lima."},
        ],
    )
    agent = RealtimeAgent(name="Assistant", instructions="You are a terse assistant.")
    runner = RealtimeRunner(agent, config={"model_settings": {"output_modalities": ["text"]}})
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    errors: list[object] = []
    server_events: list[dict] = []

    async def until(done: Callable[[object], bool]) -> None:
        async with asyncio.timeout(15):
            async for event in session:
                if event.type == "error":
                    errors.append(event.error)
                if event.type == "raw_model_event" and event.data.type in ("error", "exception"):
                    errors.append(event.data)
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    server_events.append(event.data.data)
                if done(event):
                    return

    try:
        session = await runner.run(model_config={"url": url, "api_key": "dummy"})
        async with session:
            update = {"type": "session.update", "other_data": {"session": {"type": "realtime", "tools": [tool]}}}
            await session.model.send_event(RealtimeModelSendRawMessage(message=update))  # type: ignore[arg-type]
            await until(lambda _e: any(e["type"] == "mcp_list_tools.completed" for e in server_events))
            await session.send_message("Weather in Lima?")
            await until(lambda e: getattr(e, "type", None) == "agent_end")
            history = [item for item in session._history if getattr(item, "role", None) == "assistant"]
    finally:
        mcp_server.stop()
    assert errors == []
    calls = [e["item"] for e in server_events if e["type"] == "response.output_item.done"]
    assert calls[0]["type"] == "mcp_call" and calls[0]["output"] == "Sunny and 24 degrees in Lima."
    assert sum(e["type"] == "response.done" for e in server_events) == 1
    texts = [part.text for item in history for part in item.content if getattr(part, "text", None)]
    assert texts == ["It is sunny in Lima."]
