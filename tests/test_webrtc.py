"""WebRTC calls (`POST /v1/realtime/calls`) through a real aiortc peer connection on loopback: the offer as the SDK
and agents-js post it, Opus in through server VAD and transcription, the reply on the audio track in real time, the
output buffer's events, barge-in truncated to what was played, sideband control, errors, and a peer that vanishes.
Every data-channel event is validated against the SDK's GA models (`WebRtcTestClient`)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import pcm24k, silence24k
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient
from tests.support.servers import ROOT, RunningServer
from tests.support.webrtc_client import WebRtcTestClient

QUESTION = "What is the weather like in Paris today?"
REPLY = "It is sunny in Paris today, with a light breeze and a high of twenty two degrees."


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


async def open_call(server: RunningServer, fake: FakeOpenAI, **session: Any) -> tuple[WebRtcTestClient, dict]:
    client = WebRtcTestClient(server.base_url)
    await client.connect_sdk(session={"type": "realtime", **session})
    created = await client.until("session.created")
    return client, created[-1]


async def test_spoken_turn_over_webrtc(server: RunningServer, fake: FakeOpenAI) -> None:
    client, created = await open_call(
        server, fake, instructions="Be brief.", audio={"input": {"transcription": {"model": "whisper-1"}}}
    )
    try:
        session_id = created["session"]["id"]
        assert created["session"]["instructions"] == "Be brief."
        script(fake, session_id, transcription=[{"text": QUESTION}], chat=[{"text": REPLY}])
        client.mic.say(pcm24k("question.wav") + silence24k(700))
        events = await client.until("response.done", timeout=30)
        names = types(events)
        for name in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_audio_transcript.delta",
        ):
            assert name in names, "\n".join(names)
        transcript = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert transcript["transcript"] == QUESTION
        assert "response.output_audio.delta" not in names  # the audio is on the track
        done = events[-1]["response"]
        assert done["status"] == "completed"
        response_id = done["id"]
        later = await client.until("output_audio_buffer.stopped", timeout=30)
        started = next(e for e in [*events, *later] if e["type"] == "output_audio_buffer.started")
        assert started["response_id"] == response_id
        assert later[-1]["response_id"] == response_id
        # The reply (a tone of ~40 ms a character) arrived on the track, in real time, and is not silence.
        assert client.audible_ms() > 1000, client.audible_ms()
    finally:
        await client.close()


LONG_REPLY = " ".join(["The weather in Paris is lovely today, with sunshine all afternoon."] * 5)
SLOW_CHAT = {"text": LONG_REPLY, "chunk_chars": 20, "chunk_delay_s": 0.25}


async def speak_and_wait_for_audio(client: WebRtcTestClient, fake: FakeOpenAI, session_id: str) -> dict:
    script(fake, session_id, transcription=[{"text": QUESTION}, {"text": "Stop."}], chat=[SLOW_CHAT])
    client.mic.say(pcm24k("question.wav") + silence24k(700))
    return (await client.until("output_audio_buffer.started", timeout=30))[-1]


async def test_barge_in_truncates_to_what_was_played(server: RunningServer, fake: FakeOpenAI) -> None:
    client, created = await open_call(server, fake)
    try:
        started = await speak_and_wait_for_audio(client, fake, created["session"]["id"])
        await asyncio.sleep(1.5)
        client.mic.say(pcm24k("hello.wav") + silence24k(700))
        events = await client.until("output_audio_buffer.cleared", timeout=15)
        heard_ms = client.audible_ms()
        names = types(events)
        assert "input_audio_buffer.speech_started" in names
        done = next(e for e in events if e["type"] == "response.done")["response"]
        assert done["id"] == started["response_id"]
        assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
        truncated = next(e for e in events if e["type"] == "conversation.item.truncated")
        assert events[-1]["response_id"] == started["response_id"]
        # Truncated to what the track had played: what arrived here, within a few frames of jitter.
        assert 1500 <= truncated["audio_end_ms"] <= heard_ms + 200, (truncated, heard_ms)
        assert abs(truncated["audio_end_ms"] - heard_ms) < 400, (truncated, heard_ms)
        # Nothing of the cut reply plays after the clear.
        await asyncio.sleep(0.3)  # what was on the wire already (the receiver's jitter buffer)
        before = len(client.audio)
        await asyncio.sleep(0.8)
        assert client.audible_ms(before) == 0
        client.send({"type": "conversation.item.retrieve", "item_id": truncated["item_id"]})
        item = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert 0 < len(item["content"][0]["transcript"]) < len(LONG_REPLY)
    finally:
        await client.close()


async def test_output_audio_buffer_clear_stops_the_track(server: RunningServer, fake: FakeOpenAI) -> None:
    client, created = await open_call(server, fake)
    try:
        started = await speak_and_wait_for_audio(client, fake, created["session"]["id"])
        await asyncio.sleep(1.0)
        # What agents-js does to interrupt over WebRTC: cancel, then clear (no conversation.item.truncate).
        client.send({"type": "response.cancel"})
        client.send({"type": "output_audio_buffer.clear", "event_id": "evt_clear"})
        events = await client.until("output_audio_buffer.cleared", timeout=10)
        assert events[-1]["response_id"] == started["response_id"]
        assert "error" not in types(events)
        truncated = next(e for e in events if e["type"] == "conversation.item.truncated")
        assert 800 <= truncated["audio_end_ms"] <= 2500
        await asyncio.sleep(0.3)  # what was on the wire already (the receiver's jitter buffer)
        before = len(client.audio)
        await asyncio.sleep(0.8)
        assert client.audible_ms(before) == 0
        # The session goes on: a text turn still answers, over the track.
        script(fake, created["session"]["id"], chat=[{"text": "Yes, still here."}])
        client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Still?"}]},
            }
        )
        client.send({"type": "response.create"})
        assert (await client.until("output_audio_buffer.stopped", timeout=15))[-1]["type"]
    finally:
        await client.close()


KEY = "sk-webrtc-test-key"


async def test_offers_with_keys_secrets_and_bad_bodies(server_factory: Any, fake: FakeOpenAI) -> None:
    """Auth as for the WebSocket (a key, a client secret, a wrong key), the raw `application/sdp` body with and
    without `?model=`, CORS for a page on another origin, and every bad offer answered with OpenAI's error body."""
    server = server_factory(REALTIME_API_KEYS=KEY)
    base = server.base_url
    secret = await AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY).realtime.client_secrets.create(
        session={"type": "realtime", "instructions": "From the secret."}
    )
    # agents-js: the raw offer with the ephemeral secret, no model in the URL.
    client = WebRtcTestClient(base, api_key=secret.value)
    try:
        response = await client.connect_raw()
        assert response.status_code == 201 and response.headers["location"].startswith("/v1/realtime/calls/rtc_")
        created = (await client.until("session.created"))[-1]
        assert created["session"]["instructions"] == "From the secret."
    finally:
        await client.close()
    # A key, with `?model=`.
    client = WebRtcTestClient(base, api_key=KEY)
    try:
        assert (await client.connect_raw(model="gpt-realtime-mini")).status_code == 201
        assert (await client.until("session.created"))[-1]["session"]["model"] == "gpt-realtime-mini"
    finally:
        await client.close()

    offer_client = WebRtcTestClient(base)
    offer = await offer_client.offer()
    await offer_client.close()

    async def post(body: str | bytes, key: str | None = KEY, content_type: str = "application/sdp") -> httpx.Response:
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with httpx.AsyncClient() as http:
            return await http.post(f"{base}/v1/realtime/calls", content=body, headers=headers)

    def error_of(response: httpx.Response, status: int, code: str) -> dict:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"], error
        return error

    error_of(await post(offer, key="sk-wrong"), 401, "invalid_api_key")
    error_of(await post(offer, key=None), 401, "invalid_api_key")
    error_of(await post(offer, key="ek_unknown_or_expired"), 401, "invalid_api_key")
    assert error_of(await post("hello there"), 400, "invalid_offer")["param"] == "sdp"
    no_audio_lines = offer.split("\r\n")
    audio_at = next(i for i, line in enumerate(no_audio_lines) if line.startswith("m=audio"))
    next_media = next(
        (i for i, line in enumerate(no_audio_lines) if i > audio_at and line.startswith("m=")), len(no_audio_lines)
    )
    no_audio = "\r\n".join(no_audio_lines[:audio_at] + no_audio_lines[next_media:])
    error_of(await post(no_audio), 400, "invalid_offer")
    pcmu_only = "\r\n".join(
        line
        for line in offer.split("\r\n")
        if not (line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and "PCMU" not in line)
    )
    pcmu_only = "\r\n".join(
        " ".join([*line.split(" ")[:3], "0"]) if line.startswith("m=audio") else line
        for line in pcmu_only.split("\r\n")
    )
    error_of(await post(pcmu_only), 400, "unsupported_codec")
    error_of(await post("{}", content_type="application/json"), 415, "unsupported_content_type")
    bad_session = {"type": "realtime", "output_modalities": ["smell"]}
    client = WebRtcTestClient(base, api_key=KEY)
    try:
        with pytest.raises(Exception) as refused:
            await client.connect_sdk(session=bad_session)
        assert getattr(refused.value, "status_code", None) == 400, refused.value
    finally:
        await client.close()
    async with httpx.AsyncClient() as http:
        hangup = await http.post(
            f"{base}/v1/realtime/calls/rtc_nope/hangup", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert error_of(hangup, 404, "call_not_found")
        # A page on another origin: the preflight is answered and the page may read `Location`.
        preflight = await http.options(
            f"{base}/v1/realtime/calls",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] in ("*", "http://app.example")
    client = WebRtcTestClient(base, api_key=KEY)
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{base}/v1/realtime/calls",
                content=await client.offer(),
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {KEY}",
                    "Origin": "http://app.example",
                },
            )
        assert response.status_code == 201
        assert "location" in response.headers["access-control-expose-headers"].lower()
        await client._answered(response.headers["location"], response.text)
        await client.until("session.created")
        async with httpx.AsyncClient() as http:
            hangup = await http.post(f"{base}{client.location}/hangup", headers={"Authorization": f"Bearer {KEY}"})
        assert hangup.status_code == 200
        await wait_for_sessions(server, 0)
    finally:
        await client.close()


