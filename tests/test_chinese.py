"""Chinese end to end: routing by language, the offline Chinese voice, Edge's zh-CN voices, the clear error.

The offline round trip needs the offline Chinese voice, which `make test` builds (`make zh-voice`, cached): without it
that test fails and says so rather than being skipped. Its spoken question is a committed fixture made once with the
voice (tests/fixtures/make_zh_fixtures.py).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest

from audio_utils import PIPELINE_INPUT_RATE, resample
from local_models import LocalWhisper, default_cache_dir, whisper_model_path, zh_voice_installed
from providers.errors import VOICE_LANGUAGE_UNAVAILABLE
from providers.languages import text_language
from tests.fakes.edge_tts_fake import FakeEdgeTTS
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import chunks, pcm24k, silence24k, zh_manifest
from tests.support.fake_control import script
from tests.support.realtime_client import RealtimeTestClient, connect
from tests.support.servers import RunningServer, provider_env, start_server
from zh_frontend import normalize_numbers

CHINESE_REPLY = "你好！今天北京天气晴朗，气温二十度。我们明天见。"
ZH_PROMPT = "以下是普通话的句子。"  # keeps Whisper to simplified characters


def hanzi(text: str) -> str:
    return "".join(re.findall(r"[\u4e00-\u9fff]", normalize_numbers(text)))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate over Han characters (numbers spelt out first): edit distance / reference length."""
    ref, hyp = hanzi(reference), hanzi(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[len(hyp)] / max(len(ref), 1)


def of_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == name]


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in of_type(events, "response.output_audio.delta"))


async def ask(client: RealtimeTestClient, text: str, **response: Any) -> list[dict[str, Any]]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send({"type": "conversation.item.create", "item": item})
    await client.send({"type": "response.create", "response": {"output_modalities": ["audio"], **response}})
    return await client.until("response.done", timeout=60)


def spoken_transcript(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in of_type(events, "response.output_audio_transcript.delta"))


# --------------------------------------------------------------------------------------------------------------
# No voice for the reply's language: text and transcript, no audio, one error
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper_only(fake_openai: FakeOpenAI) -> Iterator[RunningServer]:
    """Piper (English) without the Chinese voice; the LLM is the OpenAI fake, so the reply's text is known."""
    env = {**provider_env(fake_openai), "TTS_PROVIDER": "piper", "TTS_ZH_VOICE": "false"}
    running = start_server(env)
    yield running
    running.stop()


async def test_chinese_reply_without_a_chinese_voice(piper_only: RunningServer, fake: FakeOpenAI) -> None:
    async with connect(piper_only.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, chat=[{"text": CHINESE_REPLY}])
        events = await ask(client, "今天天气怎么样？")
        done = events[-1]["response"]
        assert done["status"] == "completed", done
        assert spoken_transcript(events) == CHINESE_REPLY  # the transcript arrives, whole
        assert done["output"][0]["content"][0]["transcript"] == CHINESE_REPLY
        assert audio_of(events) == b""  # and no English voice reading "Chinese letter" per character
        errors = of_type(events, "error")
        assert len(errors) == 1, errors  # three sentences, one error
        error = errors[0]["error"]
        assert error["code"] == VOICE_LANGUAGE_UNAVAILABLE
        assert "make zh-voice" in error["message"] and "TTS_PROVIDER=edge_tts" in error["message"]
        assert "Chinese" in error["message"]
        await client.no_event(within=0.5)

        # The session goes on: an English reply is spoken, with no error.
        script(fake, client.session_id, chat=[{"text": "Hello there. See you tomorrow."}])
        events = await ask(client, "Hello?")
        assert events[-1]["response"]["status"] == "completed"
        assert len(audio_of(events)) > 48 * 300
        assert not of_type(events, "error")


# --------------------------------------------------------------------------------------------------------------
# Edge TTS: a zh-CN voice for Chinese replies
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge() -> Iterator[FakeEdgeTTS]:
    fake = FakeEdgeTTS().start_in_thread()
    yield fake  # type: ignore[misc]
    fake.stop_thread()


@pytest.fixture(scope="module")
def edge_server(fake_openai: FakeOpenAI, edge: FakeEdgeTTS) -> Iterator[RunningServer]:
    env = {
        **provider_env(fake_openai),
        "TTS_PROVIDER": "edge_tts",
        "EDGE_TTS_URL": edge.url,
        "EDGE_TTS_VOICE": "en-US-AriaNeural",  # an English voice: Chinese replies must still get a Chinese one
    }
    running = start_server(env)
    yield running
    running.stop()


