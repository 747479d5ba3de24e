"""A real MCP server for the tests: the `mcp` SDK's own `MCPServer` (FastMCP in mcp 1.x) over streamable HTTP on
loopback, in a thread, with tools that answer, take long, and fail; it records the headers each request carried."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from tests.support.servers import free_port

SLOW_TOOL_S = 10.0


def build_server() -> MCPServer:
    server = MCPServer("weather-test")

    @server.tool(description="Current weather for a city.")
    def get_weather(city: str) -> str:
        return f"Sunny and 24 degrees in {city}."

    @server.tool(description="Searches the weather archive (takes a while).")
    async def slow_search(query: str) -> str:
        await asyncio.sleep(SLOW_TOOL_S)
        return f"Nothing found for {query}."

    @server.tool(description="Reads the rain sensor.")
    def read_sensor() -> str:
        raise ToolError("The rain sensor is broken.")

    @server.tool(description="The local time.", annotations=ToolAnnotations(readOnlyHint=True))
    def local_time() -> str:
        return "It is 10:42."

    return server


class LoopbackMcpServer:
    """`build_server()` served by uvicorn on 127.0.0.1: `url` is its streamable HTTP endpoint, or with `sse` its
    endpoint of the older SSE transport."""

    def __init__(self, sse: bool = False) -> None:
        self.port = free_port()
        self.sse = sse
        self.headers: list[dict[str, str]] = []  # of every HTTP request, lower-case names (and its method)
        app = build_server().sse_app() if sse else build_server().streamable_http_app()

        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                self.headers.append({**headers, "x-request-method": scope["method"]})
            await app(scope, receive, send)

        config = uvicorn.Config(recording, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="mcp-test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{'sse' if self.sse else 'mcp'}"

    def start(self) -> LoopbackMcpServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
