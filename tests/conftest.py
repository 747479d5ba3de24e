"""Fixtures: the fake OpenAI provider in a thread, and the real server started the way users start it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.fakes.openai_fake import FakeOpenAI

if TYPE_CHECKING:
    from tests.in_process import InProcessServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, object]:
        return httpx.get(f"{self.base_url}/health", timeout=5).json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(
    env: dict[str, str], port: int | None = None, wait: bool = True, launcher: list[str] | None = None
) -> RunningServer:
    """Starts `python main.py` with `env` added to a clean environment (no `.env` from the developer's checkout).

    `launcher` replaces `main.py` as the script run (it must run main.py itself, like tests/offline_guard.py)."""
    port = port or free_port()
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "LLM_", "TTS_"))}
    full_env.update({"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "LOG_LEVEL": "INFO", **env})
    workdir = Path(tempfile.mkdtemp(prefix="realtime-server-"))  # no .env there
    log_path = workdir / "server.log"
    process = subprocess.Popen(
        [sys.executable, *(launcher or [str(ROOT / "main.py")])],
        cwd=workdir,
        env=full_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = RunningServer(process, port, log_path)
    if wait:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if server.health()["status"] == "healthy":
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        server.stop()
        raise RuntimeError(f"server did not become healthy:\n{server.log()}")
    return server


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture
def fake(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """The shared fake, with scripts and request log cleared for this test."""
    httpx.post(f"http://127.0.0.1:{fake_openai.port}/_fake/reset")
    return fake_openai


def provider_env(fake: FakeOpenAI) -> dict[str, str]:
    return {
        "STT_PROVIDER": "openai_whisper",
        "LLM_PROVIDER": "openai",
        "TTS_PROVIDER": "openai_tts",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test-fake-key-0123456789",
        "OPENAI_MODEL": "fake-chat-model",
        "LLM_TIMEOUT_S": "3",
        "TTS_TIMEOUT_S": "3",
        "STT_TIMEOUT_S": "3",
    }


@pytest.fixture(scope="session")
def server(fake_openai: FakeOpenAI) -> Iterator[RunningServer]:
    """The server, on the OpenAI providers pointed at the fake."""
    running = start_server(provider_env(fake_openai))
    yield running
    running.stop()


@pytest.fixture
def server_factory(fake_openai: FakeOpenAI) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def factory(**env: str) -> RunningServer:
        running = start_server({**provider_env(fake_openai), **env})
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


def script(
    fake: FakeOpenAI,
    chat: list[dict] | None = None,
    speech: list[dict] | None = None,
    transcription: list[dict] | None = None,
) -> None:
    steps = {"chat": chat or [], "speech": speech or [], "transcription": transcription or []}
    httpx.post(f"http://127.0.0.1:{fake.port}/_fake/script", json=steps)


def fake_requests(fake: FakeOpenAI, path: str | None = None) -> list[dict]:
    requests = httpx.get(f"http://127.0.0.1:{fake.port}/_fake/requests").json()
    return [request for request in requests if path is None or request["path"] == path]


@pytest.fixture
def in_process(fake: FakeOpenAI) -> Iterator[InProcessServer]:
    """The app served in this process (a thread with its own loop), to count its tasks and measure its memory."""
    from tests.in_process import InProcessServer, in_process_settings

    with InProcessServer(in_process_settings(fake)) as running:
        yield running
