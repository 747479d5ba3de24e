"""Access to the speech fixtures in `tests/fixtures` (made offline by `tests/fixtures/make_fixtures.py`)."""

from __future__ import annotations

import json
import wave
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@cache
def manifest() -> dict[str, Any]:
    return json.loads((FIXTURES / "manifest.json").read_text())


@cache
def zh_manifest() -> dict[str, Any]:
    """The Chinese fixtures (`tests/fixtures/make_zh_fixtures.py`), in the shape of `manifest()`."""
    return json.loads((FIXTURES / "zh_manifest.json").read_text())


def utterances(name: str) -> list[dict[str, Any]]:
    return manifest()["files"][name]["utterances"]


def pcm24k(name: str) -> bytes:
    """A fixture's PCM16 mono 24 kHz samples."""
    with wave.open(str(FIXTURES / name)) as wav:
        assert wav.getframerate() == 24_000 and wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.readframes(wav.getnframes())


def silence24k(ms: int) -> bytes:
    return b"\x00\x00" * (24 * ms)


def chunks(audio: bytes, chunk_ms: int, bytes_per_ms: int) -> list[bytes]:
    size = chunk_ms * bytes_per_ms
    return [audio[start : start + size] for start in range(0, len(audio), size)]
