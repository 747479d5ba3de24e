"""The third-party providers (Deepgram, Ollama, SiliconFlow, ElevenLabs, Edge TTS), each against a loopback fake of its
wire API, through the server and the official SDK: a full turn, Chinese end to end, and every failure mode.

Three servers, one per provider mix, shared by the tests of this module:

* `zh_server`: Deepgram → Ollama → Edge TTS, in Chinese (DEEPGRAM_LANGUAGE=zh-CN, the default Edge voice);
* `sf_server`: SiliconFlow for all three stages (what SILICONFLOW.md describes);
* `el_server`: OpenAI transcription → OpenAI chat → ElevenLabs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from config import Settings
from providers.errors import ConfigurationError
from service_providers import Providers
from session.commands import Transcribe
from tests.fakes.deepgram_fake import FakeDeepgram
from tests.fakes.edge_tts_fake import FakeEdgeTTS, mp3
from tests.fakes.elevenlabs_fake import FakeElevenLabs
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.siliconflow_fake import FakeSiliconFlow
from tests.support.audio_fixtures import chunks, pcm24k, silence24k
from tests.support.fake_control import fake_requests, script
from tests.support.realtime_client import RealtimeTestClient, connect
from tests.support.servers import ROOT, RunningServer, free_port, start_server

DG_KEY = "dg-secret-0123456789abcdef0123"
SF_KEY = "sk-siliconflow-secret-0123456789"
EL_KEY = "el-secret-0123456789abcdef0123"
KEYS = (DG_KEY, SF_KEY, EL_KEY)
TIMEOUTS = {"STT_TIMEOUT_S": "2", "LLM_TIMEOUT_S": "2", "TTS_TIMEOUT_S": "2"}
TRANSCRIPTION_DONE = (
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
)

# --------------------------------------------------------------------------------------------------------------
# Fakes and servers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deepgram() -> Iterator[FakeDeepgram]:
    fake = FakeDeepgram(DG_KEY).start_in_thread()
    yield fake  # type: ignore[misc]
    fake.stop_thread()


@pytest.fixture(scope="module")
def edge() -> Iterator[FakeEdgeTTS]:
    fake = FakeEdgeTTS().start_in_thread()
    yield fake  # type: ignore[misc]
    fake.stop_thread()


@pytest.fixture(scope="module")
def elevenlabs() -> Iterator[FakeElevenLabs]:
    fake = FakeElevenLabs(EL_KEY).start_in_thread()
    yield fake  # type: ignore[misc]
    fake.stop_thread()


@pytest.fixture(scope="module")
def siliconflow() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(SF_KEY).start_in_thread()
    yield fake  # type: ignore[misc]
    fake.stop_thread()


def edge_for_this_test(server: RunningServer, edge: FakeEdgeTTS) -> None:
    """Edge's requests carry no session id, so its steps and log cannot be told apart by session: once no session of
    `server` is open, none can reach Edge any more, and what Edge saw before is forgotten."""
    deadline = time.monotonic() + 10
    while server.health()["active_sessions"]:
        assert time.monotonic() < deadline, server.health()
        time.sleep(0.02)
    edge.reset()


@pytest.fixture(autouse=True)
def _clean_fakes(deepgram: FakeDeepgram, edge: FakeEdgeTTS, elevenlabs: FakeElevenLabs, siliconflow: FakeSiliconFlow):
    for fake in (deepgram, edge, elevenlabs, siliconflow):
        fake.reset()
    deepgram.default_text = "hello"


@pytest.fixture(scope="module")
def zh_server(fake_openai: FakeOpenAI, deepgram: FakeDeepgram, edge: FakeEdgeTTS) -> Iterator[RunningServer]:
    running = start_server(
        {
            **TIMEOUTS,
            "STT_PROVIDER": "deepgram",
            "DEEPGRAM_API_KEY": DG_KEY,
            "DEEPGRAM_BASE_URL": deepgram.ws_url,
            "DEEPGRAM_LANGUAGE": "zh-CN",
            "LLM_PROVIDER": "ollama",
            "OLLAMA_BASE_URL": fake_openai.base_url,
            "OLLAMA_MODEL": "qwen2.5:7b",
            "TTS_PROVIDER": "edge_tts",
            "EDGE_TTS_URL": edge.url,
        }
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sf_server(siliconflow: FakeSiliconFlow) -> Iterator[RunningServer]:
    running = start_server(
        {
            **TIMEOUTS,
            "STT_PROVIDER": "siliconflow",
            "LLM_PROVIDER": "siliconflow",
            "TTS_PROVIDER": "siliconflow",
            "SILICONFLOW_API_KEY": SF_KEY,
            "SILICONFLOW_BASE_URL": siliconflow.base_url,
        }
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def el_server(fake_openai: FakeOpenAI, elevenlabs: FakeElevenLabs) -> Iterator[RunningServer]:
    running = start_server(
        {
            **TIMEOUTS,
            "STT_PROVIDER": "openai_whisper",
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_API_KEY": "sk-test-fake-key-0123456789",
            "TTS_PROVIDER": "elevenlabs",
            "ELEVENLABS_API_KEY": EL_KEY,
            "ELEVENLABS_BASE_URL": elevenlabs.base_url,
        }
    )
    yield running
    running.stop()


# --------------------------------------------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------------------------------------------


async def update(client: RealtimeTestClient, session: dict[str, Any]) -> None:
    await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
    await client.until("session.updated")


async def stream(client: RealtimeTestClient, audio: bytes) -> None:
    for chunk in chunks(audio, 40, 48):
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


async def ask(client: RealtimeTestClient, modality: str = "audio", **response: Any) -> list[dict[str, Any]]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi. Bye."}]}
    await client.send({"type": "conversation.item.create", "item": item})
    await client.send({"type": "response.create", "response": {"output_modalities": [modality], **response}})
    return await client.until("response.done", timeout=20)


async def committed_turn(client: RealtimeTestClient) -> list[dict[str, Any]]:
    """A push-to-talk turn: its audio, a commit, and the events up to its transcription's end."""
    await stream(client, pcm24k("hello.wav"))
    await client.send({"type": "input_audio_buffer.commit"})
    received = []
    while True:
        event = await client.recv(timeout=15)
        received.append(event)
        if event["type"] in TRANSCRIPTION_DONE:
            return received


