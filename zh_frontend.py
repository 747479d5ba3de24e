"""Mandarin text → the phoneme ids of the offline Chinese voice (FastSpeech2 trained on CSMSC, `make zh-voice`).

The voice was trained on pinyin split into an initial and a toned final (`zh` `ong1`, `^` `en2` for a syllable without
initial), with prosody marks between them: `#0` between the syllables of a phrase, `#3` at a pause inside a sentence,
`sil` at both ends, then `eos`. This module produces exactly that from text:

1. numbers are spelt out (`normalize_numbers`: 2026年 → 二零二六年, 3.5 → 三点五, 25% → 百分之二十五);
2. `pypinyin` gives each character's syllable in the sentence's context (polyphones by phrase, 一/不 sandhi, neutral
   tone as 5); third-tone sandhi across a run of third tones (你好, 我很好, 展览馆) is applied here;
3. each syllable is split into the voice's initial and final (`split_syllable`); punctuation inside the text (a comma,
   a full stop between two sentences) becomes `#3`.

Characters that are neither Han nor clause punctuation (Latin letters, emoji) are skipped: the voice has no phonemes
for them. No I/O: the tables are data the model needs, written out below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pypinyin import Style, lazy_pinyin

# --------------------------------------------------------------------------------------------------------------
# The voice's symbol inventory (the order is the ids the model was trained with)
# --------------------------------------------------------------------------------------------------------------

INITIALS = ("^", "b", "c", "ch", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "q", "r", "s", "sh", "t", "x", "z", "zh")  # fmt: skip  # noqa: E501
FINALS = (
    "a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "i", "ia", "ian", "iang", "iao", "ie", "ii", "iii",
    "in", "ing", "iong", "iou", "o", "ong", "ou", "u", "ua", "uai", "uan", "uang", "uei", "uen", "ueng", "uo", "v",
    "van", "ve", "vn",
)  # fmt: skip
TONES = ("1", "2", "3", "4", "5")
PAUSES = ("sil", "#0", "#1", "#2", "#3")
SYMBOLS: tuple[str, ...] = ("pad", *PAUSES, *INITIALS, *(final + tone for final in FINALS for tone in TONES), "eos")
SYMBOL_IDS = {symbol: index for index, symbol in enumerate(SYMBOLS)}

WORD_BREAK = "#0"  # between two syllables
CLAUSE_BREAK = "#3"  # at a comma, an enumeration mark, a colon …
EDGE = "sil"

_CLAUSE_PUNCTUATION = frozenset("，,、；;：:—…。！？!?.")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# Initials as pinyin spells them, longest first so that "zh" wins over "z".
_PINYIN_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z", "c", "s")  # fmt: skip  # noqa: E501
# Syllables spelt with y/w (or none at all) and the final the voice knows them by.
_ZERO_INITIAL_FINALS = {
    "yi": "i", "ya": "ia", "yan": "ian", "yang": "iang", "yao": "iao", "ye": "ie", "yin": "in", "ying": "ing",
    "yo": "iou", "yong": "iong", "you": "iou", "yu": "v", "yuan": "van", "yue": "ve", "yun": "vn",
    "wu": "u", "wa": "ua", "wai": "uai", "wan": "uan", "wang": "uang", "wei": "uei", "wen": "uen", "weng": "ueng",
    "wo": "uo", "n": "en", "ng": "en", "m": "en", "hm": "en", "hng": "en",
}  # fmt: skip
# Abbreviated spellings after an initial: liu = l + iou, gui = g + uei, dun = d + uen.
_SPELT_FINALS = {"iu": "iou", "ui": "uei", "un": "uen"}
_FINALS = frozenset(FINALS)


class FrontendError(ValueError):
    """A syllable the voice has no phonemes for."""


def split_syllable(syllable: str) -> tuple[str, str]:
    """A toneless pinyin syllable ("zhong", "nv", "yuan", "shi") as the voice's (initial, final): ("zh", "ong"),
    ("n", "v"), ("^", "van"), ("sh", "iii")."""
    syllable = syllable.replace("ü", "v")
    if syllable in _ZERO_INITIAL_FINALS:
        return "^", _ZERO_INITIAL_FINALS[syllable]
    initial = next((i for i in _PINYIN_INITIALS if syllable.startswith(i) and len(syllable) > len(i)), "")
    final = syllable[len(initial) :]
    if not initial:
        initial = "^"  # a, ai, en, er, ou …
    elif final == "i" and initial in ("zh", "ch", "sh", "r"):
        final = "iii"  # the apical vowel of zhi/chi/shi/ri
    elif final == "i" and initial in ("z", "c", "s"):
        final = "ii"  # … and of zi/ci/si
    elif initial in ("j", "q", "x") and final.startswith("u"):
        final = "v" + final[1:]  # ju = j + ü, juan = j + üan
    final = _SPELT_FINALS.get(final, final)
    if final not in _FINALS:
        raise FrontendError(f"no phonemes for the syllable {syllable!r}")
    return initial, final


# --------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------

_DIGITS = "零一二三四五六七八九"
_SMALL_UNITS = ("", "十", "百", "千")
_LARGE_UNITS = ("", "万", "亿", "万亿")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)(%|％)?")


def _four_digits(number: int) -> str:
    """0 < number < 10000, as read inside a larger number (with its inner zeros)."""
    out = ""
    zero = False
    for position in range(3, -1, -1):
        digit = number // 10**position % 10
        if digit == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += _DIGITS[digit] + _SMALL_UNITS[position]
    return out


def integer_reading(number: int) -> str:
    """1 → 一, 10 → 十, 15 → 十五, 105 → 一百零五, 20 010 → 二万零一十."""
    if number == 0:
        return "零"
    if number >= 10_000 ** len(_LARGE_UNITS):
        return "".join(_DIGITS[int(digit)] for digit in str(number))
    groups: list[int] = []
    while number:
        groups.append(number % 10_000)
        number //= 10_000
    out = ""
    skipped = False
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            skipped = bool(out)
            continue
        if out and (skipped or group < 1000):
            out += "零"
        out += _four_digits(group) + _LARGE_UNITS[index]
        skipped = False
    return out[1:] if out.startswith("一十") and len(groups) == 1 and groups[0] < 20 else out


def _number_reading(match: re.Match[str], text: str) -> str:
    digits, percent = match.group(1), match.group(2)
    whole, _, fraction = digits.partition(".")
    follower = text[match.end() : match.end() + 1]
    if not fraction and not percent and (follower == "年" or len(whole) > 8 or (len(whole) > 1 and whole[0] == "0")):
        reading = "".join(_DIGITS[int(d)] for d in whole)  # years, phone numbers, codes: digit by digit
    else:
        reading = integer_reading(int(whole))
        if fraction:
            reading += "点" + "".join(_DIGITS[int(d)] for d in fraction)
    return "百分之" + reading if percent else reading


def normalize_numbers(text: str) -> str:
    return _NUMBER.sub(lambda match: _number_reading(match, text), text)


# --------------------------------------------------------------------------------------------------------------
# Text → phonemes → ids
# --------------------------------------------------------------------------------------------------------------


def _third_tone_sandhi(tones: list[str]) -> list[str]:
    """In a run of third tones every one but the last is said as a second tone (你好 ni2 hao3, 展览馆)."""
    out = list(tones)
    for index in range(len(out) - 1):
        if out[index] == "3" and out[index + 1] == "3":
            out[index] = "2"
    return out


@dataclass(frozen=True)
class Syllable:
    pinyin: str  # without tone: "zhong"
    tone: str  # "1" … "5"


def _phrases(text: str) -> list[str]:
    """The text's runs of Han characters, split at clause punctuation (which becomes a pause)."""
    phrases: list[str] = []
    current = ""
    for char in text:
        if _HAN.match(char):
            current += char
        elif char in _CLAUSE_PUNCTUATION and current:
            phrases.append(current)
            current = ""
    if current:
        phrases.append(current)
    return phrases


