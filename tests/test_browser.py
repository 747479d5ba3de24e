"""A real headless Chromium against the server: the console page at `/` makes a WebRTC call, its fake microphone
speaks a fixture, and the page shows both sides' transcript and plays the reply (read through DevTools)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.browser import chromium_page, microphone_wav
from tests.support.servers import RunningServer


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
