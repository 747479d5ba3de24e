"""Every way of starting the server behaves the same: `python main.py`, `uvicorn main:app` (with `--workers`), bad
settings and corrupt models refused with one line and an exit code of their own."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import script
from tests.support.realtime_client import connect
from tests.support.servers import ROOT, RunningServer, free_port, provider_env, start_server, wait_until_healthy

EXIT_CONFIGURATION = 2
EXIT_MODELS_FAILED = 3
WS_MAX_SIZE = "50331648"  # what the startup warning asks for: twice MAX_EVENT_BYTES
BAD_SETTINGS = [
    ("LLM_PROVIDER", "foo", "'local', 'openai'"),
    ("VAD_THRESHOLD", "1.5", "less than or equal to 1"),
    ("VAD_THRESHOLD", "abc", "valid number"),
    ("SERVER_PORT", "99999", "less than or equal to 65535"),
    ("VAD_SILENCE_DURATION_MS", "-5", "greater than or equal to 0"),
]


def clean_env(**settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "LLM_", "TTS_", "VAD"))}
    return {**env, **settings}


def uvicorn_command(port: int, *flags: str) -> list[str]:
    """`uvicorn main:app` from the project's folder, as the README starts it."""
    return [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port), *flags]


def start_uvicorn(env: dict[str, str], *flags: str, wait: bool = True) -> RunningServer:
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"uvicorn-{port}.log"
    process = subprocess.Popen(
        uvicorn_command(port, *flags),
        cwd=ROOT,
        env=clean_env(LOG_LEVEL="INFO", **env),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = RunningServer(process, port, log_path, env)
    if wait:
        wait_until_healthy(server, timeout_s=120)
    return server


def assert_one_line_naming(stderr: str, variable: str, value: str, allowed: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert f"{variable}={value}" in lines[0] and allowed in lines[0], lines[0]


def test_each_bad_setting_gets_one_line_and_exit_code_2(tmp_path: Path) -> None:
    runs = []
    for variable, value, allowed in BAD_SETTINGS:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py")],
            cwd=tmp_path,
            env=clean_env(**{variable: value}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs.append((process, variable, value, allowed))
    for process, variable, value, allowed in runs:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == EXIT_CONFIGURATION, (variable, value, stderr)
        assert stdout == ""
        assert_one_line_naming(stderr, variable, value, allowed)
        assert "from the environment" in stderr


def test_a_bad_setting_in_dot_env_is_named_under_uvicorn_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VAD_PREFIX_PADDING_MS=soon\n")
    result = subprocess.run(
        [*uvicorn_command(free_port(), "--app-dir", str(ROOT))],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_CONFIGURATION, result.stderr
    assert_one_line_naming(result.stderr, "VAD_PREFIX_PADDING_MS", "soon", "valid integer")
    assert "from .env" in result.stderr


def test_a_corrupt_gguf_ends_the_process_with_its_own_code_and_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + struct.pack("<I", 3) + os.urandom(64 * 1024))  # a valid header, garbage after it
    server = start_server({"LOCAL_LLM_MODEL": str(corrupt)}, wait=False)
    try:
        server.process.wait(120)
    finally:
        server.stop()
    log = server.log()
    assert server.process.returncode == EXIT_MODELS_FAILED, log
    ours = [line for line in log.splitlines() if "Could not load the models" in line]
    assert len(ours) == 1 and str(corrupt) in ours[0], log
    assert "Traceback" not in log


async def test_uvicorn_main_app_takes_the_largest_events_and_stops_gracefully(fake: FakeOpenAI) -> None:
    server = start_uvicorn(provider_env(fake), "--ws-max-size", WS_MAX_SIZE)
    try:
        log = server.log()
        assert f"Realtime WebSocket endpoint: ws://127.0.0.1:{server.port}/v1/realtime" in log
        assert "--ws-max-size" not in log  # no warning: the flag is there
        async with connect(server.base_url) as client:
            await client.until("session.created")
            await client.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                }
            )
            await client.until("session.updated")
            audio = base64.b64encode(b"\x00" * (15 * 1024 * 1024)).decode()  # the API's largest append: 20 MiB of JSON
            await client.send({"type": "input_audio_buffer.append", "audio": audio, "event_id": "evt_big"})
            await client.send({"type": "input_audio_buffer.clear"})
            received = await client.until("input_audio_buffer.cleared", timeout=30)
            assert not [event for event in received if event["type"] == "error"]

            script(fake, client.session_id, chat=[{"text": "A long answer. " * 60, "chunk_delay_s": 0.05}])
            await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
            await client.until("response.output_text.delta")
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        error = next(event for event in client.events if event["type"] == "error")["error"]
        assert error["code"] == "server_shutting_down"
        done = next(event for event in client.events if event["type"] == "response.done")
        assert done["response"]["status"] == "failed"
        server.process.wait(10)
        assert time.monotonic() - started < 5
        assert "Shutting down: ending 1 session(s)" in server.log()
    finally:
        server.stop()


async def test_uvicorn_workers_load_the_local_llm_without_being_restarted(fake: FakeOpenAI) -> None:
    env = {**provider_env(fake), "LLM_PROVIDER": "local"}  # llama.cpp's load is what holds a worker's interpreter
    server = start_uvicorn(env, "--workers", "2", "--timeout-worker-healthcheck", "60", wait=False)
    try:
        deadline = time.monotonic() + 180
        while server.log().count("Models ready") < 2 and time.monotonic() < deadline:
            assert server.process.poll() is None, server.log()
            await asyncio.sleep(0.5)
        wait_until_healthy(server, timeout_s=30)
        log = server.log()
        assert log.count("Models ready") == 2, log
        assert "died" not in log
        assert log.count("--ws-max-size") == 2  # each worker warns about the flag missing here
        assert "--timeout-worker-healthcheck" not in log  # the flag is given: no warning
    finally:
        server.stop()