async def push_to_talk(client: RealtimeTestClient) -> None:
    transcription = {"model": "gpt-4o-transcribe"}
    await update(client, {"audio": {"input": {"turn_detection": None, "transcription": transcription}}})


def of_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == name]


def audio_bytes(events: list[dict[str, Any]]) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in of_type(events, "response.output_audio.delta"))


def assert_no_key(payload: Any) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    for key in KEYS:
        assert key not in text


def assert_failed(events: list[dict[str, Any]], code: str, stage: str) -> None:
    errors = of_type(events, "error")
    assert len(errors) == 1, events
    assert errors[0]["error"]["code"] == code, errors
    assert stage in errors[0]["error"]["message"]
    done = events[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["error"]["code"] == code
    assert_no_key(events)


def assert_completed_with_audio(events: list[dict[str, Any]]) -> None:
    assert events[-1]["response"]["status"] == "completed", events
    assert audio_bytes(events) > 0


STT_FAILURES = [
    ("401", "provider_authentication_failed"),
    ("429", "provider_rate_limited"),
    ("500", "provider_error"),
    ("stall", "provider_timeout"),
    ("drop", "provider_unavailable"),
]
LLM_FAILURES = STT_FAILURES
TTS_FAILURES = STT_FAILURES


# --------------------------------------------------------------------------------------------------------------
# Configuration (no server)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "provider", "variable"),
    [
        ("stt", "deepgram", "DEEPGRAM_API_KEY"),
        ("stt", "siliconflow", "SILICONFLOW_API_KEY"),
        ("llm", "siliconflow", "SILICONFLOW_API_KEY"),
        ("tts", "elevenlabs", "ELEVENLABS_API_KEY"),
        ("tts", "siliconflow", "SILICONFLOW_API_KEY"),
    ],
)
def test_a_provider_without_its_key_is_refused(monkeypatch, stage: str, provider: str, variable: str) -> None:
    for name in ("DEEPGRAM_API_KEY", "SILICONFLOW_API_KEY", "ELEVENLABS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    providers = {"stt_provider": "openai_whisper", "llm_provider": "openai", "tts_provider": "openai_tts"}
    providers[f"{stage}_provider"] = provider
    settings = Settings(_env_file=None, openai_base_url="http://127.0.0.1:9/v1", **providers)
    with pytest.raises(ConfigurationError, match=f"{stage.upper()}_PROVIDER={provider} needs {variable}"):
        Providers.check(settings)


def test_edge_tts_needs_no_key_and_every_mix_is_accepted(monkeypatch) -> None:
    settings = Settings(
        _env_file=None,
        stt_provider="deepgram",
        deepgram_api_key="dg-key-0123456789",
        llm_provider="ollama",
        tts_provider="edge_tts",
    )
    Providers.check(settings)


def test_server_refuses_to_start_naming_the_missing_key(tmp_path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "LLM_", "TTS_", "STT_", "DEEPGRAM_", "SILICONFLOW_", "ELEVENLABS_"))
    }
    env.update(STT_PROVIDER="deepgram", LLM_PROVIDER="siliconflow", TTS_PROVIDER="edge_tts")
    env["SERVER_PORT"] = str(free_port())
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "STT_PROVIDER=deepgram needs DEEPGRAM_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_voices_map_onto_each_provider() -> None:
    import edge_tts

    from providers.edge import EdgeTtsProvider
    from providers.elevenlabs import ElevenLabsTtsProvider
    from providers.siliconflow import SiliconFlowTtsProvider

    edge_provider = EdgeTtsProvider("zh-CN-XiaoxiaoNeural", None, 5.0)
    assert edge_tts.communicate.WSS_URL.startswith("wss://speech.platform.bing.com/")  # unset: Microsoft's own
    assert edge_provider.voice_for("alloy") == "zh-CN-XiaoxiaoNeural"
    assert edge_provider.voice_for("en-US-AriaNeural") == "en-US-AriaNeural"
    assert edge_provider.voice_for("zh-CN-liaoning-XiaobeiNeural") == "zh-CN-liaoning-XiaobeiNeural"
    eleven = ElevenLabsTtsProvider("k", "21m00Tcm4TlvDq8ikWAM", "eleven_flash_v2_5", "http://x", 5.0)
    assert eleven.voice_for("marin") == "21m00Tcm4TlvDq8ikWAM"
    assert eleven.voice_for("JBFqnCBsd6RMkjVDRZzb") == "JBFqnCBsd6RMkjVDRZzb"
    silicon = SiliconFlowTtsProvider("k", "http://x/v1", "FunAudioLLM/CosyVoice2-0.5B", "alex", 5.0)
    assert silicon.default_voice == "FunAudioLLM/CosyVoice2-0.5B:alex"
    assert silicon.voice_for("anna") == "FunAudioLLM/CosyVoice2-0.5B:anna"
    assert silicon.voice_for("speech:my-voice:abc:def") == "speech:my-voice:abc:def"
    assert silicon.voice_for("shimmer") == "FunAudioLLM/CosyVoice2-0.5B:alex"


