"""The server as users start it (`python main.py` in a process of its own, with a clean environment), for tests."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.fakes.openai_fake import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def provider_key(self) -> str:
        """The key this server sends the OpenAI-compatible fake: a test with a server of its own scripts the fake for
        it (`tests.support.fake_control.script(fake, server.provider_key, …)`)."""
        return self.env.get("OPENAI_API_KEY", "")

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

    `launcher` replaces `main.py` as the script run (it must run main.py itself: tests/support/offline_guard.py)."""
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
    server = RunningServer(process, port, log_path, env)
    if wait:
        wait_until_healthy(server)
    return server


def wait_until_healthy(server: RunningServer, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if server.health()["status"] == "healthy":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


def provider_env(fake: FakeOpenAI, api_key: str | None = None) -> dict[str, str]:
    """All three stages on the OpenAI-compatible fake. Each server gets a key of its own unless one is given."""
    return {
        "STT_PROVIDER": "openai_whisper",
        "LLM_PROVIDER": "openai",
        "TTS_PROVIDER": "openai_tts",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": api_key or f"sk-test-fake-{secrets.token_hex(8)}",
        "OPENAI_MODEL": "fake-chat-model",
        "LLM_TIMEOUT_S": "3",
        "TTS_TIMEOUT_S": "3",
        "STT_TIMEOUT_S": "3",
    }