async def wait_for_sessions(server: RunningServer, count: int, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        health = await asyncio.to_thread(server.health)
        if health["active_sessions"] == count or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.2)


async def test_calls_count_towards_max_sessions(server_factory: Any) -> None:
    """A call holds one of the instance's MAX_SESSIONS places like a WebSocket session: the next offer is refused
    with 503, refused offers take no place, and the place comes back when the call ends."""
    server = server_factory(MAX_SESSIONS="1")
    client, _ = await open_call(server, fake=None)  # type: ignore[arg-type]
    second = WebRtcTestClient(server.base_url)
    try:
        async with httpx.AsyncClient() as http:
            refused = await http.post(
                f"{server.base_url}/v1/realtime/calls",
                content=await second.offer(),
                headers={"Content-Type": "application/sdp"},
            )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "too_many_sessions"
        assert (await asyncio.to_thread(server.health))["active_sessions"] == 1
    finally:
        await second.close()
        await client.close()
    assert (await wait_for_sessions(server, 0))["active_sessions"] == 0
    client, _ = await open_call(server, fake=None)  # type: ignore[arg-type]
    await client.close()


async def test_a_vanished_peer_ends_its_session(server: RunningServer, fake: FakeOpenAI) -> None:
    """A closed tab (the peer connection closes) and a lost peer (its media stops without a word) both end the
    call's session within seconds, and leave no task behind."""
    await wait_for_sessions(server, 0)
    baseline = (await asyncio.to_thread(server.health))["asyncio_tasks"]
    client, _ = await open_call(server, fake)
    assert (await asyncio.to_thread(server.health))["active_sessions"] == 1
    await client.close()
    health = await wait_for_sessions(server, 0, timeout_s=5)
    assert health["active_sessions"] == 0
    await asyncio.sleep(0.5)
    assert (await asyncio.to_thread(server.health))["asyncio_tasks"] <= baseline


