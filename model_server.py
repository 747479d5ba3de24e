"""The local LLM in a process of its own, shared by the workers of one server (`python main.py` with WORKERS > 1 and
LLM_PROVIDER=local): llama.cpp's server, which xllamacpp embeds, loaded once instead of once per worker.

The supervisor starts it before the workers (`ModelServer.start`); it loads the model as a single process would
(slots primed with the default instructions), then prints one JSON line: the loopback address of llama.cpp's
OpenAI-compatible HTTP server and the random key it wants. The workers reach it over loopback with the
OpenAI-compatible LLM provider (`providers.openai_compatible`). It ends when its standard input closes: when the
supervisor stops, however it stops.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

MODEL_SERVER_VARIABLE = "REALTIME_MODEL_SERVER"  # the JSON line, handed to the workers in their environment


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str
    model: str

    def to_json(self) -> str:
        return json.dumps({"base_url": self.base_url, "api_key": self.api_key, "model": self.model})

    @classmethod
    def from_json(cls, text: str) -> Endpoint:
        data = json.loads(text)
        return cls(data["base_url"], data["api_key"], data["model"])


class ModelServerFailed(RuntimeError):
    """The model server exited before it was ready (its own log line says why)."""


class ModelServer:
    """The supervisor's handle on the model-server process."""

    def __init__(self, process: subprocess.Popen[str], endpoint: Endpoint) -> None:
        self.process = process
        self.endpoint = endpoint

    @classmethod
    def start(cls) -> ModelServer:
        """Starts the process and waits until the model is loaded (blocking: nothing serves yet)."""
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait()
            raise ModelServerFailed(f"the model server exited with {process.returncode} before it was ready")
        return cls(process, Endpoint.from_json(line))

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve() -> None:
    """The process itself: load, announce, wait for the supervisor to go."""
    from config import get_settings
    from providers.local import LocalChat

    # Ctrl-C reaches the whole process group: the supervisor decides when this process ends (it closes the pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = get_settings()
    logger.remove()
    logger.add(sys.stderr, level=settings.log_level.upper())
    chat = LocalChat(settings)
    asyncio.run(chat.load())
    base_url, api_key = chat.http_endpoint()
    logger.info(f"Model server: the local LLM at {base_url} for every worker")
    print(Endpoint(base_url, api_key, chat.model_name).to_json(), flush=True)
    sys.stdin.read()  # returns when the supervisor closes the pipe or dies
    asyncio.run(chat.close())


if __name__ == "__main__":
    serve()
