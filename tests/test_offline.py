"""The offline default (local Whisper, llama.cpp, Piper) end to end, with the network refused: real models."""

from __future__ import annotations

import asyncio
import base64
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audio_utils import PIPELINE_INPUT_RATE, resample
from config import Settings
from local_models import LocalWhisper, default_cache_dir, whisper_model_path
from tests.support.audio_fixtures import chunks, pcm24k, silence24k
from tests.support.realtime_client import RealtimeTestClient, connect
from tests.support.servers import ROOT, RunningServer, start_server

INSTRUCTIONS = "You are a weather assistant. Answer in one short sentence that names the city and the weather."


@pytest.fixture(scope="module")
def offline_server() -> Iterator[tuple[RunningServer, Path]]:
    """The server as `make run` starts it (no provider settings at all), every outside connection refused."""
    blocked = Path(tempfile.mkdtemp(prefix="offline-")) / "blocked.log"
    blocked.touch()
    home = blocked.parent / "home"  # a home of its own: what native code (which the guard cannot see) leaves there
    env = {
        "LLM_TEMPERATURE": "0",
        "HF_HUB_OFFLINE": "0",  # nothing may need a hub, even when allowed to try
        "HOME": str(home),
        "REALTIME_CACHE_DIR": str(default_cache_dir()),
    }
    running = start_server(env, launcher=[str(ROOT / "tests" / "support" / "offline_guard.py"), str(blocked)])
    yield running, blocked
    running.stop()
    assert blocked.read_text() == "", f"the server tried to reach the network:\n{blocked.read_text()}"
    # ONNX Runtime's telemetry (C++, so no audit hook sees its DNS queries) keeps its device id and queue here.
    assert not (home / ".cache" / "Microsoft").exists(), "ONNX Runtime's telemetry ran"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def speak(client: RealtimeTestClient, audio: bytes) -> None:
    for chunk in chunks(audio, 40, 48):
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


async def test_spoken_question_gets_a_spoken_answer(offline_server: tuple[RunningServer, Path]) -> None:
    server, _ = offline_server
    assert "Providers: {'stt': 'local_whisper', 'llm': 'local', 'tts': 'piper'}" in server.log()
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": INSTRUCTIONS,
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        )
        await client.until("session.updated")
        await speak(client, pcm24k("question.wav") + silence24k(800))
        events = await client.until("response.done", timeout=60)
    kinds = [event["type"] for event in events]
    assert "input_audio_buffer.speech_stopped" in kinds
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert {"weather", "today"} <= words(heard["transcript"]), heard["transcript"]
    done = events[-1]["response"]
    assert done["status"] == "completed"
    transcript = done["output"][0]["content"][0]["transcript"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert len(audio) > 48 * 500  # at least half a second of speech
    # Run the reply's audio back through the local STT: it says (about) what its transcript says.
    whisper = LocalWhisper.load(whisper_model_path("tiny.en", Settings(_env_file=None).model_cache_dir or Path()))
    back = await whisper.transcribe(resample(audio, 24_000, PIPELINE_INPUT_RATE), "en")
    said, meant = words(back.text), words(transcript)
    assert len(said & meant) >= max(2, len(meant) // 2), (back.text, transcript)
    assert said & {"weather", "paris", "sunny", "rain", "cloudy", "degrees", "today", "warm", "cold"}, back.text


async def test_text_turn_with_the_local_llm(offline_server: tuple[RunningServer, Path]) -> None:
    server, _ = offline_server
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is the capital of France? Answer in one word."}],
                },
            }
        )
        await client.send(
            {
                "type": "response.create",
                "response": {"output_modalities": ["text"], "instructions": "You answer questions briefly."},
            }
        )
        events = await client.until("response.done", timeout=60)
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert "paris" in done["output"][0]["content"][0]["text"].lower()
    assert done["usage"]["output_tokens"] > 0 and done["usage"]["input_tokens"] > 10


async def test_two_sessions_at_once_both_progress(offline_server: tuple[RunningServer, Path]) -> None:
    """The second session's answer starts while the first is still generating, not after it."""
    server, _ = offline_server
    question = "Count from one to thirty, as words, separated by commas."

    async def ask() -> tuple[float, float]:
        async with connect(server.base_url) as client:
            await client.until("conversation.created")
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]},
                }
            )
            await client.send(
                {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 120}}
            )
            started = time.monotonic()
            first = None
            while True:
                event = await client.recv(timeout=60)
                if event["type"] == "response.output_text.delta" and first is None:
                    first = time.monotonic() - started
                if event["type"] == "response.done":
                    return first or 0.0, time.monotonic() - started

    (first_a, total_a), (first_b, total_b) = await asyncio.gather(ask(), ask())
    assert first_b < total_a and first_a < total_b, (first_a, total_a, first_b, total_b)


def test_the_guard_refuses_and_records_outside_connections(tmp_path: Path) -> None:
    import subprocess
    import sys

    log = tmp_path / "blocked.log"
    code = (
        "import socket, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tests.support.offline_guard import install; install(Path(sys.argv[2]));"
        "socket.getaddrinfo('localhost', 80);"
        "socket.create_connection(('203.0.113.7', 443), timeout=0.2)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), str(log)], capture_output=True, text=True)
    assert "PermissionError" in result.stderr
    assert log.read_text().splitlines() == ["socket.getaddrinfo '203.0.113.7'"]  # refused before the connect


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOCAL_LLM_MODEL": "/nonexistent/model.gguf"}, "/nonexistent/model.gguf"),
        ({"WHISPER_MODEL": "/nonexistent/whisper"}, "/nonexistent/whisper"),
        ({"PIPER_VOICE": "/nonexistent/voice.onnx"}, "/nonexistent/voice.onnx"),
    ],
)
def test_missing_model_files_stop_startup_with_a_clear_message(tmp_path: Path, env: dict, named: str) -> None:
    import os
    import subprocess
    import sys

    clean = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "LLM_", "TTS_", "STT_"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr


async def test_local_llm_tool_call_is_recognised(offline_server: tuple[RunningServer, Path]) -> None:
    """Qwen 0.5B writes its tool calls as JSON text; they surface as `function_call` items all the same."""
    server, _ = offline_server
    weather = {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "tools": [weather],
                    "tool_choice": "required",
                    "output_modalities": ["text"],
                    "instructions": "You are an assistant that uses tools to answer.",
                },
            }
        )
        await client.until("session.updated")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is the weather in Paris right now?"}],
                },
            }
        )
        await client.send({"type": "response.create"})
        events = await client.until("response.done", timeout=60)
    output = events[-1]["response"]["output"]
    calls = [item for item in output if item["type"] == "function_call"]
    assert calls, output
    assert calls[0]["name"] == "get_weather"
    assert "paris" in calls[0]["arguments"].lower()
    assert any(event["type"] == "response.function_call_arguments.done" for event in events)


async def test_image_to_a_provider_without_vision_is_a_clear_error(offline_server: tuple[RunningServer, Path]) -> None:
    server, _ = offline_server
    image = "data:image/png;base64,iVBORw0KGgo="
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Describe this."},
                        {"type": "input_image", "image_url": image},
                    ],
                },
            }
        )
        item = (await client.until("conversation.item.done"))[-1]["item"]
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await client.until("response.done", timeout=30)
        error = next(event for event in events if event["type"] == "error")["error"]
        assert error["code"] == "images_not_supported" and "local" in error["message"]
        assert events[-1]["response"]["status"] == "failed"
        await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        retrieved = await client.expect("conversation.item.retrieved")
        assert retrieved["item"]["content"][1]["type"] == "input_image"  # the item stays
