"""The official `openai` SDK, GA and beta, against the real server with loopback providers."""

from __future__ import annotations

import base64

import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient, connect, types, without_deltas
from tests.support.servers import RunningServer

pytestmark = pytest.mark.parametrize("dialect", ["ga", "beta"])

NAMES = {
    "ga": {
        "item_added": "conversation.item.added",
        "text_delta": "response.output_text.delta",
        "text_done": "response.output_text.done",
        "audio_delta": "response.output_audio.delta",
        "audio_done": "response.output_audio.done",
        "transcript_delta": "response.output_audio_transcript.delta",
        "transcript_done": "response.output_audio_transcript.done",
        "text_part": "output_text",
        "audio_part": "output_audio",
    },
    "beta": {
        "item_added": "conversation.item.created",
        "text_delta": "response.text.delta",
        "text_done": "response.text.done",
        "audio_delta": "response.audio.delta",
        "audio_done": "response.audio.done",
        "transcript_delta": "response.audio_transcript.delta",
        "transcript_done": "response.audio_transcript.done",
        "text_part": "text",
        "audio_part": "audio",
    },
}


def user_text(text: str) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def text_only(dialect: str) -> dict:
    return {"output_modalities": ["text"]} if dialect == "ga" else {"modalities": ["text"]}


async def open_session(client: RealtimeTestClient) -> dict:
    created = await client.expect("session.created")
    await client.expect("conversation.created")
    return created


async def add_user_text(client: RealtimeTestClient, text: str) -> dict:
    await client.send(user_text(text))
    added = await client.expect(NAMES[client.dialect]["item_added"])
    if client.dialect == "ga":
        await client.expect("conversation.item.done")
    return added["item"]