def test_transcript_segments_join_without_spaces_in_chinese() -> None:
    from providers.deepgram import _join

    assert _join(["hello there", "how are you"]) == "hello there how are you"
    assert _join(["今天 天气", "怎么样？"]) == "今天天气怎么样？"
    assert _join(["我说 OK 了", ""]) == "我说 OK 了"


def test_edge_mp3_is_decoded_as_it_arrives() -> None:
    from providers.edge import Mp3Decoder

    audio = mp3(1000)
    decoder = Mp3Decoder()
    pieces = [decoder.decode(audio[start : start + 2048]) for start in range(0, len(audio), 2048)]
    pieces.append(decoder.flush())
    assert len(pieces[0]) > 0  # PCM from the first 2 KiB already (0.3 s of MP3), not after the whole stream
    total_ms = sum(len(piece) for piece in pieces) / 48
    assert 1000 <= total_ms <= 1100  # 24 kHz PCM16 mono; MP3 adds its encoder delay and padding


@pytest.mark.parametrize("provider", ["deepgram", "edge_tts", "elevenlabs", "siliconflow"])
async def test_a_provider_that_cannot_be_reached_is_reported_unavailable(monkeypatch, provider: str) -> None:
    import edge_tts

    from providers.deepgram import DeepgramTranscriber
    from providers.edge import EdgeTtsProvider
    from providers.elevenlabs import ElevenLabsTtsProvider
    from providers.errors import provider_failure
    from providers.siliconflow import SiliconFlowTtsProvider

    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", edge_tts.communicate.WSS_URL)  # restored afterwards
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as caught:
        if provider == "deepgram":
            transcriber = DeepgramTranscriber(DG_KEY, "nova-2", None, f"ws://{closed}", 2.0)
            await transcriber.transcribe(Transcribe("stt_test", b"\x00\x00" * 1600, None, None, "sess_test"))
        else:
            tts = {
                "edge_tts": lambda: EdgeTtsProvider("zh-CN-XiaoxiaoNeural", f"ws://{closed}/x", 2.0),
                "elevenlabs": lambda: ElevenLabsTtsProvider(
                    EL_KEY, "21m00Tcm4TlvDq8ikWAM", "eleven_flash_v2_5", f"http://{closed}", 2.0
                ),
                "siliconflow": lambda: SiliconFlowTtsProvider(
                    SF_KEY, f"http://{closed}/v1", "FunAudioLLM/CosyVoice2-0.5B", "alex", 2.0
                ),
            }[provider]()
            try:
                async for _ in tts.create("sess_test").synthesize("你好。"):
                    pass
            finally:
                await tts.close()
    failure = provider_failure("TTS", provider, caught.value, list(KEYS))
    assert failure.code == "provider_unavailable", failure
    assert_no_key(str(caught.value))


