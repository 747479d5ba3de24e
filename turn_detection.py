"""Turn detection on the session's audio clock: server VAD (Silero) and semantic VAD (Smart Turn v3).

Both models are the ONNX files bundled in the `pipecat-ai` wheel. Each is loaded once per process: Silero keeps
its recurrent state in the inputs and outputs of the model, so one onnxruntime session serves every stream, each
stream carrying its own state (a few hundred bytes instead of ~10 MB per analyzer). The windows of all sessions are
scored together (`SileroBatcher`): one thread hop and one onnxruntime call per batch, instead of one per audio chunk
of each session, which cost more than the inference itself.

`TurnDetector` is one session's detector: it is fed PCM16 mono 16 kHz audio and returns turn events whose positions
are milliseconds of audio received (not wall-clock time), so they are exact however the audio was paced.
`pipeline_manager.PipelineManager` feeds it each chunk as the chunk arrives, outside the Pipecat pipeline: audio
goes nowhere else, and the pipeline's frame hops (queues and tasks per processor) cost more per chunk than the rest
of the input path together.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Literal, Protocol

import numpy as np
import onnxruntime
from loguru import logger
from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features

from session.configuration import SemanticVadConfig, TurnDetectionConfig

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512  # Silero's window at 16 kHz: 32 ms
WINDOW_MS = WINDOW_SAMPLES * 1000 / SAMPLE_RATE
_CONTEXT_SAMPLES = 64
# Speech must last this long before it counts as the start of a turn (filters clicks and breaths).
START_CONFIRM_MS = 96
# Silero's recurrent state drifts on long non-speech; it is reset every so often while the user is quiet.
_RESET_INTERVAL_MS = 2000
_RESET_MAX_CONFIDENCE = 0.1
_RESET_QUIET_WINDOWS = 5
# Semantic VAD: the model is asked after this much silence, and again each time this much more has passed.
SEMANTIC_FIRST_CHECK_MS = 250
SEMANTIC_RECHECK_MS = 500
SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
# After this much silence the turn's audio so far is worth transcribing: if the turn does end, its transcript is
# (nearly) ready when it does, instead of starting then.
PAUSE_MS = 200
# Semantic VAD: a turn this likely complete (Smart Turn), though not enough to end it (0.5), is worth answering early.
PREEMPT_PROBABILITY = 0.2
_SEMANTIC_AUDIO_S = 8


def _bundled_model(package: str, name: str) -> str:
    return str(resources.files(package).joinpath(name))


def _session_options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return options


class SileroModel:
    """Silero VAD, one onnxruntime session shared by every stream (`run` is thread-safe)."""

    def __init__(self, path: str | None = None) -> None:
        path = path or _bundled_model("pipecat.audio.vad.data", "silero_vad.onnx")
        self._session = onnxruntime.InferenceSession(path, _session_options(), providers=["CPUExecutionProvider"])
        self._sample_rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores a batch: `samples` [batch, context + 512], `states` [2, batch, 128] → probabilities, new states."""
        output, new_states = self._session.run(None, {"input": samples, "state": states, "sr": self._sample_rate})
        return np.asarray(output).reshape(-1), new_states


