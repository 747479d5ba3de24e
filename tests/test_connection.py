"""Handshake (subprotocols, dialects), startup, `/health`, and what a disconnect leaves behind."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import websockets

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import script
from tests.support.in_process import InProcessServer
from tests.support.realtime_client import connect, validate_server_event
from tests.support.servers import ROOT, RunningServer, free_port


def ws_url(server: RunningServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


async def test_browser_handshake_selects_realtime_and_beta(server: RunningServer) -> None:
    protocols = ["realtime", "openai-insecure-api-key.sk-browser-key", "openai-beta.realtime-v1"]
    async with websockets.connect(ws_url(server), subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"  # selected, and the key is never echoed
        created = json.loads(await ws.recv())
        validate_server_event(created, "beta")
        assert created["type"] == "session.created"
        assert created["session"]["modalities"] == ["text", "audio"]  # the beta session shape
        assert created["session"]["input_audio_format"] == "pcm16"
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
        seen = []
        while "response.done" not in seen:
            event = json.loads(await ws.recv())
            validate_server_event(event, "beta")
            seen.append(event["type"])
        assert "response.text.delta" in seen and "response.output_text.delta" not in seen


async def test_browser_handshake_ga(server: RunningServer) -> None:
    async with websockets.connect(ws_url(server), subprotocols=["realtime", "openai-insecure-api-key.k"]) as ws:
        assert ws.subprotocol == "realtime"
        created = json.loads(await ws.recv())
        validate_server_event(created, "ga")
        assert created["session"]["type"] == "realtime"
        assert created["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}


async def test_beta_header_selects_beta(server: RunningServer) -> None:
    headers = {"OpenAI-Beta": "realtime=v1", "Authorization": "Bearer sk-x"}
    async with websockets.connect(ws_url(server), additional_headers=headers) as ws:
        assert ws.subprotocol is None
        created = json.loads(await ws.recv())
        assert "modalities" in created["session"] and "output_modalities" not in created["session"]


def test_health_and_startup_banner(server: RunningServer) -> None:
    health = server.health()
    assert health.pop("asyncio_tasks") > 0
    expected = {"status": "healthy", "active_sessions": 0, "worker_sessions": 0, "workers": 1, "models_ready": True}
    assert health == expected
    assert f"Realtime WebSocket endpoint: ws://127.0.0.1:{server.port}/v1/realtime" in server.log()


def test_missing_key_stops_startup(tmp_path) -> None:
    env = {
        "STT_PROVIDER": "openai_whisper",
        "LLM_PROVIDER": "openai",
        "TTS_PROVIDER": "openai_tts",
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
        "PATH": "/usr/bin:/bin",
        "SERVER_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "needs OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


async def wait_for(condition, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("stage", ["llm_streaming", "tts_streaming"])
async def test_disconnect_mid_response_frees_everything(
    in_process: InProcessServer, fake: FakeOpenAI, stage: str
) -> None:
    async with connect(in_process.base_url) as client:  # warm-up: first-use imports and pools
        await client.until("conversation.created")
    await wait_for(lambda: in_process.health()["active_sessions"] == 0, 2)
    baseline = in_process.task_count()

    if stage == "llm_streaming":
        steps = {"chat": [{"text": "word " * 400, "chunk_delay_s": 0.02}]}
        modality, wait_for_type = "text", "response.output_text.delta"
    else:
        steps = {"speech": [{"stall_s": 0.3}] * 5}
        modality, wait_for_type = "audio", "response.output_audio.delta"
    async with connect(in_process.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, **steps)
        await client.send({"type": "response.create", "response": {"output_modalities": [modality]}})
        await client.until(wait_for_type)
        assert in_process.health()["active_sessions"] == 1
        assert in_process.task_count() > baseline
    # The socket is closed: within a second the session, its pipeline and all its tasks are gone.
    elapsed = await wait_for(
        lambda: in_process.health()["active_sessions"] == 0 and in_process.task_count() <= baseline, 1.0
    )
    assert elapsed < 1.0
