"""MCP tools in the pure core: listing, calls that run between two LLM runs of one response, approvals, the chat the
LLM sees, and the limits — with plain function calls, every event checked against the SDK's GA models."""

from __future__ import annotations

import json
from typing import Any

from mcp_types import CallToolResult, ImageContent, TextContent

from mcp_client import bounded, call_error, result_text
from realtime_session import RealtimeSession
from session.commands import CallMcpTool, CancelResponse, ListMcpTools, McpCallError, McpErrorKind, RunResponse
from session.conversation import mcp_chat_name
from session.mcp import is_allowed, needs_approval
from tests.support.realtime_client import validate_server_event
from tests.support.session_core import DEFAULTS, defaults

TOOL = {"type": "mcp", "server_label": "docs", "server_url": "http://127.0.0.1:9000/mcp", "require_approval": "never"}
LISTED = [
    {"name": "search", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
    {"name": "delete", "input_schema": {"type": "object"}, "annotations": {"readOnlyHint": False}},
    {"name": "read", "input_schema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
]


def drain(session: RealtimeSession) -> list[dict[str, Any]]:
    events = session.take_events()
    for event in events:
        validate_server_event(event, "ga")
    return events


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def listed_session(tool: dict[str, Any] = TOOL, **changes: Any) -> tuple[RealtimeSession, str]:
    session = RealtimeSession(defaults(**changes) if changes else DEFAULTS, "ga")
    session.open()
    drain(session)
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [tool]}}))
    drain(session)
    (listing,) = [c for c in session.take_commands() if isinstance(c, ListMcpTools)]
    assert isinstance(listing, ListMcpTools)
    session.on_mcp_tools_listed(listing.request_id, LISTED, None)
    drain(session)
    return session, listing.request_id


def ask(session: RealtimeSession) -> RunResponse:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    session.receive(json.dumps({"type": "conversation.item.create", "item": item}))
    session.receive(json.dumps({"type": "response.create"}))
    runs = [c for c in session.take_commands() if isinstance(c, RunResponse)]
    assert len(runs) == 1
    return runs[0]


def test_a_response_waits_for_the_listing_and_sees_the_allowed_tools() -> None:
    session = RealtimeSession(DEFAULTS, "ga")
    session.open()
    drain(session)
    tool = {**TOOL, "allowed_tools": ["search", "read"], "headers": {"X-Key": "sekrit-k"}, "authorization": "sekrit-t"}
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [tool]}}))
    events = drain(session)
    assert names(events) == ["session.updated", "conversation.item.added", "mcp_list_tools.in_progress"]
    assert "sekrit" not in json.dumps(events)
    (listing,) = [c for c in session.take_commands() if isinstance(c, ListMcpTools)]
    assert isinstance(listing, ListMcpTools)
    assert listing.server.request_headers() == {"X-Key": "sekrit-k", "Authorization": "Bearer sekrit-t"}
    assert "sekrit" not in repr(listing)
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    session.receive(json.dumps({"type": "conversation.item.create", "item": item}))
    session.receive(json.dumps({"type": "response.create"}))
    assert not [c for c in session.take_commands() if isinstance(c, RunResponse)]  # held: the tools are not known
    assert "response.created" in names(drain(session))
    session.on_mcp_tools_listed(listing.request_id, LISTED, None)
    events = drain(session)
    assert names(events) == ["mcp_list_tools.completed", "conversation.item.done"]
    assert [t["name"] for t in events[-1]["item"]["tools"]] == ["search", "read"]
    (run,) = session.take_commands()
    assert isinstance(run, RunResponse)
    assert [t["function"]["name"] for t in run.tools] == ["docs__search", "docs__read"]


def test_a_call_runs_between_two_llm_runs_of_one_response() -> None:
    session, _ = listed_session()
    run = ask(session)
    drain(session)
    session.on_tool_call(run.response_id, 0, "call_1", "docs__search", '{"q": ')
    session.on_tool_call(run.response_id, 0, None, None, '"tides"}')
    session.on_response_done(run.response_id, None, "tool_calls")
    events = drain(session)
    assert names(events) == [
        "response.output_item.added",
        "conversation.item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
    ]
    (call,) = session.take_commands()
    assert isinstance(call, CallMcpTool)
    assert (call.tool, call.arguments, call.response_id) == ("search", {"q": "tides"}, run.response_id)
    session.on_mcp_call_done(call.request_id, "High tide at 6.", None)
    events = drain(session)
    assert names(events) == ["response.mcp_call.completed", "response.output_item.done", "conversation.item.done"]
    (again,) = session.take_commands()
    assert isinstance(again, RunResponse) and again.response_id == run.response_id
    tool_message = again.messages[-1]
    assert tool_message == {"role": "tool", "tool_call_id": call.request_id, "content": "High tide at 6."}
    assert again.messages[-2]["tool_calls"][0]["function"]["name"] == "docs__search"
    session.on_text(run.response_id, "At 6.")
    session.on_response_done(run.response_id, None, "stop")
    done = drain(session)[-1]
    assert done["type"] == "response.done" and done["response"]["status"] == "completed"
    assert [item["type"] for item in done["response"]["output"]] == ["mcp_call", "message"]


