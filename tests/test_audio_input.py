"""Audio in and turn-taking through the official SDK with real Silero: server VAD, formats, manual commits,
barge-in with truncation, transcription-only sessions, idle timeout."""

from __future__ import annotations

import base64
import json

import pytest
import websockets

from audio_utils import AudioFormat, pcm_to_format, resample
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import chunks, pcm24k, silence24k, utterances
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient, connect, types, validate_server_event
from tests.support.servers import RunningServer

TOLERANCE_MS = 60
PADDING_MS = 300
SILENCE_MS = 500

FORMATS = {
    # name: (GA format object, beta name, bytes per ms)
    "pcm16": ({"type": "audio/pcm", "rate": 24000}, "pcm16", 48),
    "g711_ulaw": ({"type": "audio/pcmu"}, "g711_ulaw", 8),
    "g711_alaw": ({"type": "audio/pcma"}, "g711_alaw", 8),
}


def encode(pcm: bytes, audio_format: str) -> bytes:
    if audio_format == "pcm16":
        return pcm
    return pcm_to_format(resample(pcm, 24_000, 8_000), AudioFormat(audio_format))


async def stream(client: RealtimeTestClient, audio: bytes, bytes_per_ms: int = 48, chunk_ms: int = 40) -> None:
    for chunk in chunks(audio, chunk_ms, bytes_per_ms):
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


async def update(client: RealtimeTestClient, session: dict) -> dict:
    payload = {"type": "realtime", **session} if client.dialect == "ga" else session
    await client.send({"type": "session.update", "session": payload})
    return (await client.until("session.updated"))[-1]["session"]


async def test_server_vad_turn(server: RunningServer, fake: FakeOpenAI) -> None:
    (truth,) = utterances("question.wav")
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"text": "What is the weather like in Paris today?"}])
        await update(client, {"audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}})
        await stream(client, pcm24k("question.wav") + silence24k(500))
        events = await client.until("response.done", timeout=20)
    names = types(events)
    turn = names[: names.index("response.created")]
    assert [n for n in turn if not n.startswith("conversation.item.input_audio_transcription")] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    started, stopped, committed, added = events[0], events[1], events[2], events[3]
    assert abs(started["audio_start_ms"] - (truth["start_ms"] - PADDING_MS)) <= TOLERANCE_MS
    assert abs(stopped["audio_end_ms"] - (truth["end_ms"] + SILENCE_MS)) <= TOLERANCE_MS
    assert started["item_id"] == stopped["item_id"] == committed["item_id"] == added["item"]["id"]
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    completed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == "What is the weather like in Paris today?"
    assert completed["item_id"] == committed["item_id"]
    assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 2
    assert events[-1]["response"]["status"] == "completed"
    # The turn was transcribed once, from the pause that ended it (while the VAD waited out the silence): the audio
    # from the prefix padding to just after the speech. The LLM got the transcript.
    (stt,) = [request["body"] for request in fake_requests(fake, "/v1/audio/transcriptions", client.session_id)]
    spoken_ms = truth["end_ms"] - started["audio_start_ms"]
    assert spoken_ms <= stt["audio_ms"] <= spoken_ms + 200, stt
    messages = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
    assert messages[-1] == {"role": "user", "content": "What is the weather like in Paris today?"}


@pytest.mark.parametrize("audio_format", ["pcm16", "g711_ulaw", "g711_alaw"])
@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_formats_detect_the_same_turns(
    server: RunningServer, fake: FakeOpenAI, audio_format: str, dialect: str
) -> None:
    ga_format, beta_name, bytes_per_ms = FORMATS[audio_format]
    first, second = utterances("two_utterances.wav")
    async with connect(server.base_url, dialect) as client:
        await client.until("conversation.created")
        if dialect == "ga":
            session = {
                "audio": {
                    "input": {"format": ga_format, "turn_detection": {"type": "server_vad", "create_response": False}},
                    "output": {"format": ga_format},
                }
            }
        else:
            session = {
                "input_audio_format": beta_name,
                "output_audio_format": beta_name,
                "turn_detection": {"type": "server_vad", "create_response": False},
            }
        await update(client, session)
        audio = encode(pcm24k("two_utterances.wav") + silence24k(300), audio_format)
        await stream(client, audio, bytes_per_ms)
        events = await client.until("input_audio_buffer.committed")
        events += await client.until("input_audio_buffer.committed")
        starts = [e["audio_start_ms"] for e in events if e["type"] == "input_audio_buffer.speech_started"]
        stops = [e["audio_end_ms"] for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
        assert len(starts) == len(stops) == 2
        for got, want in zip(starts, [first["start_ms"] - PADDING_MS, second["start_ms"] - PADDING_MS], strict=True):
            assert abs(got - want) <= TOLERANCE_MS, (starts, stops)
        for got, truth in zip(stops, [first, second], strict=True):
            latest = truth["end_ms"] + SILENCE_MS + TOLERANCE_MS
            earliest = truth["end_ms"] + SILENCE_MS - TOLERANCE_MS
            if audio_format != "pcm16" and truth["pauses"]:
                # G.711 keeps nothing above 4 kHz: a final "s" after a short pause ("lights", "minutes") may be
                # inaudible, so the speech can end where that pause begins.
                earliest = truth["pauses"][-1]["start_ms"] + SILENCE_MS - TOLERANCE_MS
            assert earliest <= got <= latest, (starts, stops)
        assert "response.created" not in types(events)  # create_response: false

        # Output audio arrives in the session's format.
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        delta_type = "response.output_audio.delta" if dialect == "ga" else "response.audio.delta"
        audio_out = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == delta_type)
        spoken = "".join(r["body"]["input"] for r in fake_requests(fake, "/v1/audio/speech", client.session_id))
        expected_ms = sum(
            max(100, len(r["body"]["input"]) * 40) for r in fake_requests(fake, "/v1/audio/speech", client.session_id)
        )
        assert spoken
        assert abs(len(audio_out) / bytes_per_ms - expected_ms) <= 0.03 * expected_ms + 20


async def test_noise_alone_makes_no_turn(server: RunningServer) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        await stream(client, pcm24k("noise.wav"))
        await client.no_event(within=1.0)


async def test_manual_mode_commit_empty_commit_and_clear(server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"text": "Hello there."}])
        await update(client, {"audio": {"input": {"turn_detection": None}}})
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
        error = (await client.expect("error"))["error"]
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_empty")

        await stream(client, pcm24k("question.wav"))
        await client.no_event(within=0.5)  # no VAD: nothing happens on its own
        await client.send({"type": "input_audio_buffer.clear"})
        await client.expect("input_audio_buffer.cleared")
        await client.send({"type": "input_audio_buffer.commit"})
        assert (await client.expect("error"))["error"]["code"] == "input_audio_buffer_commit_empty"

        await stream(client, pcm24k("hello.wav"))
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.expect("input_audio_buffer.committed")
        await client.expect("conversation.item.added")
        await client.expect("conversation.item.done")
        await client.no_event(within=0.5)  # committing does not create a response
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await client.until("response.done")
    stt = fake_requests(fake, "/v1/audio/transcriptions", client.session_id)[-1]["body"]
    assert abs(stt["audio_ms"] - 1835) <= 20  # all of hello.wav, nothing of the cleared audio
    messages = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
    assert messages[-1] == {"role": "user", "content": "Hello there."}
    assert committed["item_id"].startswith("item_")


