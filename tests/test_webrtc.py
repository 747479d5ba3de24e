"""WebRTC calls (`POST /v1/realtime/calls`) through a real aiortc peer connection on loopback: the offer as the SDK
and agents-js post it, Opus in through server VAD and transcription, the reply on the audio track in real time, the
output buffer's events, barge-in truncated to what was played, sideband control, errors, and a peer that vanishes.
Every data-channel event is validated against the SDK's GA models (`WebRtcTestClient`)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import pcm24k, silence24k
from tests.support.fake_control import script
from tests.support.servers import RunningServer
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