def test_bad_arguments_fail_the_call_without_running_it() -> None:
    session, _ = listed_session()
    run = ask(session)
    session.on_tool_call(run.response_id, 0, "call_1", "docs__search", "{not json")
    session.on_response_done(run.response_id, None, "tool_calls")
    events = drain(session)
    assert "response.mcp_call.failed" in names(events)
    commands = session.take_commands()
    assert not any(isinstance(c, CallMcpTool) for c in commands)
    assert any(isinstance(c, RunResponse) for c in commands)  # the model hears of the failure


def test_cancel_during_a_call_ends_it_and_tells_the_pipeline() -> None:
    session, _ = listed_session()
    run = ask(session)
    session.on_tool_call(run.response_id, 0, "call_1", "docs__search", "{}")
    session.on_response_done(run.response_id, None, "tool_calls")
    drain(session)
    (call,) = session.take_commands()
    session.receive(json.dumps({"type": "response.cancel"}))
    events = drain(session)
    assert names(events) == ["response.mcp_call.failed", "response.output_item.done", "conversation.item.done"] + [
        "response.done"
    ]
    assert events[-1]["response"]["status"] == "cancelled"
    assert [c for c in session.take_commands() if isinstance(c, CancelResponse)]
    session.on_mcp_call_done(call.request_id, "late", None)  # too late: nothing happens
    assert drain(session) == [] and session.take_commands() == []


def test_approval_request_then_approved_call_in_the_next_response() -> None:
    session, _ = listed_session({**TOOL, "require_approval": "always"})
    run = ask(session)
    session.on_tool_call(run.response_id, 0, "call_1", "docs__delete", '{"id": 3}')
    session.on_response_done(run.response_id, None, "tool_calls")
    events = drain(session)
    request = events[-1]["response"]["output"][0]
    assert request["type"] == "mcp_approval_request" and request["arguments"] == '{"id": 3}'
    assert not [c for c in session.take_commands() if isinstance(c, CallMcpTool)]
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    session.receive(json.dumps({"type": "conversation.item.create", "event_id": "e1", "item": answer}))
    assert names(drain(session)) == ["conversation.item.added", "conversation.item.done"]
    session.receive(json.dumps({"type": "conversation.item.create", "event_id": "e2", "item": answer}))
    error = drain(session)[0]["error"]
    assert (error["param"], error["event_id"]) == ("item.approval_request_id", "e2")
    session.receive(json.dumps({"type": "response.create"}))
    events = drain(session)
    assert names(events)[names(events).index("response.output_item.added") :] == [
        "response.output_item.added",
        "conversation.item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
    ]
    (call,) = session.take_commands()
    assert isinstance(call, CallMcpTool) and call.tool == "delete"
    added = next(e for e in events if e["type"] == "response.output_item.added")["item"]
    assert added["approval_request_id"] == request["id"]


def test_a_rejection_is_what_the_model_is_told() -> None:
    session, _ = listed_session({**TOOL, "require_approval": {"never": {"tool_names": ["search"]}}})
    run = ask(session)
    session.on_tool_call(run.response_id, 0, "call_1", "docs__delete", "{}")
    session.on_response_done(run.response_id, None, "tool_calls")
    request = drain(session)[-1]["response"]["output"][0]
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": False}
    session.receive(json.dumps({"type": "conversation.item.create", "item": {**answer, "reason": "no"}}))
    session.receive(json.dumps({"type": "response.create"}))
    (run,) = [c for c in session.take_commands() if isinstance(c, RunResponse)]
    assert run.messages[-1] == {
        "role": "tool",
        "tool_call_id": request["id"],
        "content": "Error: the user did not approve this call: no",
    }