async def test_session_created_then_update_returns_full_session(server: RunningServer, dialect: str) -> None:
    async with connect(server.base_url, dialect) as client:
        created = await open_session(client)
        assert created["session"]["id"].startswith("sess_")
        if dialect == "ga":
            update = {"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"voice": "marin"}}}
        else:
            update = {"instructions": "Be brief.", "voice": "marin", "temperature": 0.9}
        await client.send({"type": "session.update", "event_id": "evt_upd", "session": update})
        updated = (await client.expect("session.updated"))["session"]
        assert updated["instructions"] == "Be brief."
        if dialect == "ga":
            assert updated["audio"]["output"]["voice"] == "marin"
            assert updated["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # untouched fields stay
        else:
            assert updated["voice"] == "marin"
            assert updated["temperature"] == 0.9
            assert updated["turn_detection"]["type"] == "server_vad"


async def test_text_turn_event_sequence(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        user_item = await add_user_text(client, "What is the capital of France?")
        await client.send({"type": "response.create", "response": text_only(dialect)})
        events = await client.until("response.done")
        expected = [
            "response.created",
            "response.output_item.added",
            names["item_added"],
            "response.content_part.added",
            names["text_delta"],
            names["text_done"],
            "response.content_part.done",
            "response.output_item.done",
        ]
        expected += ["conversation.item.done"] if dialect == "ga" else []
        expected += ["response.done"]
        assert without_deltas(events) == expected
        deltas = "".join(event["delta"] for event in events if event["type"] == names["text_delta"])
        assert deltas == "You said: What is the capital of France?. That is all I have to say."
        for event in events:
            if "output_index" in event and "content_index" in event:
                assert event["output_index"] == 0 and event["content_index"] == 0
        done = events[-1]["response"]
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["type"] == names["text_part"]
        assert done["output"][0]["content"][0]["text"] == deltas
        assert done["usage"]["output_tokens"] == max(1, len(deltas) // 4)  # the provider's count, passed through
        assert done["usage"]["input_tokens"] > 0
        added = next(event for event in events if event["type"] == names["item_added"])
        assert added["previous_item_id"] == user_item["id"]
    chat = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]
    assert chat["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}
    assert chat["stream"] is True


async def test_audio_turn_streams_audio_and_transcript(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        await add_user_text(client, "Say hello. Then say goodbye.")
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    sequence = without_deltas(events)
    assert sequence[:4] == [
        "response.created",
        "response.output_item.added",
        names["item_added"],
        "response.content_part.added",
    ]
    tail = [names["audio_done"], names["transcript_done"], "response.content_part.done", "response.output_item.done"]
    tail += ["conversation.item.done"] if dialect == "ga" else []
    assert sequence[-len(tail) - 1 :] == [*tail, "response.done"]
    middle = set(sequence[4 : -len(tail) - 1])
    assert middle == {names["audio_delta"], names["transcript_delta"]}
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == names["audio_delta"])
    transcript = "".join(e["delta"] for e in events if e["type"] == names["transcript_delta"])
    assert transcript == "You said: Say hello. Then say goodbye.. That is all I have to say."
    assert len(audio) > 24_000 * 2  # the fake speaks 40 ms a character: seconds of PCM16 24 kHz
    first_audio = next(i for i, e in enumerate(events) if e["type"] == names["audio_delta"])
    first_transcript = next(i for i, e in enumerate(events) if e["type"] == names["transcript_delta"])
    assert first_transcript < first_audio  # text is announced just ahead of the audio that speaks it
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": names["audio_part"], "transcript": transcript}]
    speech = fake_requests(fake, "/v1/audio/speech", client.session_id)
    assert speech and all(request["body"]["response_format"] == "pcm" for request in speech)
    assert "".join(request["body"]["input"] for request in speech).replace(" ", "") == transcript.replace(" ", "")


@pytest.mark.parametrize("reply", ["...", "Well... — let me see. ...", "😀"])
async def test_text_with_nothing_to_say_is_a_pause_not_a_failure(
    server: RunningServer, fake: FakeOpenAI, dialect: str, reply: str
) -> None:
    """Models do reply "..." or a lone emoji: the response completes with its transcript and a short pause of audio,
    and no such text reaches the TTS provider (which fails on it, or returns no audio, which Pipecat calls an error)."""
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        script(fake, client.session_id, chat=[{"text": reply}])
        await add_user_text(client, "Hmm?")
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    assert "error" not in types(events)
    done = events[-1]["response"]
    assert done["status"] == "completed"
    transcript = "".join(e["delta"] for e in events if e["type"] == names["transcript_delta"])
    assert transcript.replace(" ", "") == reply.replace(" ", "")
    assert any(e["type"] == names["audio_delta"] for e in events)
    speech = fake_requests(fake, "/v1/audio/speech", client.session_id)
    spoken = [request["body"]["input"].strip() for request in speech]
    assert all(any(char.isalnum() for char in text) for text in spoken), spoken
    assert bool(spoken) == any(char.isalnum() for char in reply)


async def test_out_of_band_response_stays_out_of_the_conversation(
    server: RunningServer, fake: FakeOpenAI, dialect: str
) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        user_item = await add_user_text(client, "I like green apples.")
        response = {
            "conversation": "none",
            "metadata": {"purpose": "classify"},
            "instructions": "Classify the sentiment.",
            "input": [{"type": "item_reference", "id": user_item["id"]}, user_text("Extra context.")["item"]],
            **text_only(dialect),
        }
        await client.send({"type": "response.create", "response": response})
        events = await client.until("response.done")
        assert names["item_added"] not in types(events)
        assert "conversation.item.done" not in types(events)
        done = events[-1]["response"]
        assert done["conversation_id"] is None
        assert done["metadata"] == {"purpose": "classify"}
        assert done["status"] == "completed"
        # The conversation holds only the user item: an in-band response now sees just that.
        await client.send({"type": "response.create", "response": text_only(dialect)})
        events = await client.until("response.done")
        assert names["item_added"] in types(events)
    out_of_band, in_band = [
        r["body"]["messages"] for r in fake_requests(fake, "/v1/chat/completions", client.session_id)
    ]
    assert out_of_band[0] == {"role": "system", "content": "Classify the sentiment."}
    assert out_of_band[1:] == [
        {"role": "user", "content": "I like green apples."},
        {"role": "user", "content": "Extra context."},
    ]
    assert [m["role"] for m in in_band] == ["system", "user"]


async def test_cancel_mid_response(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        script(
            fake,
            client.session_id,
            chat=[{"text": "One two three four five six seven eight nine ten. " * 20, "chunk_delay_s": 0.05}],
        )
        await add_user_text(client, "Count slowly.")
        await client.send({"type": "response.create", "response": text_only(dialect)})
        await client.until(names["text_delta"])
        await client.send({"type": "response.cancel", "event_id": "evt_cancel"})
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"
        closing = [e for e in without_deltas(events) if not e.endswith(".delta")]
        expected = [names["text_done"], "response.content_part.done", "response.output_item.done"]
        expected += ["conversation.item.done"] if dialect == "ga" else []
        assert closing == [*expected, "response.done"]
        assert done["output"][0]["status"] == "incomplete"
        await client.no_event(within=0.5)  # nothing of the cancelled response arrives afterwards
        # The session goes on: a new response works.
        await client.send({"type": "response.create", "response": text_only(dialect)})
        events = await client.until("response.done")
        assert events[-1]["response"]["status"] == "completed"


async def test_cancel_audio_response_stops_audio(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        script(fake, client.session_id, speech=[{"stall_s": 0.2}] * 3)
        await add_user_text(client, "Talk for a while. Keep going. And more.")
        await client.send({"type": "response.create"})
        await client.until(names["audio_delta"])
        await client.send({"type": "response.cancel"})
        events = await client.until("response.done")
        assert events[-1]["response"]["status"] == "cancelled"
        await client.no_event(within=0.8)


async def test_item_retrieve_delete_and_truncate(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        user_item = await add_user_text(client, "Tell me something. Then tell me more.")
        await client.send({"type": "conversation.item.retrieve", "item_id": user_item["id"]})
        retrieved = await client.expect("conversation.item.retrieved")
        assert retrieved["item"]["content"][0]["text"] == "Tell me something. Then tell me more."

        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assistant = events[-1]["response"]["output"][0]
        audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == names["audio_delta"])
        total_ms = len(audio) / 48
        transcript = assistant["content"][0]["transcript"]

        cut_ms = int(total_ms * 0.3)
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": assistant["id"],
                "content_index": 0,
                "audio_end_ms": cut_ms,
            }
        )
        truncated = await client.expect("conversation.item.truncated")
        assert truncated == {**truncated, "item_id": assistant["id"], "content_index": 0, "audio_end_ms": cut_ms}
        await client.send({"type": "conversation.item.retrieve", "item_id": assistant["id"]})
        item = (await client.expect("conversation.item.retrieved"))["item"]
        heard = item["content"][0]["transcript"]
        assert heard and len(heard) < len(transcript) and transcript.startswith(heard)
        assert len(base64.b64decode(item["content"][0]["audio"])) == cut_ms * 48

        # The next LLM request sees only what was heard.
        await client.send({"type": "response.create", "response": text_only(dialect)})
        await client.until("response.done")
        last = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
        assert {"role": "assistant", "content": heard} in last

        await client.send({"type": "conversation.item.delete", "item_id": user_item["id"], "event_id": "evt_del"})
        deleted = await client.expect("conversation.item.deleted")
        assert deleted["item_id"] == user_item["id"]
        await client.send({"type": "conversation.item.retrieve", "item_id": user_item["id"], "event_id": "evt_r"})
        error = (await client.expect("error"))["error"]
        assert error["event_id"] == "evt_r" and error["param"] == "item_id"


async def test_truncate_beyond_audio_is_invalid_value(server: RunningServer, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        await add_user_text(client, "Hi.")
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        audio_ms = sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == names["audio_delta"]) / 48
        item_id = events[-1]["response"]["output"][0]["id"]
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": int(audio_ms) + 1000,
                "event_id": "evt_t",
            }
        )
        error = (await client.expect("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio_end_ms", "evt_t")


async def test_previous_item_id_root_and_insert(server: RunningServer, fake: FakeOpenAI, dialect: str) -> None:
    names = NAMES[dialect]
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        first = await add_user_text(client, "second")
        await client.send({**user_text("first"), "previous_item_id": "root"})
        added = await client.expect(names["item_added"])
        assert added["previous_item_id"] is None
        if dialect == "ga":
            await client.expect("conversation.item.done")
        await client.send({**user_text("third"), "previous_item_id": first["id"]})
        added = await client.expect(names["item_added"])
        assert added["previous_item_id"] == first["id"]
        if dialect == "ga":
            await client.expect("conversation.item.done")
        await client.send({"type": "response.create", "response": text_only(dialect)})
        await client.until("response.done")
    messages = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]["messages"]
    assert [m["content"] for m in messages[1:]] == ["first", "second", "third"]


async def test_max_output_tokens_ends_incomplete(server: RunningServer, dialect: str) -> None:
    async with connect(server.base_url, dialect) as client:
        await open_session(client)
        await add_user_text(client, "Tell me a long story about many things.")
        limit = {"max_output_tokens": 3} if dialect == "ga" else {"max_response_output_tokens": 3}
        await client.send({"type": "response.create", "response": {**text_only(dialect), **limit}})
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "incomplete"
        assert done["status_details"] == {**done["status_details"], "type": "incomplete", "reason": "max_output_tokens"}
        assert done["output"][0]["status"] == "incomplete"
        assert done["max_output_tokens"] == 3
