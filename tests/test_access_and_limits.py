"""Access (keys, ephemeral client secrets, origins), limits, graceful shutdown and logs, against the real server."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import websockets
from openai import AsyncOpenAI

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import script
from tests.support.in_process import InProcessServer, in_process_settings
from tests.support.realtime_client import connect, validate_server_event
from tests.support.servers import RunningServer, provider_env, start_server

KEY = "sk-realtime-test-key-42"


@pytest.fixture(scope="module")
def guarded(fake_openai: FakeOpenAI) -> Iterator[RunningServer]:
    """A server that wants a key, allows one browser origin, and takes at most three sessions."""
    env = {
        **provider_env(fake_openai),
        "REALTIME_API_KEYS": f"sk-other,{KEY}",
        "ALLOWED_ORIGINS": "https://app.example.com",
        "MAX_SESSIONS": "3",
    }
    running = start_server(env)
    yield running
    running.stop()


def ws_url(server: RunningServer, query: str = "model=gpt-realtime") -> str:
    return server.base_url.replace("http://", "ws://") + f"/v1/realtime?{query}"


async def refused(url: str, **options: object) -> tuple[int, dict]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url, **options):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body)


async def test_missing_and_wrong_keys_are_refused_with_401(guarded: RunningServer) -> None:
    status, body = await refused(ws_url(guarded))
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "didn't provide an API key" in body["error"]["message"]
    status, body = await refused(ws_url(guarded), additional_headers={"Authorization": "Bearer sk-wrong"})
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(websockets.InvalidStatus):  # the official SDK sees the refusal too
        async with connect(guarded.base_url, api_key="sk-wrong"):
            pass


async def test_valid_key_in_header_or_browser_subprotocol(guarded: RunningServer) -> None:
    async with connect(guarded.base_url, api_key=KEY) as client:
        created = await client.expect("session.created")
        assert created["session"]["type"] == "realtime"
    protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
    async with websockets.connect(
        ws_url(guarded), subprotocols=protocols, additional_headers={"Origin": "https://app.example.com"}
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_origins_outside_the_allow_list_are_refused(guarded: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Origin": "https://evil.example.com"}
    status, body = await refused(ws_url(guarded), additional_headers=headers)
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"


async def test_a_wrong_path_is_404_not_a_refused_key(guarded: RunningServer) -> None:
    url = guarded.base_url.replace("http://", "ws://") + "/v1/realtim?model=gpt-realtime"
    status, body = await refused(url, additional_headers={"Authorization": f"Bearer {KEY}"})
    assert status == 404 and body["error"]["code"] == "unknown_url"
    assert "/v1/realtime" in body["error"]["message"]


async def test_ga_client_secret_carries_its_session(guarded: RunningServer) -> None:
    client = AsyncOpenAI(base_url=f"{guarded.base_url}/v1", api_key=KEY)
    secret = await client.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 600},
        session={"type": "realtime", "instructions": "You are a pirate.", "output_modalities": ["text"]},
    )
    assert secret.value.startswith("ek_")
    assert secret.expires_at - time.time() == pytest.approx(600, abs=5)
    assert secret.session.instructions == "You are a pirate."
    async with connect(guarded.base_url, api_key=secret.value) as session:
        created = await session.expect("session.created")
        assert created["session"]["instructions"] == "You are a pirate."
        assert created["session"]["output_modalities"] == ["text"]
    with pytest.raises(openai.AuthenticationError):  # a secret cannot make secrets
        await AsyncOpenAI(base_url=f"{guarded.base_url}/v1", api_key=secret.value).realtime.client_secrets.create()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.realtime.client_secrets.create(session={"type": "realtime", "max_output_tokens": 10**6})
    assert caught.value.body["param"] == "session.max_output_tokens"


async def test_beta_session_and_transcription_session_secrets(guarded: RunningServer) -> None:
    client = AsyncOpenAI(base_url=f"{guarded.base_url}/v1", api_key=KEY)
    beta = await client.beta.realtime.sessions.create(
        model="gpt-4o-realtime-preview", instructions="Be brief.", modalities=["text"], voice="verse"
    )
    assert beta.client_secret.value.startswith("ek_") and beta.instructions == "Be brief." and beta.voice == "verse"
    async with connect(guarded.base_url, "beta", api_key=beta.client_secret.value) as session:
        created = await session.expect("session.created")
        assert created["session"]["modalities"] == ["text"] and created["session"]["voice"] == "verse"
    transcription = await client.beta.realtime.transcription_sessions.create(
        input_audio_transcription={"model": "whisper-1", "language": "en"}
    )
    url = ws_url(guarded, "intent=transcription")
    headers = {"Authorization": f"Bearer {transcription.client_secret.value}", "OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        created = json.loads(await ws.recv())
        validate_server_event(created, "beta")
        assert created["session"]["input_audio_transcription"]["language"] == "en"


async def test_expired_client_secret_is_refused(fake: FakeOpenAI) -> None:
    now = [float(int(time.time()))]  # the server's clock (whole seconds, as expiries are), moved on by the test
    settings = in_process_settings(fake, realtime_api_keys=KEY)
    with InProcessServer(settings, clock=lambda: now[0]) as server:
        client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=KEY)
        secret = await client.realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 10})
        url = server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
        headers = {"Authorization": f"Bearer {secret.value}"}
        now[0] += 9.5
        async with websockets.connect(url, additional_headers=headers) as ws:  # still valid
            assert json.loads(await ws.recv())["type"] == "session.created"
        now[0] += 1.0
        status, body = await refused(url, additional_headers=headers)
    assert status == 401 and "expired" in body["error"]["message"]


async def test_session_cap_refuses_more_and_keeps_the_open_ones(guarded: RunningServer) -> None:
    async with (
        connect(guarded.base_url, api_key=KEY) as a,
        connect(guarded.base_url, api_key=KEY) as b,
        connect(guarded.base_url, api_key=KEY) as c,
    ):
        for client in (a, b, c):
            await client.until("conversation.created")
        status, body = await refused(ws_url(guarded), additional_headers={"Authorization": f"Bearer {KEY}"})
        assert status == 503 and body["error"]["code"] == "too_many_sessions"
        await a.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await a.until("response.done")
        assert events[-1]["response"]["status"] == "completed"


async def test_oversized_events_get_an_error_and_the_session_goes_on(server: RunningServer) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        audio = base64.b64encode(b"\x00" * (16 * 1024 * 1024)).decode()  # over 15 MiB of audio, 21 MiB of JSON
        await client.send({"type": "input_audio_buffer.append", "audio": audio, "event_id": "evt_big"})
        error = (await client.expect("error", timeout=20))["error"]
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio", "evt_big")
        await client.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (25 * 1024 * 1024)}))
        error = (await client.expect("error", timeout=20))["error"]
        assert error["code"] == "event_too_large"
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"


async def test_a_client_that_stops_reading_is_closed(server_factory, fake: FakeOpenAI) -> None:
    small = server_factory(MAX_OUTGOING_EVENTS="50")
    text = "x" * 200_000  # every item created is echoed twice: the socket's buffers fill quickly
    async with websockets.connect(ws_url(small), max_queue=1, max_size=None) as ws:
        for _ in range(120):
            await ws.send(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
                    }
                )
            )
        deadline = time.monotonic() + 20
        while small.health()["active_sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert small.health()["active_sessions"] == 0
    assert "client stopped reading (outgoing queue full)" in small.log()


async def test_session_expires_with_an_error_event(server_factory) -> None:
    short = server_factory(SESSION_MAX_DURATION_S="2")
    async with connect(short.base_url) as client:
        created = await client.until("conversation.created")
        assert created[0]["session"]["expires_at"] - time.time() <= 3
        error = (await client.until("error", timeout=5))[-1]["error"]
        assert error["code"] == "session_expired"
        with pytest.raises(websockets.ConnectionClosedOK):
            await client.recv(timeout=3)


async def test_sigterm_ends_sessions_with_1001_and_exits_quickly(fake: FakeOpenAI) -> None:
    running = start_server(provider_env(fake))
    try:
        async with websockets.connect(ws_url(running), additional_headers={"Authorization": "Bearer x"}) as ws:
            created = json.loads(await ws.recv())
            script(fake, created["session"]["id"], chat=[{"text": "A long answer. " * 60, "chunk_delay_s": 0.05}])
            await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            while json.loads(await ws.recv())["type"] != "response.output_text.delta":
                pass
            started = time.monotonic()
            running.process.send_signal(signal.SIGTERM)
            seen = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    event = json.loads(await ws.recv())
                    validate_server_event(event, "ga")
                    seen.append(event)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        error = next(e for e in seen if e["type"] == "error")["error"]
        assert error["code"] == "server_shutting_down"
        assert next(e for e in seen if e["type"] == "response.done")["response"]["status"] == "failed"
        running.process.wait(10)
        assert time.monotonic() - started < 5
        assert running.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        assert "Shutting down: ending 1 session(s)" in running.log()
    finally:
        running.stop()


async def test_logs_name_sessions_but_no_keys_or_user_text(guarded: RunningServer, fake: FakeOpenAI) -> None:
    secret_text = "my private question about zebras"
    async with connect(guarded.base_url, api_key=KEY) as client:
        await client.until("conversation.created")
        session_id = client.events[0]["session"]["id"]
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": secret_text}]},
            }
        )
        await client.send({"type": "response.create"})
        await client.until("response.done")
    deadline = time.monotonic() + 5
    while f"Session {session_id} closed" not in guarded.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    log = guarded.log()
    assert f"Session {session_id} opened" in log
    closed = next(line for line in log.splitlines() if f"Session {session_id} closed after" in line)
    assert closed.endswith("client closed")
    assert KEY not in log and "sk-test-fake-key" not in log
    assert secret_text not in log and "zebras" not in log


def test_health_is_public(guarded: RunningServer) -> None:
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200
