"""A real headless Chromium against the server: the console page at `/` makes a WebRTC call, its fake microphone
speaks a fixture, and the page shows both sides' transcript and plays the reply (read through DevTools)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from openai import AsyncOpenAI

from tests.support.browser import chromium_page, microphone_wav
from tests.support.servers import ROOT, RunningServer

BROWSER_DIR = ROOT / "tests" / "browser"


async def wait_for_sessions(server: RunningServer, count: int, timeout_s: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        active = (await asyncio.to_thread(server.health))["active_sessions"]
        if active == count or loop.time() > deadline:
            return active
        await asyncio.sleep(0.2)


async def test_console_page_spoken_turn(server: RunningServer, tmp_path: Path) -> None:
    microphone = microphone_wav(tmp_path, "question.wav")
    async with chromium_page(f"{server.base_url}/?autostart", microphone) as page:
        await page.wait_for("window.consoleState && window.consoleState.sessionId", 20)
        # The loopback STT says "hello"; the loopback LLM answers naming it, and the reply plays aloud.
        user = await page.wait_for("window.consoleState.user.length && window.consoleState.user[0]", 30)
        assert user == "hello"
        assistant = await page.wait_for(
            "window.consoleState.events.includes('response.done') && window.consoleState.assistant[0]", 20
        )
        assert "hello" in assistant.lower()
        await page.wait_for("window.consoleState.events.includes('output_audio_buffer.stopped')", 20)
        assert await page.evaluate("window.consoleState.replyPeak") > 0.05  # the tone, not silence
        assert await page.evaluate("window.consoleState.errors") == []
        assert await page.evaluate("window.consoleState.events.includes('response.output_audio.delta')") is False
        await page.evaluate("document.getElementById('stop').click()")
        assert await wait_for_sessions(server, 0, 10) == 0


@contextlib.contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """`directory` over HTTP on a port of its own: a page from another origin than the server's."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def log_message(self, format: str, *args: object) -> None:
        return None


async def test_agents_sdk_webrtc_transport(server: RunningServer, tmp_path: Path) -> None:
    """`OpenAIRealtimeWebRTC` from @openai/agents-realtime, on a page of another origin, `baseUrl` pointing here,
    with an ephemeral secret (as the SDK requires in a browser): one spoken turn."""
    secret = await AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="dummy").realtime.client_secrets.create(
        session={"type": "realtime"}
    )
    microphone = microphone_wav(tmp_path, "question.wav", lead_ms=3000)
    with static_site(BROWSER_DIR) as site:
        query = urllib.parse.urlencode({"server": server.base_url, "key": secret.value})
        async with chromium_page(f"{site}/agents.html?{query}", microphone) as page:
            await page.wait_for(
                "window.agentState && (window.agentState.connected || window.agentState.errors.length)", 30
            )
            assert await page.evaluate("window.agentState.errors") == []
            try:
                await page.wait_for("window.agentState.events.includes('output_audio_buffer.stopped')", 40)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\nserver log:\n{server.log()[-3000:]}") from None
            history = await page.evaluate("window.agentState.history")
            roles = [entry["role"] for entry in history]
            assert roles[:2] == ["user", "assistant"], history
            assert "hello" in history[1]["text"].lower(), history
            events = await page.evaluate("window.agentState.events")
            assert "response.output_audio.delta" not in events
            assert await page.evaluate("window.agentState.errors") == []
