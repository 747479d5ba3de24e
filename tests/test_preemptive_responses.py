"""Preemptive responses through the official SDK, with real Silero and the loopback providers (whose delays the
tests script): a paused turn's reply is generated during the silence window and released at `speech_stopped`; a
turn that goes on, or a session that does not answer turns, gets nothing of it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import chunks, pcm24k, silence24k, utterances
from tests.support.event_sequences import Observer
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient, connect, types, without_deltas
from tests.support.servers import RunningServer, provider_env, start_server

CHUNK_MS = 20
BYTES_PER_MS = 48
# What the providers take: far more than "a few ms", so a reply made only after `speech_stopped` could not be quick.
LLM_DELAY_S = 0.08
TTS_DELAY_S = 0.08


@pytest.fixture(scope="module")
def preemptive_server(fake_openai: FakeOpenAI) -> Iterator[RunningServer]:
    running = start_server({**provider_env(fake_openai), "PREEMPTIVE_RESPONSES": "on", "METRICS": "true"})
    yield running
    running.stop()


def preemption_counts(server: RunningServer) -> dict[str, float]:
    """`realtime_preemptive_responses_total` by outcome, from the server's `/metrics`."""
    text = httpx.get(f"{server.base_url}/metrics").text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "realtime_preemptive_responses_total"
    }


def speech(name: str) -> bytes:
    """The utterance of fixture `name`, from its first to its last sound."""
    (truth,) = utterances(name)
    return pcm24k(name)[truth["start_ms"] * BYTES_PER_MS : truth["end_ms"] * BYTES_PER_MS]


async def send_audio(client: RealtimeTestClient, audio: bytes, real_time: bool) -> None:
    for chunk in chunks(audio, CHUNK_MS, BYTES_PER_MS):
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
        if real_time:
            await asyncio.sleep(CHUNK_MS / 1000)


