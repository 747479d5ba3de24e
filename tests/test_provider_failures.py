"""Provider failures end the response as `failed` with an `error` event; the session stays usable."""

from __future__ import annotations

import json

import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import script
from tests.support.realtime_client import RealtimeTestClient, connect
from tests.support.servers import RunningServer, free_port

KEY = "sk-test-fake-key-0123456789"


async def ask(client: RealtimeTestClient, modality: str = "text") -> list[dict]:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi. Bye."}]},
        }
    )
    await client.send({"type": "response.create", "response": {"output_modalities": [modality]}})
    return await client.until("response.done", timeout=20)


def assert_failed(events: list[dict], code: str) -> dict:
    errors = [event for event in events if event["type"] == "error"]
    assert len(errors) == 1, events
    assert errors[0]["error"]["code"] == code
    assert errors[0]["error"]["type"] == "server_error"
    done = events[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["type"] == "failed"
    assert done["status_details"]["error"]["code"] == code
    assert KEY not in json.dumps(events)  # credentials never reach the client
    return errors[0]


@pytest.mark.parametrize(
    ("step", "code"),
    [
        ({"status": 500}, "provider_error"),
        ({"status": 503}, "provider_error"),
        ({"status": 429, "message": "Rate limit reached"}, "provider_rate_limited"),
        ({"status": 401, "message": f"Incorrect API key provided: {KEY}"}, "provider_authentication_failed"),
        ({"stall_after_chunks": 0}, "provider_timeout"),
        ({"drop_after_chunks": 3}, "provider_unavailable"),
    ],
    ids=["500", "503", "429", "401", "stall", "drop"],
)
async def test_llm_failure(server: RunningServer, fake: FakeOpenAI, step: dict, code: str) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, chat=[step])
        error = assert_failed(await ask(client), code)
        assert "LLM" in error["error"]["message"]
        events = await ask(client)  # the next response works
        assert events[-1]["response"]["status"] == "completed"


async def test_llm_refused_connection(server_factory, fake: FakeOpenAI) -> None:
    closed = server_factory(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    async with connect(closed.base_url) as client:
        await client.until("conversation.created")
        assert_failed(await ask(client), "provider_unavailable")
        assert_failed(await ask(client), "provider_unavailable")  # and again: the session is still there
    assert closed.health()["active_sessions"] == 0
    assert KEY not in closed.log()


@pytest.mark.parametrize(
    ("step", "code"),
    [
        ({"status": 500}, "provider_error"),
        ({"status": 429}, "provider_rate_limited"),
        ({"status": 401, "message": f"Incorrect API key provided: {KEY}"}, "provider_authentication_failed"),
        ({"stall_s": 10}, "provider_timeout"),
    ],
    ids=["500", "429", "401", "stall"],
)
async def test_tts_failure(server: RunningServer, fake: FakeOpenAI, step: dict, code: str) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, speech=[step])
        error = assert_failed(await ask(client, "audio"), code)
        assert "TTS" in error["error"]["message"]
        await client.no_event(within=0.5)
        for _ in range(4):  # more than Pipecat's three strikes: the TTS is never written off
            events = await ask(client, "audio")
            assert events[-1]["response"]["status"] == "completed"
            assert any(event["type"] == "response.output_audio.delta" for event in events)