# --------------------------------------------------------------------------------------------------------------
# Deepgram → Ollama → Edge TTS, in Chinese
# --------------------------------------------------------------------------------------------------------------

REPLY = "今天天气很好，阳光明媚。我们去公园散步吧！"
QUESTION = "今天天气怎么样？"


async def test_chinese_voice_turn_end_to_end(
    zh_server: RunningServer, fake: FakeOpenAI, deepgram: FakeDeepgram, edge: FakeEdgeTTS
) -> None:
    deepgram.default_text = QUESTION
    edge_for_this_test(zh_server, edge)
    # The reply streams in three pieces 0.4 s apart: the first clause must be spoken before the rest arrives.
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, chat=[{"text": REPLY, "chunk_chars": 7, "chunk_delay_s": 0.4}])
        transcription = {"model": "gpt-4o-transcribe", "language": "zh"}
        await update(client, {"audio": {"input": {"transcription": transcription}, "output": {"voice": "alloy"}}})
        await stream(client, pcm24k("hello.wav") + silence24k(600))
        timed: list[tuple[float, dict[str, Any]]] = []
        while not timed or timed[-1][1]["type"] != "response.done":
            event = await client.recv(timeout=20)
            timed.append((time.monotonic(), event))
    events = [event for _, event in timed]
    assert events[-1]["response"]["status"] == "completed", events

    # Deepgram heard the turn as PCM16 16 kHz, in the session's language, with the key in its header.
    (completed,) = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == QUESTION
    listen = deepgram.requests_for(client.session_id)[-1]
    assert listen["headers"]["Authorization"] == f"Token {DG_KEY}"
    assert {key: listen["query"][key] for key in ("model", "language", "encoding", "sample_rate", "channels")} == {
        "model": "nova-2",
        "language": "zh",
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
    }
    assert listen["control"][-1] == "CloseStream"
    assert 500 <= listen["audio_bytes"] / 32 <= 1800  # the turn's milliseconds of 16 kHz PCM16

    # Ollama got the Chinese transcript, intact.
    chat = fake_requests(fake, "/v1/chat/completions", client.session_id)[-1]["body"]
    assert chat["model"] == "qwen2.5:7b"
    assert chat["messages"][-1] == {"role": "user", "content": QUESTION}

    # Edge spoke the first clause on its own, then the sentences, in the configured voice (the session said alloy).
    spoken = [request["ssml"]["text"] for request in edge.requests]
    assert spoken == ["今天天气很好，", "阳光明媚。", "我们去公园散步吧！"]
    assert {request["ssml"]["voice"] for request in edge.requests} == {
        "Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)"
    }
    first_audio = next(at for at, event in timed if event["type"] == "response.output_audio.delta")
    assert first_audio < edge.requests[1]["received_at"]  # heard before the second sentence even existed

    deltas = [e["delta"] for e in of_type(events, "response.output_audio_transcript.delta")]
    assert deltas == ["今天天气很好，", "阳光明媚。", "我们去公园散步吧！"]
    (done,) = of_type(events, "response.output_audio_transcript.done")
    assert done["transcript"] == REPLY
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == REPLY
    assert audio_bytes(events) / 48 >= 1000  # 24 kHz PCM16: the three sentences' audio