async def test_barge_in_cancels_then_truncate_keeps_only_what_was_heard(
    server: RunningServer, fake: FakeOpenAI
) -> None:
    reply = "The first sentence is heard. The second one is not heard at all. Nor is this third one."
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(
            fake,
            client.session_id,
            chat=[{"text": reply}, {"text": "Sure, something else."}],
            speech=[{"stall_s": 0.1}] * 3,
            # Each pause in the speech starts a speculative transcription: script the same text for all of them.
            transcription=[{"text": "Stop, stop. Tell me something else instead."}] * 4,
        )
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Talk to me."}]},
            }
        )
        await client.send({"type": "response.create"})
        events = await client.until("response.output_audio.delta")
        response_id = events[-1]["response_id"]
        item_id = events[-1]["item_id"]
        await stream(client, pcm24k("long_reply_interrupt.wav"))
        events = await client.until("input_audio_buffer.speech_started")
        after_start = await client.until("response.done")
        done = after_start[-1]["response"]
        assert done["id"] == response_id
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "turn_detected"
        assert "response.output_audio.delta" not in types(after_start)  # nothing after speech_started
        heard_ms = 900  # the client played about this much before it stopped playback
        received_ms = sum(
            len(base64.b64decode(e["delta"])) / 48
            for e in client.events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
        )
        heard_ms = min(heard_ms, int(received_ms))
        await client.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": heard_ms}
        )
        await client.until("conversation.item.truncated")
        events = await client.until("response.done", timeout=20)  # the new turn is answered
        assert events[-1]["response"]["status"] == "completed"
    messages = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
    assistant = [m for m in messages if m["role"] == "assistant"]
    assert len(assistant) == 1, (messages, heard_ms)
    assert heard_ms > 0
    assert "second" not in assistant[0]["content"] and "third" not in assistant[0]["content"]
    assert reply.startswith(assistant[0]["content"])
    assert messages[-1] == {"role": "user", "content": "Stop, stop. Tell me something else instead."}