def test_listing_failure_and_refusals() -> None:
    session = RealtimeSession(defaults(mcp_allowed_hosts=("127.0.0.1:9000",)), "ga")
    session.open()
    drain(session)
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [TOOL]}}))
    drain(session)
    (listing,) = [c for c in session.take_commands() if isinstance(c, ListMcpTools)]
    session.on_mcp_tools_listed(listing.request_id, None, "cannot connect")
    events = drain(session)
    assert names(events) == ["mcp_list_tools.failed", "error", "conversation.item.done"]
    assert "cannot connect" in events[1]["error"]["message"]
    other = {**TOOL, "server_url": "http://10.0.0.1:9000/mcp"}
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [other]}}))
    assert drain(session)[0]["error"]["code"] == "mcp_host_not_allowed"
    twice = [TOOL, {**TOOL, "server_url": "http://127.0.0.1:9000/other"}]
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": twice}}))
    assert "labels must be unique" in drain(session)[0]["error"]["message"]
    choice = {"type": "mcp", "server_label": "nope"}
    session.receive(json.dumps({"type": "response.create", "response": {"tool_choice": choice}}))
    assert drain(session)[0]["error"]["param"] == "response.tool_choice.server_label"


def test_filters() -> None:
    search, delete, read = LISTED
    assert is_allowed({"allowed_tools": {"read_only": True}}, read) and not is_allowed(
        {"allowed_tools": {"read_only": True}}, delete
    )
    assert needs_approval({}, search)  # the API's default: always
    assert not needs_approval({"require_approval": "never"}, search)
    rule = {"require_approval": {"never": {"read_only": True}, "always": {"tool_names": ["read"]}}}
    assert needs_approval(rule, read) and needs_approval(rule, delete)
    assert not needs_approval({"require_approval": {"never": {"read_only": True}}}, read)
    assert mcp_chat_name("a.b", "c d") == "a_b__c_d"
    long = mcp_chat_name("x" * 40, "y" * 40)
    assert len(long) == 64 and long != mcp_chat_name("x" * 40, "y" * 41)


def test_results_and_errors_as_the_api_reports_them() -> None:
    from mcp import MCPError

    image = ImageContent(type="image", data="AAAA", mime_type="image/png")
    result = CallToolResult(content=[TextContent(type="text", text="a"), image])
    text = result_text(result)
    assert text.startswith("a\n") and json.loads(text.split("\n", 1)[1])["mimeType"] == "image/png"
    assert bounded("é" * 10, 5) == "éé\n[output truncated: 20 bytes, this server keeps 5]"
    assert call_error(MCPError(-32602, "bad params")) == McpCallError(McpErrorKind.PROTOCOL, "bad params", -32602)
    assert McpCallError(McpErrorKind.TOOL_EXECUTION, "x").to_wire() == {"type": "tool_execution_error", "message": "x"}
    assert McpCallError(McpErrorKind.HTTP, "HTTP 502", 502).to_wire() == {
        "type": "http_error",
        "code": 502,
        "message": "HTTP 502",
    }


def test_a_tool_choice_of_type_mcp() -> None:
    session, _ = listed_session()
    choice = {"type": "mcp", "server_label": "docs", "name": "search"}
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tool_choice": choice}}))
    assert names(drain(session)) == ["session.updated"]
    run = ask(session)
    assert run.tool_choice == {"type": "function", "function": {"name": "docs__search"}}
    session.on_tool_call(run.response_id, 0, "call_1", "docs__search", "{}")
    session.on_response_done(run.response_id, None, "tool_calls")
    (call,) = [c for c in session.take_commands() if isinstance(c, CallMcpTool)]
    session.on_mcp_call_done(call.request_id, "ok", None)
    (again,) = session.take_commands()
    assert isinstance(again, RunResponse) and again.tool_choice == "auto"  # forced once, not forever
    any_tool = {"type": "mcp", "server_label": "docs"}
    session.on_response_done(run.response_id, None, "stop")
    session.receive(json.dumps({"type": "response.create", "response": {"tool_choice": any_tool}}))
    (run,) = [c for c in session.take_commands() if isinstance(c, RunResponse)]
    assert run.tool_choice == "required"
    missing = {"type": "mcp", "server_label": "other"}
    session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tool_choice": missing}}))
    assert drain(session)[-1]["error"]["param"] == "session.tool_choice.server_label"


def test_a_session_connects_to_a_bounded_number_of_servers() -> None:
    from session.mcp import MAX_MCP_SERVERS

    session = RealtimeSession(DEFAULTS, "ga")
    session.open()
    drain(session)
    for index in range(MAX_MCP_SERVERS + 2):
        tool = {**TOOL, "server_url": f"http://127.0.0.1:{9000 + index}/mcp"}
        session.receive(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [tool]}}))
    events = drain(session)
    listings = [c for c in session.take_commands() if isinstance(c, ListMcpTools)]
    assert len(listings) == MAX_MCP_SERVERS
    assert names(events).count("mcp_list_tools.failed") == 2