async def test_a_killed_peer_ends_its_session(server_factory: Any) -> None:
    """A peer that vanishes without a word (its process killed: no DTLS close, no SCTP abort) ends its session once
    its media has been silent for WEBRTC_PEER_TIMEOUT_S."""
    server = server_factory(WEBRTC_PEER_TIMEOUT_S="2")
    baseline = (await asyncio.to_thread(server.health))["asyncio_tasks"]
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.webrtc_client", server.base_url, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(peer.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line.strip() == b"connected"
        assert (await asyncio.to_thread(server.health))["active_sessions"] == 1
        peer.kill()
        killed_at = time.monotonic()
        health = await wait_for_sessions(server, 0, timeout_s=8)
        assert health["active_sessions"] == 0, health
        assert time.monotonic() - killed_at < 6
        await asyncio.sleep(0.5)
        assert (await asyncio.to_thread(server.health))["asyncio_tasks"] <= baseline
    finally:
        if peer.returncode is None:
            peer.kill()
        await peer.wait()


async def test_sideband_joins_the_call(server: RunningServer, fake: FakeOpenAI) -> None:
    """A backend's WebSocket with `call_id` sees the call's events and its `session.update` changes the call."""
    client, created = await open_call(server, fake)
    session_id = created["session"]["id"]
    sdk = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="sk-backend")
    try:
        async with sdk.realtime.connect(call_id=client.call_id) as connection:
            sideband = RealtimeTestClient(connection, "ga")
            joined = await sideband.expect("session.created")
            assert joined["session"]["id"] == session_id
            await sideband.send(
                {"type": "session.update", "session": {"type": "realtime", "instructions": "From the backend."}}
            )
            updated = (await sideband.until("session.updated"))[-1]
            assert updated["session"]["instructions"] == "From the backend."
            on_call = (await client.until("session.updated"))[-1]
            assert on_call["session"]["instructions"] == "From the backend."
            script(fake, session_id, transcription=[{"text": QUESTION}], chat=[{"text": "Sunny."}])
            client.mic.say(pcm24k("question.wav") + silence24k(700))
            seen = types(await sideband.until("response.done", timeout=30))
            assert "input_audio_buffer.speech_started" in seen and "response.created" in seen
            assert "response.output_audio.delta" not in seen
            chat = [r for r in fake_requests(fake, "/v1/chat/completions", key=session_id)]
            assert chat and "From the backend." in str(chat[-1]["body"]["messages"][0])
        with pytest.raises(Exception) as refused:
            async with sdk.realtime.connect(call_id="rtc_unknown") as connection:
                await connection.recv()
        assert "404" in str(refused.value)
    finally:
        await client.close()
