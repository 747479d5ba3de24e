"""Which languages each configured model and voice handles: the one table the server routes by.

A reply's language is told from its characters (`text_language`): cheap enough to run on every sentence the TTS gets,
and right for the case that matters (Chinese text would otherwise be read by an English voice as "Chinese letter"
per character). A session's transcription `language` (BCP-47 or ISO 639-1) is reduced to its primary subtag
(`language_code`) before it is looked up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# None in a table means "any language" (a multilingual model, or a provider that picks a voice per language).
Languages = frozenset[str] | None

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "yue": "Cantonese"}

# Speech to text: by STT_PROVIDER; local Whisper by WHISPER_MODEL (a folder of one's own counts as multilingual:
# faster-whisper reports what it really supports once loaded).
STT_LANGUAGES: dict[str, Languages] = {
    "openai_whisper": None,
    "deepgram": None,
    "siliconflow": frozenset({"zh", "en", "yue", "ja", "ko"}),  # SenseVoiceSmall
}
WHISPER_LANGUAGES: dict[str, Languages] = {"tiny.en": frozenset({"en"}), "base": None}

# Text to speech: by TTS_PROVIDER. Piper's voices each speak one language (read from the voice's config, this is the
# default voice's); Edge TTS picks a voice of the reply's language (EDGE_TTS_ZH_VOICE for Chinese).
TTS_LANGUAGES: dict[str, Languages] = {
    "piper": frozenset({"en"}),
    "zh_fastspeech": frozenset({"zh"}),
    "edge_tts": None,
    "openai_tts": None,
    "elevenlabs": None,  # eleven_flash_v2_5 / multilingual models
    "siliconflow": frozenset({"zh", "en", "yue", "ja", "ko"}),  # CosyVoice2
}

# The hint an error gives when no configured voice speaks a language: what to run or set.
VOICE_INSTALL_HINTS = {
    "zh": "run `make zh-voice` (the offline Chinese voice, non-commercial licence) and restart, or set "
    "TTS_PROVIDER=edge_tts (online, no key)",
}
DEFAULT_VOICE_HINT = "set TTS_PROVIDER to a provider that speaks it (edge_tts, openai_tts, elevenlabs)"

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LATIN = re.compile(r"[A-Za-z]")
# Below this share of CJK characters among letters a sentence is read as Latin text with a CJK name in it.
CJK_SHARE = 0.3


def language_code(tag: str | None) -> str | None:
    """ "zh-CN", "zh_Hans", "ZH" → "zh"; None or "" → None."""
    if not tag or not tag.strip():
        return None
    return tag.strip().lower().replace("_", "-").split("-")[0]


def text_language(text: str) -> str | None:
    """ "zh", "ja" or "ko" when CJK characters make up at least `CJK_SHARE` of the letters of `text`; None otherwise
    (Latin text, digits, punctuation: whatever the configured voice speaks)."""
    han = len(_HAN.findall(text))
    kana = len(_KANA.findall(text))
    hangul = len(_HANGUL.findall(text))
    cjk = han + kana + hangul
    if not cjk:
        return None
    if cjk / (cjk + len(_LATIN.findall(text))) < CJK_SHARE:
        return None
    if kana:
        return "ja"
    if hangul > han:
        return "ko"
    return "zh"


def speaks(languages: Languages, language: str | None) -> bool:
    return language is None or languages is None or language in languages


def language_name(language: str) -> str:
    return LANGUAGE_NAMES.get(language, language)


@dataclass(frozen=True)
class MissingVoice:
    """No configured voice speaks `language`: what the client is told."""

    language: str
    voice: str

    @property
    def message(self) -> str:
        hint = VOICE_INSTALL_HINTS.get(self.language, DEFAULT_VOICE_HINT)
        return (
            f"The TTS voice '{self.voice}' does not speak {language_name(self.language)} ({self.language}), so this "
            f"reply is sent as text and transcript without audio. To hear it: {hint}."
        )