async def test_deepgram_interim_results_are_transcription_deltas(
    zh_server: RunningServer, deepgram: FakeDeepgram
) -> None:
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        await push_to_talk(client)
        deepgram.script({"text": "今天 天气 怎么样"}, key=client.session_id)  # Deepgram writes Chinese words apart
        events = await committed_turn(client)
        deltas = [e["delta"] for e in of_type(events, "conversation.item.input_audio_transcription.delta")]
        assert len(deltas) >= 2
        assert events[-1]["type"] == "conversation.item.input_audio_transcription.completed"
        assert "".join(deltas) == events[-1]["transcript"] == "今天天气怎么样"
        # DEEPGRAM_LANGUAGE: the session set none
        assert deepgram.requests_for(client.session_id)[-1]["query"]["language"] == "zh-CN"

        transcription = {"model": "gpt-4o-transcribe", "language": "en"}
        await update(client, {"audio": {"input": {"transcription": transcription}}})
        deepgram.script({"text": "hello"}, key=client.session_id)
        events = await committed_turn(client)
        assert events[-1]["transcript"] == "hello"
        assert deepgram.requests_for(client.session_id)[-1]["query"]["language"] == "en"


async def test_edge_passes_an_edge_voice_through(zh_server: RunningServer, fake: FakeOpenAI, edge: FakeEdgeTTS) -> None:
    edge_for_this_test(zh_server, edge)
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, chat=[{"text": "Hello there. Nice to meet you."}])
        await update(client, {"audio": {"output": {"voice": "en-US-AriaNeural", "speed": 1.25}}})
        assert_completed_with_audio(await ask(client))
    ssml = edge.requests[0]["ssml"]
    assert ssml["voice"] == "Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)"
    assert ssml["rate"] == "+25%"


@pytest.mark.parametrize(("failure", "code"), STT_FAILURES)
async def test_deepgram_failures(zh_server: RunningServer, deepgram: FakeDeepgram, failure: str, code: str) -> None:
    steps = {
        "401": {"status": 401},
        "429": {"status": 429},
        "500": {"status": 500},
        "stall": {"stall": True},
        "drop": {"drop_after_audio_messages": 2},
    }
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        deepgram.script(steps[failure], key=client.session_id)
        await push_to_talk(client)
        failed = (await committed_turn(client))[-1]
        assert failed["type"] == "conversation.item.input_audio_transcription.failed"
        assert failed["error"]["code"] == code
        assert_no_key(failed)
        completed = (await committed_turn(client))[-1]  # the session goes on
        assert completed["type"] == "conversation.item.input_audio_transcription.completed"


@pytest.mark.parametrize(("failure", "code"), [*TTS_FAILURES, ("403", "provider_authentication_failed")])
async def test_edge_failures(
    zh_server: RunningServer, fake: FakeOpenAI, edge: FakeEdgeTTS, failure: str, code: str
) -> None:
    steps = {
        "401": {"status": 401},
        "403": {"status": 403},
        "429": {"status": 429},
        "500": {"status": 500},
        "stall": {"stall": True},
        "drop": {"drop_after_chunks": 1},
    }
    edge_for_this_test(zh_server, edge)
    edge.script(steps[failure], key=None)  # for whichever Edge request comes next: this test's
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        assert_failed(await ask(client), code, "TTS")
        assert_completed_with_audio(await ask(client))


