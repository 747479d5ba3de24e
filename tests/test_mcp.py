"""MCP tools in sessions: a real MCP server (the `mcp` SDK's own, streamable HTTP on loopback) that the server lists
and calls itself, through the official SDK; the loopback LLM fake answers with calls of the MCP tools."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import fake_requests, script
from tests.support.in_process import InProcessServer
from tests.support.mcp_server import LoopbackMcpServer
from tests.support.realtime_client import RealtimeTestClient, connect, without_deltas
from tests.support.servers import RunningServer, free_port


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[LoopbackMcpServer]:
    running = LoopbackMcpServer().start()
    yield running
    running.stop()


def mcp_tool(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "weather", "server_url": url, "require_approval": "never", **fields}


def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A chat step of the fake: the model calls `tool` of the `weather` server."""
    return {"text": "", "tool_calls": [{"name": f"weather__{tool}", "arguments": json.dumps(arguments)}]}


async def configure(client: RealtimeTestClient, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A text session with `tools`; returns the events up to the end of the listing."""
    await client.until("conversation.created")
    session = {"type": "realtime", "output_modalities": ["text"], "tools": tools}
    await client.send({"type": "session.update", "session": session})
    events = await client.until("session.updated")
    return events + await client.until("conversation.item.done")  # the mcp_list_tools item's


async def ask(client: RealtimeTestClient, text: str, **response: Any) -> list[dict[str, Any]]:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    await client.until("conversation.item.done")
    await client.send({"type": "response.create", **({"response": response} if response else {})})
    return await client.until("response.done")


def check_grammar(events: list[dict[str, Any]]) -> None:
    """One `response.created` and one `response.done` per response, nothing of it after its end; every item and
    MCP call that opens is closed."""
    created = [e["response"]["id"] for e in events if e["type"] == "response.created"]
    done = [e["response"]["id"] for e in events if e["type"] == "response.done"]
    assert sorted(created) == sorted(done) and len(set(done)) == len(done)
    for response_id in done:
        end = next(
            i for i, e in enumerate(events) if e["type"] == "response.done" and e["response"]["id"] == response_id
        )
        assert not any(e.get("response_id") == response_id for e in events[end + 1 :])
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    finished = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
    assert added == finished
    conversation_added = {e["item"]["id"] for e in events if e["type"] == "conversation.item.added"}
    conversation_done = {e["item"]["id"] for e in events if e["type"] == "conversation.item.done"}
    assert conversation_added == conversation_done
    started = [e["item_id"] for e in events if e["type"] == "response.mcp_call.in_progress"]
    ended = [e["item_id"] for e in events if e["type"] in ("response.mcp_call.completed", "response.mcp_call.failed")]
    assert sorted(started) == sorted(ended)


async def test_listing_then_a_call_answered_in_the_same_response(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    tool = mcp_tool(mcp_server.url, headers={"X-Api-Key": "secret-header"}, authorization="secret-token")
    async with connect(server.base_url) as client:
        listing = await configure(client, [tool])
        script(fake, client.session_id, chat=[call("get_weather", {"city": "Paris"}), {"text": "Sunny in Paris."}])
        events = await ask(client, "Weather in Paris?")
    updated = next(e for e in listing if e["type"] == "session.updated")["session"]
    assert updated["tools"] == [{k: v for k, v in tool.items() if k not in ("headers", "authorization")}]
    assert "secret" not in json.dumps(client.events)
    listing = listing[listing.index(next(e for e in listing if e["type"] == "session.updated")) + 1 :]
    assert [e["type"] for e in listing] == [
        "conversation.item.added",
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "conversation.item.done",
    ]
    item = listing[-1]["item"]
    assert item["type"] == "mcp_list_tools" and item["server_label"] == "weather"
    assert [t["name"] for t in item["tools"]] == ["get_weather", "slow_search", "read_sensor", "local_time"]
    assert item["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
    assert listing[1]["item_id"] == listing[2]["item_id"] == item["id"]
    sent = [h for h in mcp_server.headers if h.get("x-api-key") == "secret-header"]
    assert sent and all(h["authorization"] == "Bearer secret-token" for h in sent)

    events = events[events.index(next(e for e in events if e["type"] == "response.created")) :]
    check_grammar(events)
    assert without_deltas(events) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.done",
        "conversation.item.done",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    mcp_call = events[-1]["response"]["output"][0]
    assert mcp_call["type"] == "mcp_call" and mcp_call["server_label"] == "weather"
    assert (mcp_call["name"], json.loads(mcp_call["arguments"])) == ("get_weather", {"city": "Paris"})
    assert mcp_call["output"] == "Sunny and 24 degrees in Paris." and mcp_call["error"] is None
    assert events[-1]["response"]["status"] == "completed"
    assert events[-1]["response"]["output"][1]["content"][0]["text"] == "Sunny in Paris."
    requests = fake_requests(fake, "/v1/chat/completions", client.session_id)
    assert len(requests) == 2
    names = [t["function"]["name"] for t in requests[0]["body"]["tools"]]
    assert names == ["weather__get_weather", "weather__slow_search", "weather__read_sensor", "weather__local_time"]
    messages = requests[1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"][0]["function"]["name"] == "weather__get_weather"
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": mcp_call["id"],
        "content": "Sunny and 24 degrees in Paris.",
    }


async def test_a_failing_tool_fails_its_call_and_the_model_still_answers(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    async with connect(server.base_url) as client:
        await configure(client, [mcp_tool(mcp_server.url)])
        script(fake, client.session_id, chat=[call("read_sensor", {}), {"text": "The sensor is out of order."}])
        events = await ask(client, "Is it raining?")
    check_grammar(events)
    assert "response.mcp_call.failed" in [e["type"] for e in events]
    assert "response.mcp_call.completed" not in [e["type"] for e in events]
    mcp_call, message = events[-1]["response"]["output"]
    assert mcp_call["output"] is None
    message_text = "Error executing tool read_sensor: The rain sensor is broken."  # the MCP server's own words
    assert mcp_call["error"] == {"type": "tool_execution_error", "message": message_text}
    assert message["content"][0]["text"] == "The sensor is out of order."
    tool_message = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"][-1]
    assert tool_message == {
        "role": "tool",
        "tool_call_id": mcp_call["id"],
        "content": f"Error: {message_text}",
    }


async def test_a_server_that_is_down_fails_the_listing_and_the_session_goes_on(
    server: RunningServer, fake: FakeOpenAI
) -> None:
    down = f"http://127.0.0.1:{free_port()}/mcp"
    async with connect(server.base_url) as client:
        events = await configure(client, [mcp_tool(down)])
        failed = next(e for e in events if e["type"] == "mcp_list_tools.failed")
        error = next(e for e in events if e["type"] == "error")["error"]
        script(fake, client.session_id, chat=[{"text": "Hello."}])
        reply = await ask(client, "Hi")
    assert error["code"] == "mcp_list_tools_failed" and "weather" in error["message"]
    assert events[-1]["item"]["id"] == failed["item_id"] and events[-1]["item"]["tools"] == []
    assert reply[-1]["response"]["status"] == "completed"
    assert reply[-1]["response"]["output"][0]["content"][0]["text"] == "Hello."
    assert "tools" not in fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]


async def test_allowed_tools_limit_what_the_model_sees(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    async with connect(server.base_url) as client:
        listed = await configure(client, [mcp_tool(mcp_server.url, allowed_tools=["get_weather"])])
        script(fake, client.session_id, chat=[{"text": "Ok."}])
        await ask(client, "Hi")
        by_filter = {"read_only": True}
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "tools": [mcp_tool(mcp_server.url, allowed_tools=by_filter)]},
            }
        )
        await client.until("session.updated")
        script(fake, client.session_id, chat=[{"text": "Ok."}])
        await ask(client, "Hi again")
    assert [t["name"] for t in listed[-1]["item"]["tools"]] == ["get_weather"]
    first, second = fake_requests(fake, "/v1/chat/completions", client.session_id)
    assert [t["function"]["name"] for t in first["body"]["tools"]] == ["weather__get_weather"]
    assert [t["function"]["name"] for t in second["body"]["tools"]] == ["weather__local_time"]
    # Listed once per server and session: the second update listed nothing again.
    assert sum(e["type"] == "mcp_list_tools.in_progress" for e in client.events) == 1


async def approve(client: RealtimeTestClient, request_id: str, approve: bool, reason: str | None = None) -> None:
    item: dict[str, Any] = {"type": "mcp_approval_response", "approval_request_id": request_id, "approve": approve}
    if reason is not None:
        item["reason"] = reason
    await client.send({"type": "conversation.item.create", "item": item})
    added = await client.until("conversation.item.done")
    assert added[-1]["item"]["type"] == "mcp_approval_response"


@pytest.mark.parametrize("approved", [True, False])
async def test_approval_both_ways(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer, approved: bool
) -> None:
    async with connect(server.base_url) as client:
        await configure(client, [mcp_tool(mcp_server.url, require_approval={"never": {"read_only": True}})])
        final = "Sunny in Oslo." if approved else "Then I cannot tell you."
        script(fake, client.session_id, chat=[call("get_weather", {"city": "Oslo"}), {"text": final}])
        first = await ask(client, "Weather in Oslo?")
        request = first[-1]["response"]["output"][0]
        await approve(client, request["id"], approved, None if approved else "not now")
        await client.send({"type": "response.create"})
        second = await client.until("response.done")
    check_grammar(first)
    check_grammar(second)
    assert request["type"] == "mcp_approval_request" and request["name"] == "get_weather"
    assert json.loads(request["arguments"]) == {"city": "Oslo"}
    assert first[-1]["response"]["status"] == "completed" and len(first[-1]["response"]["output"]) == 1
    assert "response.mcp_call.in_progress" not in [e["type"] for e in first]
    output = second[-1]["response"]["output"]
    requests = fake_requests(fake, "/v1/chat/completions", client.session_id)
    assert len(requests) == 2
    tool_message = requests[1]["body"]["messages"][-1]
    if approved:
        assert [item["type"] for item in output] == ["mcp_call", "message"]
        assert output[0]["approval_request_id"] == request["id"]
        assert output[0]["output"] == "Sunny and 24 degrees in Oslo."
        assert tool_message == {"role": "tool", "tool_call_id": output[0]["id"], "content": output[0]["output"]}
    else:
        assert [item["type"] for item in output] == ["message"]
        assert tool_message["tool_call_id"] == request["id"]
        assert tool_message["content"] == "Error: the user did not approve this call: not now"
    assert output[-1]["content"][0]["text"] == final


async def test_a_read_only_tool_needs_no_approval_under_that_filter(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    async with connect(server.base_url) as client:
        await configure(client, [mcp_tool(mcp_server.url, require_approval={"never": {"read_only": True}})])
        script(fake, client.session_id, chat=[call("local_time", {}), {"text": "It is 10:42."}])
        events = await ask(client, "What time is it?")
    assert [item["type"] for item in events[-1]["response"]["output"]] == ["mcp_call", "message"]


async def test_cancelling_a_response_cancels_its_call(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    async with connect(server.base_url) as client:
        await configure(client, [mcp_tool(mcp_server.url)])
        script(fake, client.session_id, chat=[call("slow_search", {"query": "hail"})])
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hail?"}]},
            }
        )
        await client.send({"type": "response.create"})
        started = await client.until("response.mcp_call.in_progress")
        await client.send({"type": "response.cancel"})
        events = started + await client.until("response.done")
        script(fake, client.session_id, chat=[{"text": "Still here."}])
        after = await ask(client, "Hello?")
    check_grammar(events)
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["output"][0]["error"]["type"] == "tool_execution_error"
    assert after[-1]["response"]["output"][0]["content"][0]["text"] == "Still here."
    assert len(fake_requests(fake, "/v1/chat/completions", client.session_id)) == 2  # none after the cancelled call


async def test_hosts_outside_the_allow_list_are_refused(
    server_factory: Callable[..., RunningServer], mcp_server: LoopbackMcpServer
) -> None:
    server = server_factory(MCP_ALLOWED_HOSTS="mcp.example.com, localhost:9")
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        tools = [mcp_tool(mcp_server.url)]
        await client.send(
            {"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime", "tools": tools}}
        )
        error = (await client.expect("error"))["error"]
        await client.send({"type": "response.create", "event_id": "evt_2", "response": {"tools": tools}})
        response_error = (await client.expect("error"))["error"]
        await client.no_event(0.5)
    assert (error["code"], error["param"], error["event_id"]) == (
        "mcp_host_not_allowed",
        "session.tools[0].server_url",
        "evt_1",
    )
    assert (response_error["code"], response_error["param"]) == ("mcp_host_not_allowed", "response.tools[0].server_url")
    assert len(mcp_server.headers) == 0 or all("x-api-key" not in h for h in mcp_server.headers[-1:])


@pytest.mark.parametrize(
    ("tool", "code", "param"),
    [
        ({"connector_id": "connector_gmail"}, "unsupported_tool", "session.tools[0].connector_id"),
        ({"tunnel_id": "tun_1"}, "unsupported_tool", "session.tools[0].tunnel_id"),
        ({"server_url": None}, "missing_required_parameter", "session.tools[0].server_url"),
        ({"server_url": "ftp://example.com"}, "invalid_value", "session.tools[0].server_url"),
        ({"require_approval": "sometimes"}, "invalid_value", "session.tools[0].require_approval"),
    ],
)
async def test_mcp_tools_the_server_cannot_use_are_refused(
    server: RunningServer, tool: dict[str, Any], code: str, param: str
) -> None:
    fields = {"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp", "require_approval": "never"}
    fields.update(tool)
    fields = {k: v for k, v in fields.items() if v is not None}
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        await client.send({"type": "session.update", "session": {"type": "realtime", "tools": [fields]}})
        error = (await client.expect("error"))["error"]
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}})
        await client.expect("session.updated")
    assert (error["code"], error["param"]) == (code, param)


async def test_beta_connections_refuse_mcp_tools(server: RunningServer, mcp_server: LoopbackMcpServer) -> None:
    async with connect(server.base_url, "beta") as client:
        await client.until("conversation.created")
        tool = {"type": "mcp", "server_label": "weather", "server_url": mcp_server.url}
        await client.send({"type": "session.update", "session": {"tools": [tool]}})
        error = (await client.expect("error"))["error"]
    assert (error["code"], error["param"]) == ("unsupported_tool", "session.tools[0].type")
    assert "beta" in error["message"]


async def test_a_session_that_closes_mid_call_leaves_no_task_behind(
    in_process: InProcessServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    baseline = in_process.task_count()
    async with connect(in_process.base_url) as client:
        await configure(client, [mcp_tool(mcp_server.url)])
        script(fake, client.session_id, chat=[call("slow_search", {"query": "fog"})])
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Fog?"}]},
            }
        )
        await client.send({"type": "response.create"})
        await client.until("response.mcp_call.in_progress")
    deadline = asyncio.get_running_loop().time() + 10
    while in_process.task_count() > baseline and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert in_process.task_count() <= baseline


async def test_a_spoken_answer_after_a_call(
    server: RunningServer, fake: FakeOpenAI, mcp_server: LoopbackMcpServer
) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        session = {"type": "realtime", "output_modalities": ["audio"], "tools": [mcp_tool(mcp_server.url)]}
        await client.send({"type": "session.update", "session": session})
        await client.until("session.updated")
        await client.until("conversation.item.done")
        script(fake, client.session_id, chat=[call("get_weather", {"city": "Rome"}), {"text": "It is sunny in Rome."}])
        events = await ask(client, "Weather in Rome?")
    check_grammar(events)
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert [item["type"] for item in done["output"]] == ["mcp_call", "message"]
    assert done["output"][1]["content"][0]["transcript"] == "It is sunny in Rome."
    assert any(e["type"] == "response.output_audio.delta" for e in events)


async def test_older_servers_over_sse(server: RunningServer, fake: FakeOpenAI) -> None:
    sse_server = LoopbackMcpServer(sse=True).start()
    try:
        async with connect(server.base_url) as client:
            listing = await configure(client, [mcp_tool(sse_server.url)])
            script(fake, client.session_id, chat=[call("get_weather", {"city": "Kyiv"}), {"text": "Sunny."}])
            events = await ask(client, "Weather in Kyiv?")
    finally:
        sse_server.stop()
    assert "mcp_list_tools.completed" in [e["type"] for e in listing]
    assert events[-1]["response"]["output"][0]["output"] == "Sunny and 24 degrees in Kyiv."
    assert any(h["x-request-method"] == "GET" and h.get("accept") == "text/event-stream" for h in sse_server.headers)
