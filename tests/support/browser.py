"""A real headless Chromium for tests: Debian's `chromium` (installed by tests/browser/install_chromium.sh), a fake
microphone that plays a WAV file, and the DevTools protocol to read what the page shows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.support.audio_fixtures import pcm24k, silence24k


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is missing: tests/browser/install_chromium.sh installs it (make test runs it)")
    return path


def microphone_wav(directory: Path, fixture: str, lead_ms: int = 2500, tail_ms: int = 60_000) -> Path:
    """The fixture with silence around it: the call connects during the lead, the turn ends in the tail. The tail
    is long because the fake device stops sending once the file has played (`%noloop`), and a call whose microphone
    sends nothing for WEBRTC_PEER_TIMEOUT_S is ended as a vanished peer."""
    path = directory / f"mic-{fixture}"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24_000)
        out.writeframes(silence24k(lead_ms) + pcm24k(fixture) + silence24k(tail_ms))
    return path


class Page:
    """One page over the DevTools protocol."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._next_id = 0

    async def evaluate(self, expression: str) -> Any:
        self._next_id += 1
        message_id = self._next_id
        await self._socket.send(
            json.dumps(
                {
                    "id": message_id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True, "awaitPromise": True},
                }
            )
        )
        while True:
            reply = json.loads(await self._socket.recv())
            if reply.get("id") == message_id:
                result = reply["result"]
                if "exceptionDetails" in result:
                    raise RuntimeError(f"page error: {result['exceptionDetails']}")
                return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float) -> Any:
        """Polls `expression` until it is truthy; returns its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                state = await self.evaluate("JSON.stringify(window.consoleState || window.agentState || {})")
                raise TimeoutError(f"{expression} still false after {timeout_s}s; page state: {state}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def chromium_page(url: str, microphone: Path) -> AsyncIterator[Page]:
    """Chromium headless on `url`, its microphone playing `microphone` once."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    process = await asyncio.create_subprocess_exec(
        chromium_path(),
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
                pages = [target for target in targets if target.get("type") == "page"]
                if pages:
                    break
                await asyncio.sleep(0.1)
        async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as socket:
            yield Page(socket)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(profile, ignore_errors=True)