async def test_edge_unknown_voice_fails_the_response_clearly(zh_server: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        await update(client, {"audio": {"output": {"voice": "en-US-NobodyNeural"}}})
        events = await ask(client)
        assert_failed(events, "provider_error", "TTS")
        assert "en-US-NobodyNeural" in of_type(events, "error")[0]["error"]["message"]


@pytest.mark.parametrize(("failure", "code"), [f for f in LLM_FAILURES if f[0] != "401"])
async def test_ollama_failures(zh_server: RunningServer, fake: FakeOpenAI, failure: str, code: str) -> None:
    steps = {
        "429": {"status": 429, "message": "too many requests"},
        "500": {"status": 500, "message": "model runner has unexpectedly stopped"},
        "stall": {"stall_after_chunks": 1},
        "drop": {"drop_after_chunks": 2},
    }
    async with connect(zh_server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, chat=[steps[failure]])
        events = await ask(client, "text")
        assert_failed(events, code, "LLM")
        assert "'ollama'" in of_type(events, "error")[0]["error"]["message"]
        assert (await ask(client, "text"))[-1]["response"]["status"] == "completed"


# --------------------------------------------------------------------------------------------------------------
# SiliconFlow for everything
# --------------------------------------------------------------------------------------------------------------


async def test_siliconflow_voice_turn(sf_server: RunningServer, siliconflow: FakeSiliconFlow) -> None:
    async with connect(sf_server.base_url) as client:
        await client.until("conversation.created")
        siliconflow.script("chat", client.session_id, {"text": REPLY})
        transcription = {"model": "gpt-4o-transcribe", "language": "zh"}
        await update(client, {"audio": {"input": {"transcription": transcription}}})
        await stream(client, pcm24k("hello.wav") + silence24k(600))
        events = await client.until("response.done", timeout=20)
        assert events[-1]["response"]["status"] == "completed", events
        (completed,) = of_type(events, "conversation.item.input_audio_transcription.completed")
        assert completed["transcript"] == "今天天气怎么样？"
        (done,) = of_type(events, "response.output_audio_transcript.done")
        assert done["transcript"] == REPLY
        assert audio_bytes(events) > 0

        # A preset voice by its name, and a slower speed, for the next response.
        await update(client, {"audio": {"output": {"voice": "anna", "speed": 0.8}}})
        assert_completed_with_audio(await ask(client))

    transcription_request = next(
        r for r in siliconflow.requests_for(client.session_id) if r["path"] == "/v1/audio/transcriptions"
    )
    assert transcription_request["headers"]["Authorization"] == f"Bearer {SF_KEY}"
    assert transcription_request["body"]["model"] == "FunAudioLLM/SenseVoiceSmall"
    assert transcription_request["body"]["language"] == "zh"
    assert transcription_request["audio"]["sample_rate"] == 16000 and transcription_request["audio"]["channels"] == 1
    chat = next(r for r in siliconflow.requests_for(client.session_id) if r["path"] == "/v1/chat/completions")
    assert chat["headers"]["Authorization"] == f"Bearer {SF_KEY}"
    assert chat["body"]["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert chat["body"]["messages"][-1] == {"role": "user", "content": "今天天气怎么样？"}
    speech = [r["body"] for r in siliconflow.requests_for(client.session_id) if r["path"] == "/v1/audio/speech"]
    assert [body["input"] for body in speech[:3]] == ["今天天气很好，", "阳光明媚。", "我们去公园散步吧！"]
    for body in speech:
        assert body["model"] == "FunAudioLLM/CosyVoice2-0.5B"
        assert body["response_format"] == "pcm" and body["sample_rate"] == 24000 and body["stream"] is True
    assert speech[0]["voice"] == "FunAudioLLM/CosyVoice2-0.5B:alex" and "speed" not in speech[0]
    assert speech[-1]["voice"] == "FunAudioLLM/CosyVoice2-0.5B:anna" and speech[-1]["speed"] == 0.8


@pytest.mark.parametrize(("failure", "code"), STT_FAILURES)
async def test_siliconflow_transcription_failures(
    sf_server: RunningServer, siliconflow: FakeSiliconFlow, failure: str, code: str
) -> None:
    steps = {
        "401": {"status": 401},
        "429": {"status": 429, "message": f"TPM limit reached for key {SF_KEY}"},
        "500": {"status": 500},
        "stall": {"delay_s": 5},
        "drop": {"drop": True},
    }
    async with connect(sf_server.base_url) as client:
        await client.until("conversation.created")
        siliconflow.script("transcription", client.session_id, steps[failure])
        await push_to_talk(client)
        failed = (await committed_turn(client))[-1]
        assert failed["type"] == "conversation.item.input_audio_transcription.failed"
        assert failed["error"]["code"] == code
        assert_no_key(failed)
        completed = (await committed_turn(client))[-1]
        assert completed["type"] == "conversation.item.input_audio_transcription.completed"
        assert completed["transcript"] == "今天天气怎么样？"


@pytest.mark.parametrize(("failure", "code"), LLM_FAILURES)
async def test_siliconflow_chat_failures(
    sf_server: RunningServer, siliconflow: FakeSiliconFlow, failure: str, code: str
) -> None:
    steps = {
        "401": {"status": 401},
        "429": {"status": 429, "message": f"TPM limit reached for key {SF_KEY}"},
        "500": {"status": 503},
        "stall": {"stall_after_chunks": 1},
        "drop": {"drop_after_chunks": 2},
    }
    async with connect(sf_server.base_url) as client:
        await client.until("conversation.created")
        siliconflow.script("chat", client.session_id, steps[failure])
        assert_failed(await ask(client, "text"), code, "LLM")
        events = await ask(client, "text")
        assert events[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize(("failure", "code"), TTS_FAILURES)
async def test_siliconflow_speech_failures(
    sf_server: RunningServer, siliconflow: FakeSiliconFlow, failure: str, code: str
) -> None:
    steps = {
        "401": {"status": 401},
        "429": {"status": 429, "message": f"TPM limit reached for key {SF_KEY}"},
        "500": {"status": 500},
        "stall": {"stall_s": 5},
        "drop": {"drop_after_bytes": 4800},
    }
    async with connect(sf_server.base_url) as client:
        await client.until("conversation.created")
        siliconflow.script("speech", client.session_id, steps[failure])
        assert_failed(await ask(client), code, "TTS")
        assert_completed_with_audio(await ask(client))


# --------------------------------------------------------------------------------------------------------------
# OpenAI → ElevenLabs
# --------------------------------------------------------------------------------------------------------------


async def test_elevenlabs_turn(el_server: RunningServer, fake: FakeOpenAI, elevenlabs: FakeElevenLabs) -> None:
    async with connect(el_server.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, chat=[{"text": REPLY}])
        events = await ask(client)
        assert_completed_with_audio(events)
        (done,) = of_type(events, "response.output_audio_transcript.done")
        assert done["transcript"] == REPLY
        # An ElevenLabs voice id, and a faster speed, for the next response.
        await update(client, {"audio": {"output": {"voice": "JBFqnCBsd6RMkjVDRZzb", "speed": 1.1}}})
        assert_completed_with_audio(await ask(client))
    first = elevenlabs.requests_for(client.session_id)[0]
    assert first["path"] == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream"
    assert first["headers"]["xi-api-key"] == EL_KEY
    assert first["query"] == {"output_format": "pcm_24000"}
    assert first["body"] == {"text": "今天天气很好，", "model_id": "eleven_flash_v2_5"}
    last = elevenlabs.requests_for(client.session_id)[-1]
    assert last["path"] == "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream"
    assert last["body"]["voice_settings"] == {"speed": 1.1}


@pytest.mark.parametrize(("failure", "code"), TTS_FAILURES)
async def test_elevenlabs_failures(
    el_server: RunningServer, fake: FakeOpenAI, elevenlabs: FakeElevenLabs, failure: str, code: str
) -> None:
    steps = {
        "401": {"status": 401},
        "429": {"status": 429},
        "500": {"status": 500},
        "stall": {"stall_s": 5},
        "drop": {"drop_after_bytes": 4800},
    }
    async with connect(el_server.base_url) as client:
        await client.until("conversation.created")
        elevenlabs.script(steps[failure], key=client.session_id)
        assert_failed(await ask(client), code, "TTS")
        assert_completed_with_audio(await ask(client))


# --------------------------------------------------------------------------------------------------------------
# Last: what the servers logged
# --------------------------------------------------------------------------------------------------------------


def test_no_key_reached_the_logs(zh_server: RunningServer, sf_server: RunningServer, el_server: RunningServer) -> None:
    for server in (zh_server, sf_server, el_server):
        log = server.log()
        assert_no_key(log)
        assert "Traceback" not in log
