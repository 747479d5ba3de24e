"""The MCP servers of one session, on the pipeline side: connections made with the official `mcp` SDK, their tools
listed, their calls run, and everything closed with the session.

The session core says what to do (`ListMcpTools`, `CallMcpTool`, `CancelResponse`) and hears back through the
`McpPort` (the connection). Each server gets one MCP client session, opened by a task of its own that keeps it open
until the Realtime session ends (the SDK's transports are task-scoped contexts); calls are tasks of their own over
it, bounded by `MCP_CALL_TIMEOUT_S`, and cancelled with their response. Streamable HTTP is the transport, SSE for a
URL whose path ends in `/sse` (the older transport's usual endpoint).

Failures become `McpCallError`s here, where the SDK's exceptions enter: a JSON-RPC error keeps its code, an HTTP
error its status, a timeout or an unreachable server the JSON-RPC codes the SDK uses for them. Credentials (headers,
`authorization`) never reach a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx2
from loguru import logger
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent

from protocol import JsonDict
from session.commands import CallMcpTool, CancelResponse, ListMcpTools, McpCallError, McpErrorKind, McpServer


@dataclass(frozen=True)
class McpLimits:
    list_timeout_s: float = 10.0
    call_timeout_s: float = 30.0
    max_output_bytes: int = 65_536


class McpPort(Protocol):
    async def on_mcp_tools_listed(self, request_id: str, tools: list[JsonDict] | None, failure: str | None) -> None: ...

    async def on_mcp_call_done(self, request_id: str, output: str | None, error: McpCallError | None) -> None: ...


class McpUnavailable(Exception):
    """The server's MCP session is not open (listing failed, or the connection was lost)."""


class _ServerSession:
    """One MCP server's client session, held open by its own task until `close`."""

    def __init__(self, server: McpServer, limits: McpLimits) -> None:
        self.server = server
        self._limits = limits
        self._ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._hold(), name=f"mcp-{server.label}")

    async def client(self) -> Client:
        return await asyncio.shield(self._ready)

    async def _hold(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(self._limits.list_timeout_s):
                    client = await stack.enter_async_context(_connect(self.server, self._limits))
                self._ready.set_result(client)
                await self._closing.wait()
        except asyncio.CancelledError:
            if not self._ready.done():
                self._ready.set_exception(McpUnavailable("closed"))
            raise
        except Exception as exc:  # the SDK's task groups raise exception groups (Exceptions too)
            leaf = _leaf(exc)
            if not self._ready.done():
                self._ready.set_exception(leaf if isinstance(leaf, Exception) else McpUnavailable(str(leaf)))
            else:
                logger.warning(f"MCP server '{self.server.label}': connection lost ({_describe(leaf)})")
        finally:
            if not self._ready.done():
                self._ready.set_exception(McpUnavailable("closed"))
            if self._ready.done() and not self._ready.cancelled():
                self._ready.exception()  # retrieved: a failure nobody awaited is not "never retrieved"

    async def close(self) -> None:
        self._closing.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def _connect(server: McpServer, limits: McpLimits) -> AsyncIterator[Client]:
    headers = server.request_headers()
    timeout = httpx2.Timeout(limits.list_timeout_s, read=max(limits.call_timeout_s, limits.list_timeout_s) + 5)
    if urlsplit(server.url).path.rstrip("/").endswith("/sse"):
        transport: Any = sse_client(server.url, headers=headers, timeout=limits.list_timeout_s)
        async with Client(transport, cache=None) as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(server.url, http_client=http), cache=None) as client,
    ):
        yield client


