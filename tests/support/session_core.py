"""What the tests of the pure session core build sessions with (the server builds the same from its settings)."""

from __future__ import annotations

import dataclasses

from session.configuration import SessionDefaults

DEFAULTS = SessionDefaults(
    model="gpt-realtime",
    instructions="You are a helpful voice assistant.",
    temperature=0.8,
    llm_max_tokens=1024,
    vad_threshold=0.5,
    vad_prefix_padding_ms=300,
    vad_silence_duration_ms=500,
    lifetime_s=30 * 60,
    max_retained_audio_ms=5 * 60 * 1000,
)


def defaults(**changes: object) -> SessionDefaults:
    return dataclasses.replace(DEFAULTS, **changes)  # type: ignore[arg-type]
