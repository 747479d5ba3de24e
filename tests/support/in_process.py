"""An in-process server (uvicorn in a thread with its own loop): to count its asyncio tasks, measure its memory, or
give it a clock of the test's own."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import uvicorn

from config import Settings
from main import create_app
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.servers import free_port


class InProcessServer:
    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.time, startup_timeout_s: float = 30
    ) -> None:
        self.port = settings.server_port
        self.startup_timeout_s = startup_timeout_s
        self.app = create_app(settings, clock=clock)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.server.started and self.health()["status"] == "healthy":
                return self
            time.sleep(0.05)
        raise RuntimeError("the in-process server did not become healthy")

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def task_count(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health").json()


def in_process_settings(fake: FakeOpenAI, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,
        server_port=free_port(),
        openai_base_url=fake.base_url,
        openai_api_key="sk-x",
        stt_provider="openai_whisper",
        llm_provider="openai",
        tts_provider="openai_tts",
        llm_timeout_s=5,
        tts_timeout_s=5,
        **overrides,
    )