class McpSessions:
    """A Realtime session's MCP servers (see the module docstring)."""

    def __init__(self, port: McpPort, limits: McpLimits, session_id: str) -> None:
        self._port = port
        self._limits = limits
        self._session_id = session_id
        self._servers: dict[McpServer, _ServerSession] = {}
        self._calls: dict[str, tuple[str, asyncio.Task[None]]] = {}  # item id → (response id, task)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def execute(self, command: ListMcpTools | CallMcpTool | CancelResponse) -> None:
        if self._closed:
            return
        match command:
            case ListMcpTools():
                self._spawn(self._list(command), f"mcp-list-{command.request_id}")
            case CallMcpTool():
                task = self._spawn(self._call(command), f"mcp-call-{command.request_id}")
                self._calls[command.request_id] = (command.response_id, task)
                task.add_done_callback(lambda _task, key=command.request_id: self._calls.pop(key, None))
            case CancelResponse():
                for response_id, task in list(self._calls.values()):
                    if response_id == command.response_id:
                        task.cancel()

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _list(self, command: ListMcpTools) -> None:
        server = command.server
        previous = self._servers.pop(server, None)
        if previous is not None:  # listed again after a failure: a fresh connection
            await previous.close()
        session = self._servers[server] = _ServerSession(server, self._limits)
        try:
            async with asyncio.timeout(self._limits.list_timeout_s):
                client = await session.client()
                tools = await _list_tools(client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = _describe(_leaf(exc))
            logger.warning(f"Session {self._session_id}: MCP server '{server.label}' ({_where(server)}): {reason}")
            await self._port.on_mcp_tools_listed(command.request_id, None, reason)
            return
        logger.info(f"Session {self._session_id}: MCP server '{server.label}' lists {len(tools)} tool(s)")
        await self._port.on_mcp_tools_listed(command.request_id, tools, None)

    async def _call(self, command: CallMcpTool) -> None:
        try:
            output = await self._run_call(command)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = call_error(_leaf(exc))
            logger.info(f"Session {self._session_id}: MCP call {command.server.label}.{command.tool}: {error.message}")
            await self._port.on_mcp_call_done(command.request_id, None, error)
            return
        if isinstance(output, McpCallError):
            await self._port.on_mcp_call_done(command.request_id, None, output)
        else:
            await self._port.on_mcp_call_done(command.request_id, output, None)

    async def _run_call(self, command: CallMcpTool) -> str | McpCallError:
        session = self._servers.get(command.server)
        if session is None:
            raise McpUnavailable(f"the MCP server '{command.server.label}' is not connected")
        client = await session.client()
        try:
            async with asyncio.timeout(self._limits.call_timeout_s):
                result = await client.call_tool(command.tool, command.arguments)
        except TimeoutError:
            seconds = self._limits.call_timeout_s
            return McpCallError(McpErrorKind.PROTOCOL, f"The tool call timed out after {seconds:g} s.", REQUEST_TIMEOUT)
        text = bounded(result_text(result), self._limits.max_output_bytes)
        if result.is_error:
            return McpCallError(McpErrorKind.TOOL_EXECUTION, text)
        return text

    async def close(self) -> None:
        """Cancels the calls in flight and closes every server's session."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(server.close() for server in servers), return_exceptions=True)


async def _list_tools(client: Client) -> list[JsonDict]:
    tools: list[JsonDict] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            entry: JsonDict = {"name": tool.name, "input_schema": tool.input_schema}
            if tool.description:
                entry["description"] = tool.description
            if tool.annotations is not None:
                entry["annotations"] = tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
            tools.append(entry)
        cursor = page.next_cursor
        if not cursor:
            return tools


def result_text(result: CallToolResult) -> str:
    """A tool's result as the text the model reads: its text blocks, other blocks (and structured content, when
    there is nothing else) as JSON."""
    pieces = []
    for block in result.content:
        if isinstance(block, TextContent):
            pieces.append(block.text)
        else:
            pieces.append(json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True)))
    if not pieces and result.structured_content is not None:
        pieces.append(json.dumps(result.structured_content))
    return "\n".join(pieces)


def bounded(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    kept = data[:max_bytes].decode(errors="ignore")
    return f"{kept}\n[output truncated: {len(data)} bytes, this server keeps {max_bytes}]"


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside the SDK's (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def call_error(exc: BaseException) -> McpCallError:
    """A failed call as the API reports it (see the module docstring)."""
    if isinstance(exc, MCPError):
        return McpCallError(McpErrorKind.PROTOCOL, exc.message, exc.code)
    if isinstance(exc, httpx2.HTTPStatusError):
        return McpCallError(McpErrorKind.HTTP, f"HTTP {exc.response.status_code}", exc.response.status_code)
    if isinstance(exc, TimeoutError):
        return McpCallError(McpErrorKind.PROTOCOL, "The MCP server did not answer in time.", REQUEST_TIMEOUT)
    return McpCallError(McpErrorKind.PROTOCOL, f"The MCP server is unavailable: {_describe(exc)}", CONNECTION_CLOSED)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MCPError):
        return f"{exc.message} (code {exc.code})"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, httpx2.TransportError):
        return f"cannot connect ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _where(server: McpServer) -> str:
    """Where a server is, for logs: no path or query (a URL may carry a token)."""
    parts = urlsplit(server.url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