async def test_edge_chooses_a_chinese_voice_for_a_chinese_reply(
    edge_server: RunningServer, edge: FakeEdgeTTS, fake: FakeOpenAI
) -> None:
    edge.reset()
    async with connect(edge_server.base_url) as client:
        await client.until("conversation.created")
        script(
            fake, client.session_id, chat=[{"text": "你好！很高兴认识你。"}, {"text": "Hello there. Nice to meet you."}]
        )
        chinese = await ask(client, "你好")
        english = await ask(client, "Hello")
    assert chinese[-1]["response"]["status"] == "completed" and english[-1]["response"]["status"] == "completed"
    assert audio_of(chinese) and audio_of(english)
    assert not of_type(chinese + english, "error")
    voices = [(request["ssml"]["voice"], request["ssml"]["text"]) for request in edge.requests if request["ssml"]]
    zh = {voice for voice, text in voices if text_language(text) == "zh"}
    en = {voice for voice, text in voices if text_language(text) is None}
    assert zh == {"Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)"}, voices
    assert en == {"Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)"}, voices


# --------------------------------------------------------------------------------------------------------------
# The offline stack, spoken Chinese both ways
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_zh() -> Iterator[RunningServer]:
    """The default configuration (`make run`: tiny.en, the local LLM, Piper) with the Chinese voice installed."""
    if not zh_voice_installed(default_cache_dir()):
        pytest.fail(f"the offline Chinese voice is not in {default_cache_dir()}: run `make zh-voice` (make test does)")
    running = start_server({"LLM_TEMPERATURE": "0", "REALTIME_CACHE_DIR": str(default_cache_dir())})
    yield running
    running.stop()


async def test_spoken_chinese_turn_offline(offline_zh: RunningServer) -> None:
    said = zh_manifest()["files"]["zh_question.wav"]["utterances"][0]["text"]
    assert "The offline Chinese voice" in offline_zh.log() and "NON-COMMERCIAL" in offline_zh.log()  # said at start
    async with connect(offline_zh.base_url) as client:
        await client.until("conversation.created")
        transcription = {"model": "whisper-1", "language": "zh"}
        session = {
            "type": "realtime",
            "instructions": "你是一个语音助手。用一两句简短的中文回答。",
            "max_output_tokens": 80,
            "audio": {"input": {"transcription": transcription}},
        }
        await client.send({"type": "session.update", "session": session})
        await client.until("session.updated")
        for chunk in chunks(pcm24k("zh_question.wav") + silence24k(800), 40, 48):
            await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
        events = await client.until("response.done", timeout=120)
    heard = of_type(events, "conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert cer(said, heard) <= 0.2, heard  # Whisper base, not tiny.en's English nonsense
    assert "loading Whisper base" in offline_zh.log()
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    transcript = done["output"][0]["content"][0]["transcript"]
    assert text_language(transcript) == "zh", transcript
    assert not of_type(events, "error")
    audio = audio_of(events)
    assert len(audio) > 48 * 1000, transcript  # a second of speech at least
    # The reply's audio, read back by Whisper base in Chinese, says what its transcript says.
    whisper = LocalWhisper.load(whisper_model_path("base", default_cache_dir()))
    back = await whisper.transcribe(resample(audio, 24_000, PIPELINE_INPUT_RATE), "zh", ZH_PROMPT)
    assert cer(transcript, back.text) <= 0.3, (transcript, back.text)


def longest_repeat(text: str, size: int = 6) -> int:
    """How often the most repeated run of `size` characters occurs in `text` (a reply in a loop: dozens)."""
    counts: dict[str, int] = {}
    for start in range(len(text) - size + 1):
        counts[text[start : start + size]] = counts.get(text[start : start + size], 0) + 1
    return max(counts.values(), default=0)


async def test_a_long_chinese_list_does_not_loop(offline_zh: RunningServer) -> None:
    """Without llama.cpp's repeat penalty and DRY sampler, Qwen2.5-0.5B at temperature 0 lists fruit as 「葡萄柚子、」
    over and over until the token limit (measured: 502 characters, one run of 6 repeated 92 times; with them: one
    sentence of 26 characters)."""
    async with connect(offline_zh.base_url) as client:
        await client.until("conversation.created")
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "列出你知道的所有水果。"}],
        }
        await client.send({"type": "conversation.item.create", "item": item})
        await client.send(
            {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 200}}
        )
        events = await client.until("response.done", timeout=180)
    done = events[-1]["response"]
    assert done["status"] == "completed", done  # not "incomplete" at max_output_tokens
    text = done["output"][0]["content"][0]["text"]
    assert text_language(text) == "zh", text
    assert longest_repeat(text) <= 3, text
