"""Every Prometheus metric of the server, in one place, and `GET /metrics` (METRICS=true).

Workers count in Prometheus' multiprocess mode: each writes its own files in the instance's folder
(`instance.metrics_folder`, set before `prometheus_client` is imported) and a scrape, whichever worker answers it,
adds them up. The open-sessions gauge counts live workers only (`livesum`): a dead worker's files are dropped by the
worker that finds it gone (`mark_process_dead`).

`SessionMetrics` watches one connection's outgoing events (the protocol's own record of what happened) for the
counts and the latencies users feel; the VAD lag is observed where the audio is analysed, provider failures where
they are converted (`providers.errors.provider_failure`).
"""

from __future__ import annotations

import time
from typing import Any

from instance import metrics_folder

MULTIPROCESS_FOLDER = metrics_folder()  # before prometheus_client is imported: it picks its value store on import

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from protocol import BETA_EVENT_NAMES, JsonDict, ServerEvent

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
VAD_LAG_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

OPEN_SESSIONS = Gauge("realtime_open_sessions", "Sessions open now", multiprocess_mode="livesum")
SESSIONS = Counter("realtime_sessions", "Sessions opened")
TURNS = Counter("realtime_turns", "User turns: committed audio or a user text item", ["input"])
RESPONSES = Counter("realtime_responses", "Responses done, by their status", ["status"])
ERRORS = Counter("realtime_errors", "Error events sent to clients, by code", ["code"])
PROVIDER_FAILURES = Counter("realtime_provider_failures", "Provider failures, by stage and code", ["stage", "code"])
SPEECH_STOPPED_TO_FIRST_AUDIO = Histogram(
    "realtime_speech_stopped_to_first_audio_seconds",
    "From input_audio_buffer.speech_stopped to the first audio delta of the response it starts",
    buckets=LATENCY_BUCKETS_S,
)
RESPONSE_TO_FIRST_DELTA = Histogram(
    "realtime_response_first_delta_seconds",
    "From response.created (sent as the server takes response.create or commits a turn) to its first delta",
    buckets=LATENCY_BUCKETS_S,
)
PREEMPTIVE_RESPONSES = Counter(
    "realtime_preemptive_responses",
    "Preemptive responses (started on a paused turn's speculative transcript): started, adopted, or discarded by why",
    ["outcome"],
)
VAD_LAG = Histogram(
    "realtime_vad_lag_seconds",
    "From an audio chunk's arrival to the end of its analysis by the server VAD",
    buckets=VAD_LAG_BUCKETS_S,
)

_GA_NAMES = {beta: ga for ga, beta in BETA_EVENT_NAMES.items()}
_AUDIO_DELTA = str(ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA)
_FIRST_DELTAS = {
    str(ServerEvent.RESPONSE_OUTPUT_AUDIO_DELTA),
    str(ServerEvent.RESPONSE_OUTPUT_TEXT_DELTA),
    str(ServerEvent.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA),
    str(ServerEvent.RESPONSE_FUNCTION_CALL_ARGUMENTS_DELTA),
}


def render() -> tuple[bytes, str]:
    """The exposition text and its content type (blocking in multiprocess mode: it reads every worker's files)."""
    if MULTIPROCESS_FOLDER is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_gone(pid: int) -> None:
    """A worker died: its live gauges stop counting (its counters and histograms still add up)."""
    if MULTIPROCESS_FOLDER is not None:
        multiprocess.mark_process_dead(pid, str(MULTIPROCESS_FOLDER))


class SessionMetrics:
    """One session's share: what its outgoing events say happened, and when."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._speech_stopped_at: float | None = None
        self._created_at: dict[str, float] = {}  # response id → when response.created went out
        self._awaiting_audio: dict[str, float] = {}  # response id → the speech_stopped it answers

    def opened(self) -> None:
        SESSIONS.inc()
        OPEN_SESSIONS.inc()

    def closed(self) -> None:
        OPEN_SESSIONS.dec()

    def sent(self, event: JsonDict) -> None:
        kind = _GA_NAMES.get(event.get("type", ""), event.get("type", ""))
        if kind in _FIRST_DELTAS:
            self._delta(kind, event.get("response_id"))
        elif kind == ServerEvent.INPUT_AUDIO_BUFFER_SPEECH_STOPPED:
            self._speech_stopped_at = self._clock()
        elif kind == ServerEvent.INPUT_AUDIO_BUFFER_COMMITTED:
            TURNS.labels("audio").inc()
        elif kind == ServerEvent.CONVERSATION_ITEM_ADDED:
            item = event.get("item") or {}
            content = item.get("content") or []
            if item.get("role") == "user" and any(part.get("type") == "input_text" for part in content):
                TURNS.labels("text").inc()
        elif kind == ServerEvent.RESPONSE_CREATED:
            response_id = (event.get("response") or {}).get("id")
            if response_id:
                self._created_at[response_id] = self._clock()
                if self._speech_stopped_at is not None:
                    self._awaiting_audio[response_id] = self._speech_stopped_at
                    self._speech_stopped_at = None
        elif kind == ServerEvent.RESPONSE_DONE:
            response = event.get("response") or {}
            RESPONSES.labels(str(response.get("status"))).inc()
            self._created_at.pop(response.get("id"), None)
            self._awaiting_audio.pop(response.get("id"), None)
        elif kind == ServerEvent.ERROR:
            ERRORS.labels(str((event.get("error") or {}).get("code"))).inc()

    def _delta(self, kind: str, response_id: str | None) -> None:
        if response_id is None:
            return
        now = self._clock()
        created = self._created_at.pop(response_id, None)
        if created is not None:
            RESPONSE_TO_FIRST_DELTA.observe(now - created)
        if kind == _AUDIO_DELTA:
            stopped = self._awaiting_audio.pop(response_id, None)
            if stopped is not None:
                SPEECH_STOPPED_TO_FIRST_AUDIO.observe(now - stopped)