class SileroStream:
    """One audio stream's Silero state: the recurrent state and the last samples of the previous window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros((1, _CONTEXT_SAMPLES), dtype=np.float32)


class SileroBatcher:
    """Scores the windows of every stream in batches, in the shared thread pool.

    Windows that arrive while a batch runs wait for the next one, so under load a batch holds one window from each
    busy session; with a single session each window is its own batch."""

    MAX_BATCH = 128

    def __init__(self, model: SileroModel, executor: ThreadPoolExecutor) -> None:
        self._model = model
        self._executor = executor
        self._waiting: list[tuple[SileroStream, np.ndarray, asyncio.Future[float]]] = []
        self._running = False

    async def confidence(self, stream: SileroStream, window: np.ndarray) -> float:
        """Speech probability of one 512-sample float32 window of `stream` (whose state it advances)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append((stream, window, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.MAX_BATCH], self._waiting[self.MAX_BATCH :]
                samples = np.concatenate([np.concatenate((s.context, w.reshape(1, -1)), axis=1) for s, w, _ in batch])
                states = np.concatenate([s.state for s, _, _ in batch], axis=1)
                try:
                    probabilities, new_states = await loop.run_in_executor(
                        self._executor, self._model.run, samples, states
                    )
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for index, (stream, _, future) in enumerate(batch):
                    stream.state = new_states[:, index : index + 1]
                    stream.context = samples[index : index + 1, -_CONTEXT_SAMPLES:]
                    if not future.done():
                        future.set_result(float(probabilities[index]))
        finally:
            self._running = False


class SmartTurnModel:
    """Smart Turn v3: does the audio so far sound like a finished turn? One session for every stream."""

    def __init__(self, path: str | None = None) -> None:
        path = path or _bundled_model("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx")
        options = _session_options()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def completion_probability(self, audio: np.ndarray) -> float:
        """Probability that the turn is complete, from the last 8 s of float32 16 kHz audio."""
        samples = _SEMANTIC_AUDIO_S * SAMPLE_RATE
        audio = audio[-samples:]
        if len(audio) < samples:
            audio = np.pad(audio, (samples - len(audio), 0))
        features = compute_whisper_log_mel_features(audio, do_normalize=True)
        (output,) = self._session.run(None, {"input_features": np.expand_dims(features, 0)})
        return float(np.asarray(output).reshape(-1)[0])


class TurnModels:
    """The process-wide models and the thread pool that runs them, created once at startup."""

    def __init__(self, workers: int = 2) -> None:
        self.silero = SileroModel()
        self.smart_turn = SmartTurnModel()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="turn-detection")
        self.batcher = SileroBatcher(self.silero, self.executor)

    def warm_up(self) -> None:
        stream = SileroStream()
        samples = np.concatenate((stream.context, np.zeros((1, WINDOW_SAMPLES), dtype=np.float32)), axis=1)
        self.silero.run(samples, stream.state)
        self.smart_turn.completion_probability(np.zeros(SAMPLE_RATE, dtype=np.float32))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------------
# One session's detector
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnSettings:
    """The detector's view of the session's `turn_detection` (None there means no detection at all)."""

    kind: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    silence_duration_ms: int = 500
    eagerness: str = "auto"

    @classmethod
    def from_config(cls, turn_detection: TurnDetectionConfig | None) -> TurnSettings | None:
        if turn_detection is None:
            return None
        if isinstance(turn_detection, SemanticVadConfig):
            return cls(kind="semantic_vad", eagerness=turn_detection.eagerness)
        return cls(
            kind="server_vad",
            threshold=turn_detection.threshold,
            silence_duration_ms=turn_detection.silence_duration_ms,
        )


class TurnEventKind(Enum):
    SPEECH_STARTED = "speech_started"
    SPEECH_PAUSED = "speech_paused"
    SPEECH_RESUMED = "speech_resumed"  # speech again after a pause, in the same turn
    LIKELY_COMPLETE = "likely_complete"  # semantic VAD: the turn model thinks the pause may be the end
    SPEECH_STOPPED = "speech_stopped"


@dataclass(frozen=True)
class TurnEvent:
    """Positions are ms of audio since the stream began. `at_ms`: for a start, where the speech began; for a pause,
    where the speech (so far) ended; for a stop, where the turn was judged over (the end of the speech plus the
    silence that confirmed it). `speech_end_ms` (pauses and stops): where the speech ended."""

    kind: TurnEventKind
    at_ms: float
    speech_end_ms: float | None = None


