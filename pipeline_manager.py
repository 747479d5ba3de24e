"""Builds and runs one session's Pipecat pipeline, and schedules the session's responses through it.

    transport input → STT → LLM → TTS → transport output

Input audio does not enter the pipeline: the session's `TurnDetector` (Silero / Smart Turn) is fed each chunk
directly, and reports turn events to the port; committed turns are transcribed by the STT stage in tasks of their
own.

The pipeline generates one response at a time: responses created while another is running (an out-of-band
response next to the in-band one) wait in order. Cancelling the running response sends an `InterruptionFrame`,
which stops the LLM request and drops the TTS work in flight; the next response starts once that interruption has
reached the end of the pipeline, so nothing of the cancelled response can mix with the next one.

A preemptive response (`PreemptResponse`, started on a paused turn's speculative transcript) runs like any other;
the session core holds back what it produces. When it is discarded (`EndPreemption`) it is cancelled like one, and
counted in `PREEMPTIONS`, this process's tally of preemptive responses started, adopted and discarded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

from loguru import logger
from pipecat.frames.frames import InterruptionFrame, TTSUpdateSettingsFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from audio_utils import PIPELINE_INPUT_RATE, PIPELINE_OUTPUT_RATE
from metrics import PREEMPTIVE_RESPONSES, VAD_LAG
from pipeline_frames import ResponseRequestFrame, TranscribeFrame
from pipeline_stages import TranscriptionPort
from service_providers import Providers
from session.commands import (
    CancelResponse,
    Command,
    ConfigureTurnDetection,
    EndPreemption,
    FeedAudio,
    PreemptionEnd,
    PreemptResponse,
    ResetTurnDetection,
    RunResponse,
    Transcribe,
)
from turn_detection import TurnDetector, TurnPort, TurnSettings


class PipelinePort(TurnPort, TranscriptionPort, Protocol):
    """What the pipeline's stages report to the connection."""


@dataclass
class PreemptionTally:
    """Preemptive responses of this process: started, adopted as the turn's reply, and discarded (by why). A
    discarded attempt cost an LLM request (and some TTS) that nobody hears: with a paid provider, money."""

    started: int = 0
    adopted: int = 0
    discarded: Counter[PreemptionEnd] = field(default_factory=Counter)

    @property
    def discarded_total(self) -> int:
        return sum(self.discarded.values())