def _syllables(phrase: str) -> list[Syllable]:
    spelt = lazy_pinyin(phrase, style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=True, errors="ignore")
    syllables = [Syllable(item[:-1], item[-1]) if item[-1:].isdigit() else Syllable(item, "5") for item in spelt]
    tones = _third_tone_sandhi([syllable.tone for syllable in syllables])
    return [Syllable(syllable.pinyin, tone) for syllable, tone in zip(syllables, tones, strict=True)]


def _syllable_phonemes(syllable: Syllable) -> list[str]:
    try:
        initial, final = split_syllable(syllable.pinyin)
        return [initial, final + syllable.tone]
    except FrontendError:
        # An r-coloured syllable ("nar"): the syllable, then the 儿 the voice was trained with.
        if syllable.pinyin.endswith("r") and len(syllable.pinyin) > 2:
            initial, final = split_syllable(syllable.pinyin[:-1])
            return [initial, final + syllable.tone, "er5"]
        return []  # an interjection the voice cannot say: left out rather than misread


def text_to_phonemes(text: str) -> list[str]:
    """`sil` `n` `i2` `#0` `^` `iao3` … `sil`; only `sil` `sil` for text without Han characters."""
    phonemes = [EDGE]
    for index, phrase in enumerate(_phrases(normalize_numbers(text))):
        if index:
            phonemes.append(CLAUSE_BREAK)
        words = [p for p in (_syllable_phonemes(s) for s in _syllables(phrase)) if p]
        for position, word in enumerate(words):
            if position:
                phonemes.append(WORD_BREAK)
            phonemes.extend(word)
    phonemes.append(EDGE)
    return phonemes


def text_to_ids(text: str) -> list[int]:
    """The model's input for `text`: its phonemes' ids and `eos`; an empty list when there is nothing to say."""
    phonemes = text_to_phonemes(text)
    if len(phonemes) <= 2:
        return []
    return [SYMBOL_IDS[phoneme] for phoneme in phonemes] + [SYMBOL_IDS["eos"]]


def has_speech(text: str) -> bool:
    return bool(_HAN.search(text))