async def test_interrupt_response_false_lets_the_reply_finish(server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(
            fake,
            client.session_id,
            chat=[{"text": "A reply that keeps going. And going. And going."}],
            speech=[{"stall_s": 0.05}] * 3,
        )
        await update(
            client, {"audio": {"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}}}
        )
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await stream(client, pcm24k("hello.wav") + silence24k(600))
        events = await client.until("response.done")
        assert events[-1]["response"]["status"] == "completed"
        assert "input_audio_buffer.speech_started" in types(events)
        events = await client.until("response.done")  # then the user's turn gets its answer
        assert events[-1]["response"]["status"] == "completed"


async def test_transcription_failure_is_reported_and_the_session_goes_on(
    server: RunningServer, fake: FakeOpenAI
) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"status": 500}])
        await update(client, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
        await stream(client, pcm24k("hello.wav") + silence24k(600))
        events = await client.until("response.done", timeout=20)
        failed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.failed")
        assert failed["error"]["type"] == "transcription_error"
        assert failed["error"]["code"] == "provider_error"
        assert events[-1]["response"]["status"] == "completed"


async def test_idle_timeout_prompts_a_response(server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"text": ""}])
        await update(
            client,
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}},
                },
                "output_modalities": ["text"],
            },
        )
        await client.send({"type": "response.create"})
        await client.until("response.done")
        await stream(client, silence24k(4000))
        await client.no_event(within=0.5)
        await stream(client, silence24k(1500))
        events = await client.until("response.done", timeout=20)
    triggered = events[0]
    assert triggered["type"] == "input_audio_buffer.timeout_triggered"
    assert triggered["audio_end_ms"] - triggered["audio_start_ms"] >= 5000
    assert types(events)[1:3] == ["input_audio_buffer.committed", "conversation.item.added"]


def ws_url(server: RunningServer, query: str) -> str:
    return server.base_url.replace("http://", "ws://") + f"/v1/realtime?{query}"


async def recv(ws, dialect: str) -> dict:
    event = json.loads(await ws.recv())
    validate_server_event(event, dialect)  # type: ignore[arg-type]
    return event


async def test_transcription_session_ga(server: RunningServer, fake: FakeOpenAI) -> None:
    async with websockets.connect(
        ws_url(server, "intent=transcription"), additional_headers={"Authorization": "Bearer sk-x"}
    ) as ws:
        created = await recv(ws, "ga")
        assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
        session_id = created["session"]["id"]
        script(fake, session_id, transcription=[{"text": "Turn on the kitchen lights."}, {"text": "And set a timer."}])
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe", "language": "en"}}},
                    },
                }
            )
        )
        assert (await recv(ws, "ga"))["type"] == "session.updated"
        for chunk in chunks(pcm24k("two_utterances.wav") + silence24k(300), 40, 48):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))
        seen = []
        while seen.count("conversation.item.input_audio_transcription.completed") < 2:
            event = await recv(ws, "ga")
            seen.append(event["type"])
            assert not event["type"].startswith("response."), event
    assert seen.count("input_audio_buffer.committed") == 2
    assert fake_requests(fake, "/v1/audio/transcriptions", session_id)[-1]["body"]["language"] == "en"


async def test_transcription_session_beta(server: RunningServer, fake: FakeOpenAI) -> None:
    headers = {"Authorization": "Bearer sk-x", "OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(ws_url(server, "intent=transcription"), additional_headers=headers) as ws:
        created = await recv(ws, "beta")
        assert created["type"] == "session.created"
        script(fake, created["session"]["id"], transcription=[{"text": "Hello there."}])
        await ws.send(
            json.dumps(
                {
                    "type": "transcription_session.update",
                    "session": {
                        "input_audio_format": "pcm16",
                        "input_audio_transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                    },
                }
            )
        )
        updated = await recv(ws, "beta")
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["turn_detection"]["silence_duration_ms"] == 400
        for chunk in chunks(pcm24k("hello.wav") + silence24k(300), 40, 48):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))
        seen = []
        while "conversation.item.input_audio_transcription.completed" not in seen:
            event = await recv(ws, "beta")
            seen.append(event["type"])
        assert "conversation.item.created" in seen and "response.created" not in seen


@pytest.mark.parametrize("eagerness", ["high", "auto"])
async def test_semantic_vad_ends_the_turn(server: RunningServer, eagerness: str) -> None:
    (truth,) = utterances("question.wav")
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        session = await update(
            client,
            {
                "audio": {
                    "input": {
                        "turn_detection": {"type": "semantic_vad", "eagerness": eagerness, "create_response": False}
                    }
                }
            },
        )
        assert session["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": eagerness,
            "create_response": False,
            "interrupt_response": True,
        }
        await stream(client, pcm24k("question.wav") + silence24k(4500))
        events = await client.until("input_audio_buffer.committed")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    waited = stopped["audio_end_ms"] - truth["end_ms"]
    limit = {"high": 2000, "auto": 4000}[eagerness]
    assert 0 < waited <= limit + TOLERANCE_MS, waited


async def test_a_client_made_audio_item_is_transcribed_for_the_llm(server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, transcription=[{"text": "Hello there."}])
        await update(client, {"audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": None}}})
        audio = base64.b64encode(pcm24k("hello.wav")).decode()
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Listen:"}, {"type": "input_audio", "audio": audio}],
                },
            }
        )
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await client.until("response.done")
    completed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert (completed["content_index"], completed["transcript"]) == (1, "Hello there.")
    assert fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"][-1] == {
        "role": "user",
        "content": "Listen:\nHello there.",
    }