class TurnDetector:
    """Finds where turns start and end in one stream of PCM16 mono 16 kHz audio."""

    def __init__(self, models: TurnModels, settings: TurnSettings | None) -> None:
        self._models = models
        self._stream = SileroStream()
        self._settings = settings
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples = 0  # samples analysed so far: the clock
        self._speaking = False
        self._candidate_start: float | None = None
        self._candidate_ms = 0.0
        self._speech_end_ms = 0.0
        self._paused = False
        self._next_semantic_check_ms = 0.0
        self._turn_audio: list[np.ndarray] = []
        self._windows_since_reset = 0
        self._quiet_windows = 0

    @property
    def settings(self) -> TurnSettings | None:
        return self._settings

    @property
    def position_ms(self) -> float:
        return (self._samples + len(self._pending)) * 1000 / SAMPLE_RATE

    def configure(self, settings: TurnSettings | None) -> None:
        """New settings apply from the next window; a turn in progress goes on under them."""
        self._settings = settings
        if settings is None:
            self._end_turn()

    def reset(self) -> None:
        """Forget any turn in progress (the input buffer was cleared)."""
        self._end_turn()
        self._stream.reset()

    async def feed(self, pcm: bytes) -> list[TurnEvent]:
        """Analyses the audio; calls for one stream must not overlap (the Pipecat stage awaits each in turn)."""
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        self._pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        events: list[TurnEvent] = []
        while len(self._pending) >= WINDOW_SAMPLES:
            window, self._pending = self._pending[:WINDOW_SAMPLES], self._pending[WINDOW_SAMPLES:]
            event = await self._analyse(window)
            self._samples += WINDOW_SAMPLES
            if event is not None:
                events.append(event)
        return events

    async def _analyse(self, window: np.ndarray) -> TurnEvent | None:
        settings = self._settings
        if settings is None:
            return None
        start_ms = self._samples * 1000 / SAMPLE_RATE
        confidence = await self._models.batcher.confidence(self._stream, window)
        self._maybe_reset_model(confidence)
        speech = confidence >= settings.threshold
        if not self._speaking:
            if not speech:
                self._candidate_start = None
                return None
            if self._candidate_start is None:
                self._candidate_start, self._candidate_ms = start_ms, 0.0
                self._turn_audio = []
            self._candidate_ms += WINDOW_MS
            self._turn_audio.append(window)
            if self._candidate_ms < START_CONFIRM_MS:
                return None
            self._speaking = True
            self._speech_end_ms = start_ms + WINDOW_MS / 2
            return TurnEvent(TurnEventKind.SPEECH_STARTED, self._candidate_start)
        self._turn_audio.append(window)
        if speech:
            # Silero scores a window as a whole: the speech in it ends, on average, halfway through.
            self._speech_end_ms = start_ms + WINDOW_MS / 2
            self._next_semantic_check_ms = SEMANTIC_FIRST_CHECK_MS
            if self._paused:
                self._paused = False
                return TurnEvent(TurnEventKind.SPEECH_RESUMED, self._speech_end_ms)
            return None
        end_ms = start_ms + WINDOW_MS
        silence_ms = end_ms - self._speech_end_ms
        if settings.kind == "server_vad":
            if silence_ms >= settings.silence_duration_ms:
                return self._stop(self._speech_end_ms + settings.silence_duration_ms)
            if silence_ms >= PAUSE_MS and not self._paused:
                self._paused = True
                return TurnEvent(TurnEventKind.SPEECH_PAUSED, self._speech_end_ms, self._speech_end_ms)
            return None
        max_wait_ms = SEMANTIC_MAX_WAIT_MS.get(settings.eagerness, 4000)
        if silence_ms >= max_wait_ms:
            return self._stop(self._speech_end_ms + max_wait_ms)
        if silence_ms >= PAUSE_MS and not self._paused:
            self._paused = True
            return TurnEvent(TurnEventKind.SPEECH_PAUSED, self._speech_end_ms, self._speech_end_ms)
        if silence_ms >= self._next_semantic_check_ms:
            self._next_semantic_check_ms = silence_ms + SEMANTIC_RECHECK_MS
            audio = np.concatenate(self._turn_audio[-(_SEMANTIC_AUDIO_S * SAMPLE_RATE // WINDOW_SAMPLES) :])
            probability = await asyncio.get_running_loop().run_in_executor(
                self._models.executor, self._models.smart_turn.completion_probability, audio
            )
            if probability > 0.5:
                return self._stop(end_ms)
            if probability >= PREEMPT_PROBABILITY:
                return TurnEvent(TurnEventKind.LIKELY_COMPLETE, end_ms, self._speech_end_ms)
        return None

    def _stop(self, end_ms: float) -> TurnEvent:
        speech_end_ms = self._speech_end_ms
        self._end_turn()
        return TurnEvent(TurnEventKind.SPEECH_STOPPED, end_ms, speech_end_ms)

    def _end_turn(self) -> None:
        self._speaking = False
        self._paused = False
        self._candidate_start = None
        self._next_semantic_check_ms = SEMANTIC_FIRST_CHECK_MS
        self._turn_audio = []

    def _maybe_reset_model(self, confidence: float) -> None:
        self._windows_since_reset += 1
        self._quiet_windows = self._quiet_windows + 1 if confidence < _RESET_MAX_CONFIDENCE else 0
        if (
            not self._speaking
            and self._windows_since_reset * WINDOW_MS >= _RESET_INTERVAL_MS
            and self._quiet_windows >= _RESET_QUIET_WINDOWS
        ):
            self._stream.reset()
            self._windows_since_reset = 0


class TurnPort(Protocol):
    async def on_turn_events(self, events: list[TurnEvent], analysed_ms: float) -> None: ...


def log_models_loaded(models: TurnModels, seconds: float) -> None:
    logger.info(f"Turn detection models (Silero VAD, Smart Turn v3, bundled in pipecat-ai) loaded in {seconds:.2f}s")
