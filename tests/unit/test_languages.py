"""Language routing's pure parts: the language of a text, the capability table, the Chinese front end, the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import local_models
from config import Settings
from providers.edge import EdgeTtsProvider, voice_language
from providers.errors import VOICE_LANGUAGE_UNAVAILABLE, VoiceLanguageUnavailable, provider_failure
from providers.languages import TTS_LANGUAGES, MissingVoice, language_code, speaks, text_language
from providers.local import LocalWhisperTranscriber, chat_request, with_reply_language
from session.commands import RunResponse
from zh_frontend import (
    SYMBOL_IDS,
    SYMBOLS,
    integer_reading,
    normalize_numbers,
    split_syllable,
    text_to_ids,
    text_to_phonemes,
)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("你好，今天天气怎么样？", "zh"),
        ("我喜欢用Python写代码。", "zh"),  # a Latin word inside Chinese
        ("The word 你好 means hello in Chinese.", None),  # a Chinese word inside English
        ("Hello there.", None),
        ("1, 2, 3!", None),
        ("", None),
        ("こんにちは、元気ですか。", "ja"),
        ("안녕하세요", "ko"),
    ],
)
def test_text_language(text: str, language: str | None) -> None:
    assert text_language(text) == language


def test_language_codes_and_the_table() -> None:
    assert language_code("zh-CN") == language_code("ZH_hans") == "zh"
    assert language_code("") is None and language_code(None) is None
    assert not speaks(TTS_LANGUAGES["piper"], "zh") and speaks(TTS_LANGUAGES["piper"], "en")
    assert speaks(TTS_LANGUAGES["piper"], None)  # text of no language (digits) goes to the configured voice
    assert speaks(TTS_LANGUAGES["edge_tts"], "zh") and speaks(TTS_LANGUAGES["zh_fastspeech"], "zh")


def test_the_error_names_the_fix() -> None:
    missing = MissingVoice("zh", "en_US-joe-medium")
    failure = provider_failure("TTS", "piper", VoiceLanguageUnavailable(missing.message), [])
    assert failure.code == VOICE_LANGUAGE_UNAVAILABLE == "tts_language_unsupported"
    assert "en_US-joe-medium" in failure.message and "Chinese (zh)" in failure.message
    assert "make zh-voice" in failure.message and "TTS_PROVIDER=edge_tts" in failure.message


# --------------------------------------------------------------------------------------------------------------
# The Chinese front end
# --------------------------------------------------------------------------------------------------------------


def test_symbol_table_is_the_voices() -> None:
    # The ids the model was trained with (tools/build_zh_voice.py also compares the whole table with the wheel's).
    assert len(SYMBOLS) == 219
    assert (SYMBOL_IDS["pad"], SYMBOL_IDS["sil"], SYMBOL_IDS["#0"], SYMBOL_IDS["^"]) == (0, 1, 2, 6)
    assert (SYMBOL_IDS["zh"], SYMBOL_IDS["a1"], SYMBOL_IDS["vn5"], SYMBOL_IDS["eos"]) == (27, 28, 217, 218)


@pytest.mark.parametrize(
    ("syllable", "parts"),
    [
        ("zhong", ("zh", "ong")),
        ("shi", ("sh", "iii")),
        ("si", ("s", "ii")),
        ("ju", ("j", "v")),
        ("xuan", ("x", "van")),
        ("nv", ("n", "v")),
        ("lve", ("l", "ve")),
        ("liu", ("l", "iou")),
        ("gui", ("g", "uei")),
        ("dun", ("d", "uen")),
        ("yi", ("^", "i")),
        ("you", ("^", "iou")),
        ("yuan", ("^", "van")),
        ("wen", ("^", "uen")),
        ("er", ("^", "er")),
        ("ai", ("^", "ai")),
        ("n", ("^", "en")),
    ],
)
def test_split_syllable(syllable: str, parts: tuple[str, str]) -> None:
    assert split_syllable(syllable) == parts


def test_tone_sandhi_and_prosody() -> None:
    assert text_to_phonemes("你好") == ["sil", "n", "i2", "#0", "h", "ao3", "sil"]  # 3-3 → 2-3
    assert text_to_phonemes("展览馆")[2::3] == ["an2", "an2", "uan3"]  # a run of third tones
    assert text_to_phonemes("一个")[2] == "i2" and text_to_phonemes("一起")[2] == "i4"  # 一 before tone 4 / 3
    assert text_to_phonemes("不是")[2] == "u2"  # 不 before tone 4
    assert text_to_phonemes("我的")[-2] == "e5"  # the neutral tone
    assert text_to_phonemes("好，走吧。")[3] == "#3"  # a comma is a pause, the sentence's edges are silence
    assert text_to_phonemes("哪儿")[-3:] == ["^", "er2", "sil"]


def test_numbers_are_spelt_out() -> None:
    assert [integer_reading(n) for n in (0, 10, 15, 105, 1005, 10010, 123456)] == [
        "零",
        "十",
        "十五",
        "一百零五",
        "一千零五",
        "一万零一十",
        "一十二万三千四百五十六",
    ]
    assert normalize_numbers("2026年有3.5%的人") == "二零二六年有百分之三点五的人"


def test_ids_end_with_eos_and_skip_what_cannot_be_said() -> None:
    ids = text_to_ids("你好，Python！")
    assert ids[0] == SYMBOL_IDS["sil"] and ids[-2:] == [SYMBOL_IDS["sil"], SYMBOL_IDS["eos"]]
    assert text_to_ids("Hello!") == [] and text_to_ids("123") != []


# --------------------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------------------


def test_whisper_routes_languages_tiny_en_lacks() -> None:
    stt = LocalWhisperTranscriber(Settings(_env_file=None))  # type: ignore[call-arg]
    assert stt.needs_multilingual("zh") and stt.needs_multilingual("zh-CN")
    assert not stt.needs_multilingual("en") and not stt.needs_multilingual(None)
    off = LocalWhisperTranscriber(Settings(_env_file=None, whisper_multilingual_model="none"))  # type: ignore[call-arg]
    assert not off.needs_multilingual("zh")
    base = LocalWhisperTranscriber(Settings(_env_file=None, whisper_model="base"))  # type: ignore[call-arg]
    assert not base.needs_multilingual("zh")  # base speaks it itself


async def test_edge_reads_chinese_with_a_chinese_voice() -> None:
    provider = EdgeTtsProvider("en-US-AriaNeural", None, 5.0, zh_voice="zh-CN-YunxiNeural")
    service = provider.create("sess_1")
    assert service.voice_for_text("你好，很高兴认识你。") == "zh-CN-YunxiNeural"  # type: ignore[attr-defined]
    assert service.voice_for_text("Hello there.") == "en-US-AriaNeural"  # type: ignore[attr-defined]
    chinese = EdgeTtsProvider("zh-CN-XiaoxiaoNeural", None, 5.0).create("sess_2")
    assert chinese.voice_for_text("你好。") == "zh-CN-XiaoxiaoNeural"  # type: ignore[attr-defined]
    assert voice_language("Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)") == "zh"


def test_the_local_llm_is_asked_for_the_users_language_and_not_to_repeat_itself() -> None:
    english_system = [{"role": "system", "content": "You are a helpful assistant."}]
    chinese = with_reply_language([*english_system, {"role": "user", "content": "今天天气怎么样？"}])
    assert chinese[-1]["role"] == "system" and "中文" in chinese[-1]["content"]
    assert chinese[:2] == [*english_system, {"role": "user", "content": "今天天气怎么样？"}]  # the cached prefix
    english = [*english_system, {"role": "user", "content": "How is the weather?"}]
    assert with_reply_language(english) == english
    told = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "你好"}]
    assert with_reply_language(told) == told  # instructions already in Chinese
    run = RunResponse("resp_1", english_system, [], [], "auto", 100, 0.7, "audio", "alloy", 1.0, "sess_1")
    request = chat_request(run, Settings(_env_file=None))  # type: ignore[call-arg]
    assert request["repeat_penalty"] == 1.1 and request["dry_multiplier"] == 0.8


# --------------------------------------------------------------------------------------------------------------
# The installed voice is what `make zh-voice` wrote
# --------------------------------------------------------------------------------------------------------------


def test_the_chinese_voice_is_checked_before_loading(tmp_path: Path) -> None:
    assert not local_models.zh_voice_installed(tmp_path)
    with pytest.raises(local_models.ModelNotFound, match="make zh-voice"):
        local_models.zh_voice_paths(tmp_path)
    folder = local_models.zh_voice_folder(tmp_path)
    folder.mkdir(parents=True)
    files = {}
    for name, content in local_models.ZH_VOICE_FILES.items():
        (folder / name).write_bytes(name.encode())
        files[name] = {"sha256": local_models._sha256_file(folder / name), "content_sha256": content}
    (folder / local_models.ZH_VOICE_MANIFEST).write_text(json.dumps({"files": files}))
    assert local_models.zh_voice_paths(tmp_path) == tuple(folder / name for name in local_models.ZH_VOICE_FILES)
    (folder / "mb_melgan.onnx").write_bytes(b"something else")
    with pytest.raises(local_models.ModelCorrupt, match="changed since"):
        local_models.zh_voice_paths(tmp_path)
    files["mb_melgan.onnx"]["content_sha256"] = "0" * 64
    (folder / local_models.ZH_VOICE_MANIFEST).write_text(json.dumps({"files": files}))
    with pytest.raises(local_models.ModelCorrupt, match="not the converted model"):
        local_models.zh_voice_paths(tmp_path)


def test_the_chinese_voice_alone_needs_it_built(tmp_path: Path) -> None:
    from providers.local import ZhVoiceProvider

    with pytest.raises(local_models.ModelNotFound, match="make zh-voice"):
        ZhVoiceProvider(Settings(_env_file=None, tts_provider="zh_fastspeech", model_cache_dir=tmp_path))  # type: ignore[call-arg]
