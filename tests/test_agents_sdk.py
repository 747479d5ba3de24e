"""The OpenAI Agents SDK (`openai-agents`) holds a conversation with the server through its realtime model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agents.realtime import RealtimeAgent, RealtimeRunner

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import fake_requests
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