PREEMPTIONS = PreemptionTally()

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class PipelineManager:
    """One session's pipeline and its response queue."""

    def __init__(
        self,
        providers: Providers,
        port: PipelinePort,
        input_processor: FrameProcessor,
        output_processor: FrameProcessor,
        session_id: str,
    ) -> None:
        self._providers = providers
        self._session_id = session_id
        self._port = port
        self._detector = TurnDetector(providers.turn_models, settings=None)
        self._tts = providers.create_tts(session_id)
        self._pipeline = Pipeline(
            [
                input_processor,
                providers.create_stt(port),
                providers.create_llm(),
                self._tts,
                output_processor,
            ]
        )
        self._worker = PipelineWorker(
            self._pipeline,
            params=PipelineParams(audio_in_sample_rate=PIPELINE_INPUT_RATE, audio_out_sample_rate=PIPELINE_OUTPUT_RATE),
            enable_rtvi=False,
            enable_turn_tracking=False,
            idle_timeout_secs=None,
            cancel_on_idle_timeout=False,
            check_dangling_tasks=False,
        )
        self._runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        self._run_task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._pending: deque[RunResponse] = deque()
        self._current: str | None = None
        self._interruptions_in_flight = 0
        self._tts_voice: tuple[str, float] | None = None

        @self._worker.event_handler("on_pipeline_started")
        async def _on_started(_worker: PipelineWorker, _frame: object) -> None:
            self._started.set()

    @property
    def current_response_id(self) -> str | None:
        return self._current

    async def start(self) -> None:
        await self._runner.add_workers(self._worker)
        self._run_task = asyncio.create_task(self._runner.run(), name="pipeline-runner")
        waiter = asyncio.create_task(self._started.wait())
        done, _ = await asyncio.wait({waiter, self._run_task}, timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED")
        if waiter not in done:
            waiter.cancel()
            await self.stop()
            raise RuntimeError("The session pipeline did not start.")

    async def stop(self) -> None:
        """Cancels the pipeline at once and waits for its tasks to end."""
        task = self._run_task
        if task is None:
            return
        self._run_task = None
        if not task.done():
            try:
                await asyncio.wait_for(self._runner.cancel(reason="session closed"), STOP_TIMEOUT_S)
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("Pipeline did not stop in time; cancelling its task")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def execute(self, command: Command) -> None:
        match command:
            case FeedAudio():
                received_at = time.monotonic()  # the VAD's lag is measured from here
                await self._analyse(command.pcm)
                VAD_LAG.observe(time.monotonic() - received_at)
            case RunResponse():
                self._pending.append(command)
                await self._advance()
            case PreemptResponse():
                PREEMPTIONS.started += 1
                PREEMPTIVE_RESPONSES.labels("started").inc()
                self._pending.append(command.run)
                await self._advance()
            case EndPreemption():
                await self._end_preemption(command)
            case CancelResponse():
                await self.cancel(command.response_id)
            case Transcribe():
                await self._worker.queue_frame(TranscribeFrame(command))
            case ConfigureTurnDetection():
                self._detector.configure(TurnSettings.from_config(command.turn_detection))
            case ResetTurnDetection():
                self._detector.reset()

    async def _analyse(self, pcm: bytes) -> None:
        """Turn detection on one chunk. The connection feeds chunks one at a time, in order (calls never overlap)."""
        try:
            events = await self._detector.feed(pcm)
        except Exception:  # a model failure costs this chunk's analysis, not the session
            logger.exception(f"Session {self._session_id}: turn detection failed on a chunk")
            return
        await self._port.on_turn_events(events, self._detector.position_ms)

    async def _end_preemption(self, command: EndPreemption) -> None:
        PREEMPTIVE_RESPONSES.labels(command.end.value).inc()
        if command.end is PreemptionEnd.ADOPTED:
            PREEMPTIONS.adopted += 1
            return
        PREEMPTIONS.discarded[command.end] += 1
        logger.info(
            f"Session {self._session_id}: preemptive response discarded ({command.end.value}); in this process "
            f"{PREEMPTIONS.discarded_total} discarded, {PREEMPTIONS.adopted} adopted of {PREEMPTIONS.started}"
        )
        await self.cancel(command.response_id)

    async def cancel(self, response_id: str) -> None:
        if response_id == self._current:
            self._current = None
            self._interruptions_in_flight += 1
            await self._worker.queue_frame(InterruptionFrame())
        else:
            self._pending = deque(run for run in self._pending if run.response_id != response_id)

    async def on_response_end(self, response_id: str) -> None:
        """The transport saw the end of a response: the next one may start."""
        if response_id == self._current:
            self._current = None
            await self._advance()

    async def on_interruption_done(self) -> None:
        """An interruption reached the end of the pipeline: everything before it is gone."""
        self._interruptions_in_flight = max(0, self._interruptions_in_flight - 1)
        await self._advance()

    async def _advance(self) -> None:
        if self._current is not None or self._interruptions_in_flight or not self._pending:
            return
        run = self._pending.popleft()
        self._current = run.response_id
        frames = []
        if run.modality == "audio":
            voice = (self._providers.tts.voice_for(run.voice), run.speed)
            if voice != self._tts_voice:
                self._tts_voice = voice
                delta = self._providers.tts.settings_delta(*voice)
                frames.append(TTSUpdateSettingsFrame(delta=delta, service=self._tts))
        frames.append(ResponseRequestFrame(run))
        await self._worker.queue_frames(frames)
