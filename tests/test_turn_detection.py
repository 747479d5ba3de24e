"""The turn detector on the speech fixtures, without a server: real Silero and Smart Turn models."""

from __future__ import annotations

import pytest

from audio_utils import PIPELINE_INPUT_RATE, WIRE_PCM_RATE, resample
from tests.support.audio_fixtures import pcm24k, silence24k, utterances
from turn_detection import TurnDetector, TurnEventKind, TurnModels, TurnSettings

TOLERANCE_MS = 60


@pytest.fixture(scope="module")
def models() -> TurnModels:
    return TurnModels(workers=1)


async def detect(
    models: TurnModels, audio24k: bytes, settings: TurnSettings, chunk_ms: int = 20, every: bool = False
) -> list[tuple[str, float]]:
    """The turn events (pauses and resumptions too if `every`)."""
    pcm = resample(audio24k, WIRE_PCM_RATE, PIPELINE_INPUT_RATE)
    detector = TurnDetector(models, settings)
    size = PIPELINE_INPUT_RATE * 2 * chunk_ms // 1000
    events = []
    for start in range(0, len(pcm), size):
        events.extend(await detector.feed(pcm[start : start + size]))
    inner = () if every else (TurnEventKind.SPEECH_PAUSED, TurnEventKind.SPEECH_RESUMED)
    return [(event.kind.value, event.at_ms) for event in events if event.kind not in inner]


async def test_server_vad_finds_the_question(models: TurnModels) -> None:
    (truth,) = utterances("question.wav")
    events = await detect(models, pcm24k("question.wav"), TurnSettings(silence_duration_ms=500))
    assert [kind for kind, _ in events] == ["speech_started", "speech_stopped"]
    assert abs(events[0][1] - truth["start_ms"]) <= TOLERANCE_MS
    assert abs(events[1][1] - (truth["end_ms"] + 500)) <= TOLERANCE_MS


async def test_two_utterances_are_two_turns(models: TurnModels) -> None:
    first, second = utterances("two_utterances.wav")
    events = await detect(models, pcm24k("two_utterances.wav"), TurnSettings(silence_duration_ms=500))
    assert [kind for kind, _ in events] == ["speech_started", "speech_stopped"] * 2
    expected = [first["start_ms"], first["end_ms"] + 500, second["start_ms"], second["end_ms"] + 500]
    for (_, at_ms), want in zip(events, expected, strict=True):
        assert abs(at_ms - want) <= TOLERANCE_MS, events


async def test_a_long_silence_window_joins_them(models: TurnModels) -> None:
    audio = pcm24k("two_utterances.wav") + silence24k(1000)
    events = await detect(models, audio, TurnSettings(silence_duration_ms=1600), every=True)
    # The gap between them is a pause the speaker resumed from (what preemptive responses are discarded on).
    assert [kind for kind, _ in events] == [
        "speech_started",
        "speech_paused",
        "speech_resumed",
        "speech_paused",
        "speech_stopped",
    ]
    first, second = utterances("two_utterances.wav")
    assert abs(events[1][1] - first["end_ms"]) <= TOLERANCE_MS
    assert abs(events[2][1] - second["start_ms"]) <= TOLERANCE_MS, events


async def test_noise_under_the_threshold_is_no_turn(models: TurnModels) -> None:
    assert await detect(models, pcm24k("noise.wav"), TurnSettings()) == []


async def test_semantic_vad_ends_a_finished_question_before_the_maximum_wait(models: TurnModels) -> None:
    (truth,) = utterances("question.wav")
    audio = pcm24k("question.wav") + silence24k(4000)
    events = await detect(models, audio, TurnSettings(kind="semantic_vad", eagerness="low"))
    assert [kind for kind, _ in events] == ["speech_started", "speech_stopped"]
    waited = events[1][1] - truth["end_ms"]
    assert 0 < waited < 1500, events  # the model judged it complete: far sooner than eagerness=low's 8 s


async def test_semantic_vad_eagerness_bounds_the_wait(models: TurnModels) -> None:
    """However unsure the model is, a turn ends by the eagerness's maximum wait (high: 2 s)."""
    (truth,) = utterances("hello.wav")
    events = await detect(
        models, pcm24k("hello.wav") + silence24k(3000), TurnSettings(kind="semantic_vad", eagerness="high")
    )
    assert events[-1][0] == TurnEventKind.SPEECH_STOPPED.value
    assert events[-1][1] - truth["end_ms"] <= 2000 + TOLERANCE_MS


async def test_positions_follow_the_audio_clock_whatever_the_chunk_size(models: TurnModels) -> None:
    audio = pcm24k("question.wav")
    small = await detect(models, audio, TurnSettings(), chunk_ms=10)
    large = await detect(models, audio, TurnSettings(), chunk_ms=250)
    assert [kind for kind, _ in small] == [kind for kind, _ in large]
    for (_, a), (_, b) in zip(small, large, strict=True):
        assert abs(a - b) <= 32  # one Silero window


async def test_a_pause_is_announced_before_the_turn_ends(models: TurnModels) -> None:
    """Speculative transcription starts at the pause; the stop that follows names the same end of speech."""
    pcm = resample(pcm24k("question.wav"), WIRE_PCM_RATE, PIPELINE_INPUT_RATE)
    detector = TurnDetector(models, TurnSettings(silence_duration_ms=500))
    events = []
    for start in range(0, len(pcm), 640):
        events.extend(await detector.feed(pcm[start : start + 640]))
    kinds = [event.kind for event in events]
    assert kinds == [TurnEventKind.SPEECH_STARTED, TurnEventKind.SPEECH_PAUSED, TurnEventKind.SPEECH_STOPPED]
    paused, stopped = events[1], events[2]
    assert paused.speech_end_ms == stopped.speech_end_ms
    assert stopped.at_ms - paused.at_ms == 500