async def record_until(
    client: RealtimeTestClient, event_type: str, timeout: float = 20
) -> list[tuple[float, dict[str, Any]]]:
    """The events (with when each arrived) up to the first of `event_type`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received = []
    while True:
        event = await client.recv(timeout=max(0.01, deadline - loop.time()))
        received.append((loop.time(), event))
        if event["type"] == event_type:
            return received


async def configure(client: RealtimeTestClient, **input_audio: Any) -> None:
    audio = {"input": {"transcription": {"model": "whisper-1"}, **input_audio}}
    await client.send({"type": "session.update", "session": {"type": "realtime", "audio": audio}})
    await client.until("session.updated")


async def test_a_turn_that_ends_at_its_pause_hears_its_reply_at_once(
    preemptive_server: RunningServer, fake: FakeOpenAI
) -> None:
    counted_before = preemption_counts(preemptive_server)
    async with connect(preemptive_server.base_url) as client:
        await client.until("conversation.created")
        script(
            fake,
            client.session_id,
            transcription=[{"text": "What is the weather like in Paris today?"}],
            chat=[{"delay_s": LLM_DELAY_S}],
            speech=[{"delay_s": TTS_DELAY_S}],
        )
        # A longer silence window than the default leaves the loaded test machine time to spare.
        await configure(client, turn_detection={"type": "server_vad", "silence_duration_ms": 800})
        sender = asyncio.create_task(_speech_then_silence(client, speech("question.wav"), 1500))
        timed = await record_until(client, "response.done")
        await sender
    events = [event for _, event in timed]
    names = types(events)
    stopped_at = next(t for t, e in timed if e["type"] == "input_audio_buffer.speech_stopped")
    first_audio_at = next(t for t, e in timed if e["type"] == "response.output_audio.delta")
    # The audio existed before the turn ended: it follows `speech_stopped` at once, not after LLM + TTS delays.
    assert first_audio_at - stopped_at < 0.05, first_audio_at - stopped_at
    turn = names[names.index("input_audio_buffer.speech_stopped") : names.index("response.created") + 1]
    assert [n for n in turn if not n.startswith("conversation.item.input_audio_transcription")] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    observer = Observer("ga")
    observer.observe(events)
    assert observer.created == observer.done and len(observer.created) == 1
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["total_tokens"] > 0
    assert done["output"][0]["content"][0]["transcript"].startswith("You said: What is the weather like in Paris")
    (chat,) = fake_requests(fake, "/v1/chat/completions", client.session_id)
    assert not chat["cancelled"]
    assert chat["body"]["messages"][-1] == {"role": "user", "content": "What is the weather like in Paris today?"}
    counted = preemption_counts(preemptive_server)
    for outcome in ("started", "adopted"):
        assert counted.get(outcome, 0) - counted_before.get(outcome, 0) == 1, (counted_before, counted)


async def _speech_then_silence(client: RealtimeTestClient, voice: bytes, silence_ms: int) -> None:
    """Speech sent at once (the VAD has heard it all), then the silence at real-time pace, as a microphone sends."""
    await send_audio(client, voice, real_time=False)
    await send_audio(client, silence24k(silence_ms), real_time=True)


async def test_speech_that_resumes_after_300_ms_gets_one_reply_for_the_whole_utterance(
    preemptive_server: RunningServer, fake: FakeOpenAI
) -> None:
    async with connect(preemptive_server.base_url) as client:
        await client.until("conversation.created")
        script(
            fake,
            client.session_id,
            transcription=[{"text": "Hello."}, {"text": "Hello. What is the weather like in Paris today?"}],
            # The first (preemptive) reply streams slowly: it is still running when the speaker goes on.
            chat=[{"chunk_delay_s": 0.3, "chunk_chars": 4}, {}],
        )
        await configure(client)

        async def talk() -> None:
            await send_audio(client, speech("hello.wav"), real_time=False)
            await send_audio(client, silence24k(300), real_time=True)
            await send_audio(client, speech("question.wav"), real_time=True)
            await send_audio(client, silence24k(1500), real_time=True)

        sender = asyncio.create_task(talk())
        timed = await record_until(client, "response.done", timeout=30)
        await sender
        await client.no_event(0.5)
    events = [event for _, event in timed]
    names = types(events)
    assert names.count("input_audio_buffer.speech_started") == 1
    assert names.count("input_audio_buffer.committed") == 1
    assert names.count("response.created") == 1
    Observer("ga").observe(events)
    done = events[-1]["response"]
    transcript = done["output"][0]["content"][0]["transcript"]
    assert transcript.startswith("You said: Hello. What is the weather like in Paris today?"), transcript
    chats = fake_requests(fake, "/v1/chat/completions", client.session_id)
    assert [c["cancelled"] for c in chats] == [True, False]
    assert chats[0]["body"]["messages"][-1]["content"] == "Hello."
    assert chats[1]["body"]["messages"][-1]["content"] == "Hello. What is the weather like in Paris today?"


async def test_nothing_preemptive_when_turns_are_not_answered(
    preemptive_server: RunningServer, fake: FakeOpenAI
) -> None:
    async with connect(preemptive_server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"text": "Hello."}])
        await configure(client, turn_detection={"type": "server_vad", "create_response": False})
        await _speech_then_silence(client, speech("hello.wav"), 1000)
        events = await client.until("conversation.item.input_audio_transcription.completed")
        await client.no_event(0.5)
    assert "response.created" not in types(events)
    assert fake_requests(fake, "/v1/chat/completions", client.session_id) == []


async def answered_turn(server: RunningServer, fake: FakeOpenAI) -> list[dict[str, Any]]:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"text": "What is the weather like in Paris today?"}])
        await configure(client)
        sender = asyncio.create_task(_speech_then_silence(client, speech("question.wav"), 1500))
        events = await client.until("response.done", timeout=20)
        await sender
    return events


async def test_the_event_sequence_is_the_one_without_preemption(
    preemptive_server: RunningServer, server: RunningServer, fake: FakeOpenAI
) -> None:
    preempted = await answered_turn(preemptive_server, fake)
    plain = await answered_turn(server, fake)  # the shared server: cloud providers, so PREEMPTIVE_RESPONSES=auto is off
    assert without_deltas(preempted) == without_deltas(plain)
    for events in (preempted, plain):
        observer = Observer("ga")
        observer.observe(events)
        assert len(observer.created) == 1 and observer.created == observer.done
    assert preempted[-1]["response"]["usage"] == plain[-1]["response"]["usage"]
