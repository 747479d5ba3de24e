"""A session's MCP servers as the core sees them: which are listed, which of their tools the model may call, and
which calls wait for the client's approval.

Pure, like the rest of the core: connecting to a server and calling its tools is the pipeline side's work
(`mcp_client.py`), which gets `ListMcpTools` and `CallMcpTool` commands and reports back. Each server (its label,
URL and credentials) is listed once per session, in an `mcp_list_tools` conversation item
(`ListingState`: LISTING → LISTED or FAILED; a failed one is listed again when a later update names it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from protocol import JsonDict, ProtocolError, ServerEvent, error_event, new_id
from session.commands import ListMcpTools, McpServer
from session.conversation import Conversation, StoredItem, mcp_chat_name
from session.outbox import Outbox

MAX_MCP_SERVERS = 16  # per session: each is a connection the server keeps open for it


def mcp_server(tool: JsonDict) -> McpServer:
    """The server an `mcp` tool names (validated by `wire.canonical.check_tool`)."""
    return McpServer(
        label=tool["server_label"],
        url=tool["server_url"],
        headers=tuple(sorted((tool.get("headers") or {}).items())),
        authorization=tool.get("authorization"),
    )


def mcp_tools_of(tools: list[JsonDict]) -> list[JsonDict]:
    return [tool for tool in tools if tool.get("type") == "mcp"]


def _matches(rule: JsonDict | None, tool: JsonDict) -> bool:
    """Whether an MCP tool filter (`tool_names`, `read_only`) selects `tool`; an empty filter selects none."""
    if not rule or (rule.get("tool_names") is None and rule.get("read_only") is None):
        return False
    names, read_only = rule.get("tool_names"), rule.get("read_only")
    if names is not None and tool["name"] not in names:
        return False
    hint = bool((tool.get("annotations") or {}).get("readOnlyHint"))
    return read_only is None or hint == read_only


def is_allowed(config: JsonDict, tool: JsonDict) -> bool:
    allowed = config.get("allowed_tools")
    if allowed is None:
        return True
    if isinstance(allowed, list):
        return tool["name"] in allowed
    return _matches(allowed, tool)


def needs_approval(config: JsonDict, tool: JsonDict) -> bool:
    """`require_approval`: `always` (the API's default), `never`, or filters; a tool no filter selects needs it."""
    rule: Any = config.get("require_approval")
    if rule is None or rule == "always":
        return True
    if rule == "never":
        return False
    if _matches(rule.get("always"), tool):
        return True
    return not _matches(rule.get("never"), tool)


@dataclass(frozen=True)
class McpBinding:
    """What a chat tool name the LLM calls stands for: one tool of one MCP server."""

    server: McpServer
    tool: str
    approval: bool


class ListingState(Enum):
    LISTING = "listing"
    LISTED = "listed"
    FAILED = "failed"


@dataclass
class _Listing:
    item_id: str
    state: ListingState = ListingState.LISTING
    tools: list[JsonDict] = field(default_factory=list)  # all the server's tools, whatever a config allows


@dataclass
class _Approval:
    binding: McpBinding
    arguments: str
    consumed: bool = False


class McpTools:
    """The session's MCP servers, their tools, and the approval requests waiting for the client."""

    def __init__(self, conversation: Conversation, outbox: Outbox) -> None:
        self._conversation = conversation
        self._outbox = outbox
        self._listings: dict[McpServer, _Listing] = {}
        self._by_item: dict[str, McpServer] = {}
        self._approvals: dict[str, _Approval] = {}  # approval request item id → the call it asks for

    def ensure_listed(self, tools: list[JsonDict]) -> None:
        """Lists the servers these tools name that are not listed (or failed before)."""
        for config in mcp_tools_of(tools):
            server = mcp_server(config)
            listing = self._listings.get(server)
            if listing is not None and listing.state is not ListingState.FAILED:
                continue
            item = {"id": new_id("item"), "type": "mcp_list_tools", "server_label": server.label, "tools": []}
            self._listings[server] = _Listing(item["id"])
            self._by_item[item["id"]] = server
            self._outbox.item_added(self._conversation.add(StoredItem(item)), item)
            self._outbox.emit(ServerEvent.MCP_LIST_TOOLS_IN_PROGRESS, item_id=item["id"])
            if len(self._listings) > MAX_MCP_SERVERS:
                reason = f"a session connects to at most {MAX_MCP_SERVERS} MCP servers"
                self.on_listed(item["id"], None, reason, [])
                del self._listings[server], self._by_item[item["id"]]  # refused: not kept
                continue
            self._outbox.command(ListMcpTools(item["id"], server))

    def is_listing(self, tools: list[JsonDict]) -> bool:
        return any(
            (listing := self._listings.get(mcp_server(config))) is not None and listing.state is ListingState.LISTING
            for config in mcp_tools_of(tools)
        )

    def on_listed(
        self, item_id: str, tools: list[JsonDict] | None, failure: str | None, configs: list[JsonDict]
    ) -> None:
        """The pipeline listed a server's tools (or failed to): the item shows those the session allows."""
        server = self._by_item.get(item_id)
        listing = self._listings.get(server) if server is not None else None
        if server is None or listing is None or listing.item_id != item_id:
            return
        stored = self._conversation.get(item_id)
        if tools is None:
            listing.state = ListingState.FAILED
            self._outbox.emit(ServerEvent.MCP_LIST_TOOLS_FAILED, item_id=item_id)
            message = f"Listing the tools of MCP server '{server.label}' failed: {failure}"
            self._outbox.emit_event(error_event("server_error", "mcp_list_tools_failed", message))
        else:
            listing.state, listing.tools = ListingState.LISTED, tools
            config = next((c for c in mcp_tools_of(configs) if mcp_server(c) == server), {})
            if stored is not None:
                stored.item["tools"] = [copy.deepcopy(tool) for tool in tools if is_allowed(config, tool)]
            self._outbox.emit(ServerEvent.MCP_LIST_TOOLS_COMPLETED, item_id=item_id)
        if stored is not None:
            self._outbox.item_done(self._conversation.previous_id(item_id), stored.item)

    def chat_tools(self, tools: list[JsonDict]) -> tuple[list[JsonDict], dict[str, McpBinding]]:
        """The listed MCP tools these configs allow, as chat tools, and what each chat name stands for."""
        chat: list[JsonDict] = []
        bindings: dict[str, McpBinding] = {}
        for config in mcp_tools_of(tools):
            server = mcp_server(config)
            listing = self._listings.get(server)
            if listing is None or listing.state is not ListingState.LISTED:
                continue
            for tool in listing.tools:
                if not is_allowed(config, tool):
                    continue
                name = mcp_chat_name(server.label, tool["name"])
                bindings[name] = McpBinding(server, tool["name"], needs_approval(config, tool))
                function: JsonDict = {"name": name, "parameters": tool.get("input_schema") or {"type": "object"}}
                description = tool.get("description") or config.get("server_description")
                if description:
                    function["description"] = description
                chat.append({"type": "function", "function": function})
        return chat, bindings

    # ---- approvals -------------------------------------------------------------------------------------------

    def request_approval(self, item_id: str, binding: McpBinding, arguments: str) -> None:
        self._approvals[item_id] = _Approval(binding, arguments)

    def check_approval_response(self, item: JsonDict, param: str, event_id: str | None) -> None:
        request_id = item["approval_request_id"]
        approval = self._approvals.get(request_id)
        if approval is None:
            raise ProtocolError(
                f"No MCP approval request with id '{request_id}' is waiting for an answer.",
                param=f"{param}.approval_request_id",
                event_id=event_id,
            )
        answered = any(
            other.get("type") == "mcp_approval_response" and other.get("approval_request_id") == request_id
            for other in self._conversation.items()
        )
        if answered:
            raise ProtocolError(
                f"The MCP approval request '{request_id}' has been answered already.",
                param=f"{param}.approval_request_id",
                event_id=event_id,
            )

    def take_approved(self) -> list[tuple[str, McpBinding, str]]:
        """The approved calls not run yet (approval request id, what to call, its arguments), in conversation
        order; each is handed out once."""
        approved = []
        for item in self._conversation.items():
            if item.get("type") != "mcp_approval_response" or not item.get("approve"):
                continue
            approval = self._approvals.get(item["approval_request_id"])
            if approval is not None and not approval.consumed:
                approval.consumed = True
                approved.append((item["approval_request_id"], approval.binding, approval.arguments))
        return approved
