"""Turn-detection benchmark: where server VAD puts turn boundaries, how late it says so, and how many real-time
audio streams one server process keeps up with.

Runs the loopback fake of OpenAI's HTTP API (`tests.fakes.openai_fake`, for the transcriptions every committed turn
gets) and the server (`main.py` from an empty temporary directory, so no `.env` is read; STT/LLM/TTS on the OpenAI
providers pointed at the fake). Clients are raw `websockets` connections speaking the GA dialect; each session first
sets `turn_detection: {"type": "server_vad", "create_response": false}` (default threshold 0.5, prefix padding
300 ms, silence 500 ms), so no response ever runs: only the VAD, the input buffer and the commits are measured.

1. Accuracy. Every fixture of `tests/fixtures` is streamed (as fast as the socket takes it, then 1 s of silence) in
   a session of its own, once as PCM16 24 kHz and once as G.711 μ-law (`audio/pcmu`, the fixture resampled to
   8 kHz and encoded). `speech_started.audio_start_ms + 300` is compared with the manifest's `start_ms` and
   `speech_stopped.audio_end_ms - 500` with its `end_ms`. A detected turn is matched to the utterance whose start
   is within 400 ms; unmatched utterances are missed turns, unmatched detections extra turns (noise.wav must give
   none). Event order per turn (started → stopped → committed → item.added → item.done, one item id) is checked.
2. Lag. One session streams two_utterances.wav + question.wav in a loop at real-time pace: chunk i (covering
   [i·c, (i+1)·c) ms of audio) is sent at t0 + (i+1)·c, when a microphone would have it, and its actual send time
   is recorded. The lag of a `speech_stopped` is its arrival time minus the send time of the chunk containing
   `audio_end_ms`. It has an algorithmic part nobody can avoid without changing the design: Silero scores 32 ms
   windows on the 16 kHz stream, and the end of speech is placed mid-window, so the deciding window ends at
   ceil(audio_end_ms / 32) · 32 (= audio_end_ms + 28 ms with the default settings); and the streaming input
   resampler (soxr) releases 16 kHz audio in blocks, so that window is complete only once a later chunk has
   arrived. The script replays the server's `audio_utils.InputDecoder` on the same chunk sizes to find, for every
   turn, the first chunk after which the window is complete ("decision chunk"): lag against that chunk is the
   processing part (socket, JSON, base64, resampling, Silero, event loop), the difference is the algorithmic part.
   The lag against the chunk containing audio_end_ms + 32 ms is printed too.
3. Capacity and memory. For each step (`--steps 10,25,50,...`) N sessions are opened (server RSS read from
   /proc/<pid>/status before and after opening them), then all stream a loop of question.wav + two_utterances.wav
   + hello.wav (4 turns per 13 s, each session starting at a random point of the loop and a random phase within a
   chunk) at real-time pace for `--step-s` seconds. Reported per step: lag p50/p99 (as in 2), send lateness of
   the clients (a client that cannot keep its schedule makes the numbers meaningless), CPU of the server, the fake,
   the clients and everything else, and server RSS. Steps stop after the first one whose lag p99 passes 100 ms.
   Clients run in `--client-procs` worker processes (asyncio, one task per session).

    .venv/bin/python bench/turn_detection.py
    .venv/bin/python bench/turn_detection.py --only capacity --steps 50,100 --client-procs 2
    .venv/bin/python bench/turn_detection.py --only accuracy,lag --lag-turns 60 --chunk-ms 40
    .venv/bin/python bench/turn_detection.py --only cost --cost-sessions 20 --cost-loops 3

4. Cost (`--only cost`, not in the default run). The capacity steps need the machine to themselves: on a shared
   machine the server is starved before its own limit. This part measures what a real-time session costs instead,
   in CPU time, which other processes do not inflate much: `--cost-sessions` sessions each send the capacity loop
   `--cost-loops` times (then 1 s of silence) as fast as the socket takes it, in 20 ms chunks, and the server's CPU
   seconds (all its threads, read from /proc) until every turn's `speech_stopped` has arrived are divided by the
   seconds of audio analysed. 1000 / (CPU ms per audio second) is how many real-time sessions one core would carry.

Prints Markdown tables and writes the results to `bench/results/turn_detection.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from response_latency import (
    Process,
    free_port,
    log_problems,
    machine,
    percentile,
    process_cpu_s,
    rss_mb,
    start_fake,
    start_server,
    system_busy_s,
)
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio_utils import AudioFormat, InputDecoder, pcm_to_format, resample  # noqa: E402
from tests.support.audio_fixtures import manifest, pcm24k, silence24k  # noqa: E402

RESULTS_PATH = ROOT / "bench" / "results" / "turn_detection.json"
PADDING_MS = 300
SILENCE_MS = 500
WINDOW_MS = 32  # Silero's window at 16 kHz
MATCH_MS = 400  # a detected start this close to a true start is that utterance's turn
LAG_TARGET_P50_MS = 20.0
CAPACITY_LAG_P99_MS = 100.0
TARGET_SESSIONS = 50
TARGET_RSS_PER_SESSION_MB = 5.0
EVENT_TIMEOUT_S = 20.0
LAG_LOOP = ("two_utterances.wav", "question.wav")
CAPACITY_LOOP = ("question.wav", "two_utterances.wav", "hello.wav")

FORMATS: dict[str, tuple[dict[str, Any], int]] = {
    # name: (GA input format, bytes per ms on the wire)
    "pcm16": ({"type": "audio/pcm", "rate": 24000}, 48),
    "g711_ulaw": ({"type": "audio/pcmu"}, 8),
}


def encode(pcm: bytes, audio_format: str) -> bytes:
    """PCM16 24 kHz as the wire format."""
    if audio_format == "pcm16":
        return pcm
    return pcm_to_format(resample(pcm, 24_000, 8_000), AudioFormat(audio_format))


def append_messages(audio: bytes, audio_format: str, chunk_ms: int) -> list[str]:
    """The wire audio cut into `chunk_ms` chunks, each an `input_audio_buffer.append` message (JSON text)."""
    size = chunk_ms * FORMATS[audio_format][1]
    return [
        json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[start : start + size]).decode()}
        )
        for start in range(0, len(audio), size)
    ]


def decision_table(audio_format: str, chunk_ms: int, chunks: int) -> list[float]:
    """For each chunk index i: ms of 16 kHz audio the server's input decoder has released once chunks 0..i have
    arrived (the decoder's output does not depend on the content, only on the chunk sizes)."""
    decoder = InputDecoder(AudioFormat(audio_format))
    silence = encode(silence24k(chunk_ms), audio_format)
    released, table = 0, []
    for _ in range(chunks):
        released += len(decoder.decode(silence))
        table.append(released / 32)  # 16 kHz PCM16: 32 bytes a ms
    return table


def held_back(table: list[float], chunk_ms: int) -> dict[str, float]:
    """How much audio the input decoder holds back after each chunk (ms received − ms released), past the start."""
    values = [(index + 1) * chunk_ms - released for index, released in enumerate(table)][len(table) // 10 :]
    return {"min": round(min(values), 1), "mean": round(statistics.fmean(values), 1), "max": round(max(values), 1)}


def decision_chunk(audio_end_ms: int, table: list[float]) -> int | None:
    """The first chunk after which the 32 ms window that decided this `speech_stopped` was complete."""
    window_end = math.ceil(audio_end_ms / WINDOW_MS) * WINDOW_MS
    for index, released in enumerate(table):
        if released >= window_end:
            return index
    return None


# --------------------------------------------------------------------------------------------------------------
# A session over raw websockets
# --------------------------------------------------------------------------------------------------------------


class Stream:
    """One Realtime connection: a reader task stamps every server event with its arrival time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.send_times: list[float] = []
        self.lateness_ms: list[float] = []
        self._seen = 0  # events already looked at by `until`
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.events.append((time.perf_counter(), json.loads(raw)))
                self._arrived.set()
        except Exception:  # the connection closed under us: what was read stays
            pass
        finally:
            self._arrived.set()

    async def until(self, event_type: str, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """Waits for the first event of `event_type` not yet looked at with `until`."""
        deadline = time.monotonic() + timeout
        seen = self._seen
        while True:
            for index in range(seen, len(self.events)):
                event = self.events[index][1]
                if event["type"] == event_type:
                    self._seen = index + 1
                    return event
            seen = len(self.events)
            if self._reader.done():
                raise RuntimeError(f"connection closed before {event_type}")
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {event_type} within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def quiet(self, seconds: float, limit_s: float = 30.0) -> None:
        """Waits until no event has arrived for `seconds`."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            last = self.events[-1][0] if self.events else 0.0
            wait = seconds - (time.perf_counter() - last)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def paced_send(self, messages: list[str], first: int, count: int, chunk_ms: int, t0: float) -> None:
        """Sends `count` chunks from `messages[first]` on (wrapping), chunk i at t0 + (i + 1) · chunk_ms."""
        for index in range(count):
            target = t0 + (index + 1) * chunk_ms / 1000
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.send(messages[(first + index) % len(messages)])
            sent = time.perf_counter()
            self.send_times.append(sent)
            self.lateness_ms.append((sent - target) * 1000)

    def of_type(self, event_type: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, event) for at, event in self.events if event["type"] == event_type]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_stream(port: int, audio_format: str, compression: bool) -> Stream:
    """Connects, waits for the session, switches it to `audio_format` with server VAD and no responses."""
    ws = await connect(
        f"ws://127.0.0.1:{port}/v1/realtime",
        max_size=None,
        compression="deflate" if compression else None,
        open_timeout=60,
        ping_interval=None,
    )
    stream = Stream(ws)
    await stream.until("session.created")
    await stream.until("conversation.created")
    session = {
        "type": "realtime",
        "audio": {
            "input": {
                "format": FORMATS[audio_format][0],
                "turn_detection": {"type": "server_vad", "create_response": False},
            }
        },
    }
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    updated = await stream.until("session.updated")
    detection = updated["session"]["audio"]["input"]["turn_detection"]
    expected = {"threshold": 0.5, "prefix_padding_ms": PADDING_MS, "silence_duration_ms": SILENCE_MS}
    if {key: detection.get(key) for key in expected} != expected or detection.get("create_response") is not False:
        raise RuntimeError(f"unexpected turn detection settings: {detection}")
    return stream


def order_problems(stream: Stream, unfinished_last: bool = False) -> list[str]:
    """Turns whose events are out of order or missing: per item, started → stopped → committed → added → done.
    With `unfinished_last`, the last turn may stop early (the stream ended in the middle of it)."""
    expected = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    per_item: dict[str, list[str]] = {}
    problems = []
    for _, event in stream.events:
        kind = event["type"]
        if kind == "error":
            problems.append(f"error event: {event.get('error')}")
            continue
        item_id = event.get("item_id") or (event.get("item") or {}).get("id")
        if kind in expected and item_id:
            per_item.setdefault(item_id, []).append(kind)
    items = list(per_item.items())
    for position, (item_id, kinds) in enumerate(items):
        last = position == len(items) - 1
        if kinds != expected and not (unfinished_last and last and kinds == expected[: len(kinds)]):
            problems.append(f"{item_id}: {kinds}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# 1. Accuracy
# --------------------------------------------------------------------------------------------------------------


@dataclass
class FixtureAccuracy:
    audio_format: str
    fixture: str
    utterances: int
    detected: int
    missed: int
    extra: int
    start_errors_ms: list[float]
    end_errors_ms: list[float]
    order_problems: list[str]


async def accuracy_of(port: int, audio_format: str, fixture: str, compression: bool) -> FixtureAccuracy:
    truth = manifest()["files"][fixture]["utterances"]
    audio = encode(pcm24k(fixture) + silence24k(1000), audio_format)
    stream = await open_stream(port, audio_format, compression)
    try:
        for message in append_messages(audio, audio_format, 40):
            await stream.ws.send(message)
        await stream.quiet(1.5)
    finally:
        await stream.close()
    stops = {
        event["item_id"]: event["audio_end_ms"] - SILENCE_MS
        for _, event in stream.of_type("input_audio_buffer.speech_stopped")
    }
    turns = [
        (event["audio_start_ms"] + PADDING_MS, stops.get(event["item_id"]))
        for _, event in stream.of_type("input_audio_buffer.speech_started")
    ]
    start_errors, end_errors, matched = [], [], set()
    for utterance in truth:
        candidates = [
            index
            for index, (start, _) in enumerate(turns)
            if index not in matched and abs(start - utterance["start_ms"]) <= MATCH_MS
        ]
        if not candidates:
            continue
        index = min(candidates, key=lambda i: abs(turns[i][0] - utterance["start_ms"]))
        matched.add(index)
        start, stop = turns[index]
        start_errors.append(start - utterance["start_ms"])
        if stop is not None:
            end_errors.append(stop - utterance["end_ms"])
    return FixtureAccuracy(
        audio_format=audio_format,
        fixture=fixture,
        utterances=len(truth),
        detected=len(turns),
        missed=len(truth) - len(matched),
        extra=len(turns) - len(matched),
        start_errors_ms=start_errors,
        end_errors_ms=end_errors,
        order_problems=order_problems(stream),
    )


async def measure_accuracy(port: int, compression: bool) -> list[FixtureAccuracy]:
    results = []
    for audio_format in FORMATS:
        for fixture in manifest()["files"]:
            results.append(await accuracy_of(port, audio_format, fixture, compression))
    return results


def _abs_stats(errors: list[float]) -> tuple[str, str, str]:
    if not errors:
        return "-", "-", "-"
    magnitudes = [abs(error) for error in errors]
    return f"{statistics.fmean(magnitudes):.0f}", f"{max(magnitudes):.0f}", f"{statistics.fmean(errors):+.0f}"


def accuracy_table(results: list[FixtureAccuracy]) -> str:
    lines = [
        "| format | fixture | utterances | detected | missed | extra | start mean/max abs err ms | start bias ms "
        "| end mean/max abs err ms | end bias ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(r.audio_format, r.fixture, r) for r in results]
    for audio_format in FORMATS:
        subset = [r for r in results if r.audio_format == audio_format]
        overall = FixtureAccuracy(
            audio_format,
            "**all**",
            sum(r.utterances for r in subset),
            sum(r.detected for r in subset),
            sum(r.missed for r in subset),
            sum(r.extra for r in subset),
            [e for r in subset for e in r.start_errors_ms],
            [e for r in subset for e in r.end_errors_ms],
            [],
        )
        rows.append((audio_format, "**all**", overall))
    rows.sort(key=lambda row: (list(FORMATS).index(row[0]), row[1] == "**all**"))
    for audio_format, fixture, r in rows:
        s_mean, s_max, s_bias = _abs_stats(r.start_errors_ms)
        e_mean, e_max, e_bias = _abs_stats(r.end_errors_ms)
        lines.append(
            f"| {audio_format} | {fixture} | {r.utterances} | {r.detected} | {r.missed} | {r.extra} "
            f"| {s_mean} / {s_max} | {s_bias} | {e_mean} / {e_max} | {e_bias} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# 2. Lag
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TurnLag:
    audio_end_ms: int
    lag_ms: float  # against the chunk containing audio_end_ms
    lag_plus32_ms: float | None  # against the chunk containing audio_end_ms + 32
    processing_ms: float | None  # against the decision chunk
    algorithmic_ms: float | None  # decision chunk's send time minus the audio_end_ms chunk's


def turn_lags(stream: Stream, chunk_ms: int, table: list[float]) -> list[TurnLag]:
    lags = []
    sent = stream.send_times
    for arrived, event in stream.of_type("input_audio_buffer.speech_stopped"):
        end_ms = event["audio_end_ms"]
        index = end_ms // chunk_ms
        if index >= len(sent):
            continue
        plus32 = (end_ms + 32) // chunk_ms
        decision = decision_chunk(end_ms, table)
        lags.append(
            TurnLag(
                audio_end_ms=end_ms,
                lag_ms=(arrived - sent[index]) * 1000,
                lag_plus32_ms=(arrived - sent[plus32]) * 1000 if plus32 < len(sent) else None,
                processing_ms=(arrived - sent[decision]) * 1000
                if decision is not None and decision < len(sent)
                else None,
                algorithmic_ms=(sent[decision] - sent[index]) * 1000
                if decision is not None and decision < len(sent)
                else None,
            )
        )
    return lags


def loop_audio(names: tuple[str, ...], audio_format: str, chunk_ms: int) -> tuple[bytes, int]:
    """The fixtures back to back in the wire format, padded with silence to whole chunks; and the turns in it."""
    pcm = b"".join(pcm24k(name) for name in names)
    step = chunk_ms * 48
    pcm += b"\x00" * (-len(pcm) % step)
    turns = sum(len(manifest()["files"][name]["utterances"]) for name in names)
    return encode(pcm, audio_format), turns


async def measure_lag(port: int, audio_format: str, chunk_ms: int, turns: int, compression: bool) -> dict[str, Any]:
    audio, turns_per_loop = loop_audio(LAG_LOOP, audio_format, chunk_ms)
    messages = append_messages(audio, audio_format, chunk_ms)
    loops = math.ceil(turns / turns_per_loop)
    # Then a second of silence, for the last turn's stop.
    messages = messages * loops + append_messages(encode(silence24k(1000), audio_format), audio_format, chunk_ms)
    table = decision_table(audio_format, chunk_ms, len(messages))
    stream = await open_stream(port, audio_format, compression)
    try:
        await stream.paced_send(messages, 0, len(messages), chunk_ms, time.perf_counter())
        await stream.quiet(1.0)
    finally:
        await stream.close()
    lags = turn_lags(stream, chunk_ms, table)
    return {
        "audio_format": audio_format,
        "chunk_ms": chunk_ms,
        "turns": len(lags),
        "expected_turns": loops * turns_per_loop,
        "lag": distribution([lag.lag_ms for lag in lags]),
        "lag_plus32": distribution([lag.lag_plus32_ms for lag in lags if lag.lag_plus32_ms is not None]),
        "processing": distribution([lag.processing_ms for lag in lags if lag.processing_ms is not None]),
        "algorithmic": distribution([lag.algorithmic_ms for lag in lags if lag.algorithmic_ms is not None]),
        "send_lateness": distribution(stream.lateness_ms),
        "decoder_held_back_ms": held_back(table, chunk_ms),
        "order_problems": order_problems(stream),
        "turn_lags": [asdict(lag) for lag in lags],
    }


def distribution(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50), 2),
        "p90": round(percentile(values, 0.90), 2),
        "p99": round(percentile(values, 0.99), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def lag_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| format | chunk ms | turns | measured against | p50 ms | p90 ms | p99 ms | min ms | max ms |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "lag": "chunk with audio_end_ms (**lag**)",
        "lag_plus32": "chunk with audio_end_ms + 32",
        "processing": "decision chunk (**processing**)",
        "algorithmic": "algorithmic = decision − audio_end chunk",
        "send_lateness": "client send lateness",
    }
    for result in results:
        for key, label in labels.items():
            d = result[key]
            if not d["n"]:
                continue
            lines.append(
                f"| {result['audio_format']} | {result['chunk_ms']} | {result['turns']} | {label} | {d['p50']:.1f} "
                f"| {d['p90']:.1f} | {d['p99']:.1f} | {d['min']:.1f} | {d['max']:.1f} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# 3. Capacity and memory
# --------------------------------------------------------------------------------------------------------------


async def _client_sessions(
    port: int, sessions: int, chunk_ms: int, step_s: float, seed: int, compression: bool, pipe: Connection
) -> None:
    loop = asyncio.get_running_loop()
    audio, _ = loop_audio(CAPACITY_LOOP, "pcm16", chunk_ms)
    messages = append_messages(audio, "pcm16", chunk_ms)
    count = int(step_s * 1000 / chunk_ms)
    table = decision_table("pcm16", chunk_ms, count)
    rng = random.Random(seed)
    opened = await asyncio.gather(
        *(open_stream(port, "pcm16", compression) for _ in range(sessions)), return_exceptions=True
    )
    streams = [item for item in opened if isinstance(item, Stream)]
    failures = [repr(item) for item in opened if not isinstance(item, Stream)]
    try:
        pipe.send(("opened", len(streams), failures[:3]))
        await loop.run_in_executor(None, pipe.recv)  # "go"
        t0 = time.perf_counter() + 0.2
        await asyncio.gather(
            *(
                stream.paced_send(
                    messages, rng.randrange(len(messages)), count, chunk_ms, t0 + rng.random() * chunk_ms / 1000
                )
                for stream in streams
            )
        )
        await asyncio.sleep(1.0)  # the last stops
        pipe.send(("streamed",))
        await loop.run_in_executor(None, pipe.recv)  # "close"
    finally:
        await asyncio.gather(*(stream.close() for stream in streams), return_exceptions=True)
    lags = [lag for stream in streams for lag in turn_lags(stream, chunk_ms, table)]
    problems = [problem for stream in streams for problem in order_problems(stream, unfinished_last=True)]
    lateness = [value for stream in streams for value in stream.lateness_ms]
    pipe.send(
        (
            "done",
            {
                "lag": [lag.lag_ms for lag in lags],
                "processing": [lag.processing_ms for lag in lags if lag.processing_ms is not None],
                "lateness": lateness,
                "problems": problems[:20],
                "problem_count": len(problems),
                "stops": sum(len(stream.of_type("input_audio_buffer.speech_stopped")) for stream in streams),
                "starts": sum(len(stream.of_type("input_audio_buffer.speech_started")) for stream in streams),
            },
        )
    )


def client_worker(
    port: int, sessions: int, chunk_ms: int, step_s: float, seed: int, compression: bool, pipe: Connection
) -> None:
    """Entry point of a client process."""
    try:
        asyncio.run(_client_sessions(port, sessions, chunk_ms, step_s, seed, compression, pipe))
    except BaseException as exc:
        pipe.send(("failed", repr(exc)))
        raise


@dataclass
class CapacityStep:
    sessions: int
    client_procs: int
    turns: int
    lag: dict[str, Any]
    processing: dict[str, Any]
    send_lateness: dict[str, Any]
    cpu_cores: dict[str, float | None]
    rss_before_mb: float
    rss_open_mb: float
    rss_streamed_mb: float
    rss_closed_mb: float
    open_mb_per_session: float
    streamed_mb_per_session: float
    active_after_close: int | None
    order_problems: list[str] = field(default_factory=list)
    order_problem_count: int = 0
    open_failures: list[str] = field(default_factory=list)


def _receive(pipe: Connection, expected: str, timeout: float) -> tuple[Any, ...]:
    if not pipe.poll(timeout):
        raise TimeoutError(f"client process sent no {expected!r} within {timeout} s")
    message = pipe.recv()
    if message[0] != expected:
        raise RuntimeError(f"client process: expected {expected!r}, got {message}")
    return message


def capacity_step(
    port: int,
    server_pid: int,
    fake_pid: int,
    sessions: int,
    procs: int,
    chunk_ms: int,
    step_s: float,
    compression: bool,
) -> CapacityStep:
    context = multiprocessing.get_context("fork")
    shares = [sessions // procs + (1 if index < sessions % procs else 0) for index in range(procs)]
    pipes, workers = [], []
    rss_before = rss_mb(server_pid)
    try:
        for index, share in enumerate(shares):
            parent, child = context.Pipe()
            worker = context.Process(
                target=client_worker, args=(port, share, chunk_ms, step_s, sessions * 10 + index, compression, child)
            )
            worker.start()
            pipes.append(parent)
            workers.append(worker)
        failures: list[str] = []
        for pipe in pipes:
            _, _, failed = _receive(pipe, "opened", 120)
            failures += failed
        time.sleep(1.0)
        rss_open = rss_mb(server_pid)
        pids = {"server": server_pid, "fake": fake_pid}
        start = {name: process_cpu_s(pid) for name, pid in pids.items()}
        start_clients = sum(process_cpu_s(worker.pid) or 0.0 for worker in workers if worker.pid)
        start_system, start_wall = system_busy_s(), time.perf_counter()
        for pipe in pipes:
            pipe.send(("go",))
        for pipe in pipes:
            _receive(pipe, "streamed", step_s + 60)
        wall = time.perf_counter() - start_wall
        used = {name: (process_cpu_s(pid) or 0.0) - (start[name] or 0.0) for name, pid in pids.items()}
        used["clients"] = sum(process_cpu_s(worker.pid) or 0.0 for worker in workers if worker.pid) - start_clients
        system = (system_busy_s() or 0.0) - (start_system or 0.0)
        used["other"] = max(0.0, system - sum(used.values()))
        rss_streamed = rss_mb(server_pid)
        for pipe in pipes:
            pipe.send(("close",))
        results = [_receive(pipe, "done", 120)[1] for pipe in pipes]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join(5)
    time.sleep(2.0)
    rss_closed = rss_mb(server_pid)
    active = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json().get("active_sessions")
    lags = [value for result in results for value in result["lag"]]
    problems = [problem for result in results for problem in result["problems"]]
    return CapacityStep(
        sessions=sessions,
        client_procs=procs,
        turns=len(lags),
        lag=distribution(lags),
        processing=distribution([value for result in results for value in result["processing"]]),
        send_lateness=distribution([value for result in results for value in result["lateness"]]),
        cpu_cores={name: round(value / wall, 2) for name, value in used.items()},
        rss_before_mb=round(rss_before, 1),
        rss_open_mb=round(rss_open, 1),
        rss_streamed_mb=round(rss_streamed, 1),
        rss_closed_mb=round(rss_closed, 1),
        open_mb_per_session=round((rss_open - rss_before) / sessions, 3),
        streamed_mb_per_session=round((rss_streamed - rss_before) / sessions, 3),
        active_after_close=active,
        order_problems=problems,
        order_problem_count=sum(result["problem_count"] for result in results),
        open_failures=failures,
    )


def capacity_table(steps: list[CapacityStep]) -> str:
    lines = [
        "| sessions | client procs | turns | lag p50 ms | lag p99 ms | processing p50/p99 ms | client late p99 ms "
        "| CPU server | CPU fake | CPU clients | CPU other | RSS before → open → streamed → closed MB "
        "| MB/session open | MB/session streamed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for s in steps:
        cpu = s.cpu_cores
        lines.append(
            f"| {s.sessions} | {s.client_procs} | {s.turns} | {show(s.lag['p50'])} | {show(s.lag['p99'])} "
            f"| {show(s.processing['p50'])} / {show(s.processing['p99'])} | {show(s.send_lateness['p99'])} "
            f"| {cpu['server']:.2f} | {cpu['fake']:.2f} | {cpu['clients']:.2f} | {cpu['other']:.2f} "
            f"| {s.rss_before_mb:.0f} → {s.rss_open_mb:.0f} → {s.rss_streamed_mb:.0f} → {s.rss_closed_mb:.0f} "
            f"| {s.open_mb_per_session:.2f} | {s.streamed_mb_per_session:.2f} |"
        )
    return "\n".join(lines)


async def memory_ramp(port: int, server_pid: int, counts: list[int], compression: bool) -> dict[str, Any]:
    """Opens idle sessions (set up, no audio) in batches up to each count, reading the server's RSS after each; then
    the server CPU while they sit idle. On a server that has not served many sessions yet, so that the growth is
    not hidden by memory that earlier sessions freed."""
    streams: list[Stream] = []
    points = [{"sessions": 0, "rss_mb": round(rss_mb(server_pid), 1)}]
    try:
        for count in counts:
            batch = await asyncio.gather(
                *(open_stream(port, "pcm16", compression) for _ in range(count - len(streams)))
            )
            streams.extend(batch)
            await asyncio.sleep(1.0)
            points.append({"sessions": count, "rss_mb": round(rss_mb(server_pid), 1)})
        cpu, wall = process_cpu_s(server_pid) or 0.0, time.perf_counter()
        await asyncio.sleep(3.0)
        idle_cpu = ((process_cpu_s(server_pid) or 0.0) - cpu) / (time.perf_counter() - wall)
    finally:
        await asyncio.gather(*(stream.close() for stream in streams), return_exceptions=True)
    await asyncio.sleep(2.0)
    xs = [point["sessions"] for point in points]
    ys = [point["rss_mb"] for point in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return {
        "points": points,
        "mb_per_session": round(slope, 3),
        "server_cpu_cores_idle_sessions": round(idle_cpu, 3),
        "rss_after_close_mb": round(rss_mb(server_pid), 1),
    }


def ramp_table(ramp: dict[str, Any]) -> str:
    lines = ["| open idle sessions | server RSS MB |", "|---:|---:|"]
    lines += [f"| {point['sessions']} | {point['rss_mb']:.1f} |" for point in ramp["points"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


async def measure_cost(port: int, server_pid: int, sessions: int, loops: int, compression: bool) -> dict[str, Any]:
    """Server CPU per second of audio analysed (see part 4 of the module docstring)."""
    chunk_ms = 20
    audio, turns_per_loop = loop_audio(CAPACITY_LOOP, "pcm16", chunk_ms)
    messages = append_messages(audio, "pcm16", chunk_ms) * loops
    messages += append_messages(silence24k(1000), "pcm16", chunk_ms)
    expected = turns_per_loop * loops
    streams = [await open_stream(port, "pcm16", compression) for _ in range(sessions)]

    async def blast(stream: Stream) -> None:
        for message in messages:
            await stream.ws.send(message)
        deadline = time.monotonic() + 120
        while len(stream.of_type("input_audio_buffer.speech_stopped")) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    try:
        cpu, wall = process_cpu_s(server_pid) or 0.0, time.perf_counter()
        await asyncio.gather(*(blast(stream) for stream in streams))
        cpu, wall = (process_cpu_s(server_pid) or 0.0) - cpu, time.perf_counter() - wall
    finally:
        await asyncio.gather(*(stream.close() for stream in streams), return_exceptions=True)
    audio_s = sessions * len(messages) * chunk_ms / 1000
    stops = sum(len(stream.of_type("input_audio_buffer.speech_stopped")) for stream in streams)
    return {
        "sessions": sessions,
        "audio_s": round(audio_s, 1),
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "cpu_ms_per_audio_s": round(cpu / audio_s * 1000, 2),
        "realtime_sessions_per_core": round(audio_s / cpu, 1) if cpu else None,
        "stops": stops,
        "expected_stops": expected * sessions,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def ints(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part.strip()]

    parser.add_argument("--only", default="accuracy,lag,capacity", help="which parts to run (default: all three)")
    parser.add_argument("--chunk-ms", type=int, default=20, help="chunk size of the lag measurement (default: 20)")
    parser.add_argument("--lag-turns", type=int, default=30, help="turns in the lag measurement (default: 30)")
    parser.add_argument(
        "--lag-formats", default="pcm16,g711_ulaw", help="formats of the lag measurement (default: both)"
    )
    parser.add_argument(
        "--steps", type=ints, default=[10, 20, 30, 40, 50, 75, 100, 150], help="session counts of the capacity steps"
    )
    parser.add_argument("--ramp", type=ints, default=[25, 50, 100, 150], help="idle session counts of the memory ramp")
    parser.add_argument("--step-s", type=float, default=20.0, help="seconds of streaming per step (default: 20)")
    parser.add_argument("--capacity-chunk-ms", type=int, default=20, help="chunk size of the capacity steps")
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes per step (default: 1 up to 50 sessions, then 2)"
    )
    parser.add_argument("--no-compression", action="store_true", help="no permessage-deflate (clients negotiate it)")
    parser.add_argument("--keep-going", action="store_true", help="run every step even past the lag limit")
    parser.add_argument("--cost-sessions", type=int, default=20, help="sessions of the cost part (default: 20)")
    parser.add_argument("--cost-loops", type=int, default=3, help="capacity loops each cost session sends")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = {part.strip() for part in args.only.split(",")}
    compression = not args.no_compression
    workdir = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    processes: list[Process] = []
    results: dict[str, Any] = {
        "benchmark": "server VAD: turn boundaries, speech_stopped lag, real-time capacity",
        "machine": machine(),
        "settings": {"threshold": 0.5, "prefix_padding_ms": PADDING_MS, "silence_duration_ms": SILENCE_MS},
        "compression": compression,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        fake_port, port = free_port(), free_port()
        processes.append(start_fake(fake_port, workdir))
        server = start_server(port, fake_port, workdir)
        processes.append(server)
        server_pid, fake_pid = server.popen.pid, processes[0].popen.pid
        results["server_rss_idle_mb"] = round(rss_mb(server_pid), 1)

        if "accuracy" in parts:
            accuracy = asyncio.run(measure_accuracy(port, compression))
            results["accuracy"] = [asdict(result) for result in accuracy]
            print("## Turn-boundary accuracy (server VAD defaults; errors are detected − true)\n")
            print(accuracy_table(accuracy))
            problems = [p for result in accuracy for p in result.order_problems]
            print(f"\nevent order problems: {problems or 'none'}\n")

        if "lag" in parts:
            lag_results = [
                asyncio.run(measure_lag(port, name.strip(), args.chunk_ms, args.lag_turns, compression))
                for name in args.lag_formats.split(",")
            ]
            results["lag"] = lag_results
            results["lag_target"] = {
                "p50_ms": LAG_TARGET_P50_MS,
                "met": all(r["lag"]["p50"] is not None and r["lag"]["p50"] <= LAG_TARGET_P50_MS for r in lag_results),
            }
            print("## speech_stopped lag, one session at real-time pace\n")
            print(lag_table(lag_results))
            for result in lag_results:
                held = result["decoder_held_back_ms"]
                print(
                    f"\n{result['audio_format']}: the input resampler (audio_utils.InputDecoder) holds back "
                    f"{held['min']:.0f}-{held['max']:.0f} ms (mean {held['mean']:.0f}) after each {result['chunk_ms']} "
                    f"ms chunk; the deciding Silero window ends at ceil(audio_end_ms / {WINDOW_MS}) * {WINDOW_MS}"
                )
                if result["turns"] != result["expected_turns"] or result["order_problems"]:
                    print(
                        f"\n{result['audio_format']}: {result['turns']} of {result['expected_turns']} turns; "
                        f"order problems: {result['order_problems'] or 'none'}"
                    )
            print(
                f"\ntarget lag p50 <= {LAG_TARGET_P50_MS:g} ms: {'met' if results['lag_target']['met'] else 'MISSED'}\n"
            )

        if "cost" in parts:
            cost = asyncio.run(measure_cost(port, server_pid, args.cost_sessions, args.cost_loops, compression))
            results["cost"] = cost
            print("## Cost: server CPU per second of audio analysed\n")
            print(
                f"{cost['sessions']} sessions, {cost['audio_s']} s of audio in {cost['wall_s']} s: server CPU "
                f"{cost['server_cpu_s']} s = {cost['cpu_ms_per_audio_s']} ms per audio second, about "
                f"{cost['realtime_sessions_per_core']} real-time sessions per core; {cost['stops']} of "
                f"{cost['expected_stops']} turns\n",
                flush=True,
            )

        if "capacity" in parts:
            ramp = asyncio.run(memory_ramp(port, server_pid, args.ramp, compression))
            slope = ramp["mb_per_session"]
            print("## Memory: server RSS with idle sessions open\n")
            print(ramp_table(ramp))
            print(
                f"\nRSS per extra session (least-squares slope): {slope} MB (target <= {TARGET_RSS_PER_SESSION_MB:g} "
                f"MB); server CPU with {ramp['points'][-1]['sessions']} idle sessions: "
                f"{ramp['server_cpu_cores_idle_sessions']} cores; "
                f"RSS after closing them: {ramp['rss_after_close_mb']} MB\n",
                flush=True,
            )
            steps: list[CapacityStep] = []
            for sessions in args.steps:
                procs = args.client_procs or (1 if sessions <= 50 else 2)
                step = capacity_step(
                    port, server_pid, fake_pid, sessions, procs, args.capacity_chunk_ms, args.step_s, compression
                )
                steps.append(step)
                print(
                    f"[{sessions} sessions: lag p50 {step.lag['p50']} ms, p99 {step.lag['p99']} ms, "
                    f"server CPU {step.cpu_cores['server']}, RSS {step.rss_streamed_mb} MB]",
                    flush=True,
                )
                if not args.keep_going and (step.lag["p99"] is None or step.lag["p99"] > CAPACITY_LAG_P99_MS):
                    break
            sustained = [s.sessions for s in steps if s.lag["p99"] is not None and s.lag["p99"] <= CAPACITY_LAG_P99_MS]
            results["capacity"] = {
                "chunk_ms": args.capacity_chunk_ms,
                "step_s": args.step_s,
                "lag_p99_limit_ms": CAPACITY_LAG_P99_MS,
                "steps": [asdict(step) for step in steps],
                "max_sustained_sessions": max(sustained, default=0),
                "memory_ramp": ramp,
                "rss_mb_per_session": slope,
                "target": {
                    "sessions": TARGET_SESSIONS,
                    "sessions_met": max(sustained, default=0) >= TARGET_SESSIONS,
                    "rss_mb_per_session": TARGET_RSS_PER_SESSION_MB,
                    "rss_met": slope is not None and slope <= TARGET_RSS_PER_SESSION_MB,
                },
            }
            print(f"\n## Capacity: pcm16, {args.capacity_chunk_ms} ms chunks, {args.step_s:g} s per step\n")
            print(capacity_table(steps))
            print(
                f"\nmost sessions with lag p99 <= {CAPACITY_LAG_P99_MS:g} ms: {max(sustained, default=0)} "
                f"(target >= {TARGET_SESSIONS}); RSS per extra session: {slope} MB "
                f"(target <= {TARGET_RSS_PER_SESSION_MB:g} MB)"
            )
            for step in steps:
                late = step.send_lateness["p99"] or 0.0
                if step.cpu_cores["clients"] > 0.8 * step.client_procs or late > 10:
                    print(
                        f"warning: at {step.sessions} sessions the clients were busy ({step.cpu_cores['clients']} "
                        f"cores, send lateness p99 {late} ms): try --client-procs {step.client_procs + 1}"
                    )
                if step.order_problem_count or step.open_failures or step.active_after_close:
                    print(
                        f"{step.sessions} sessions: {step.order_problem_count} order problems "
                        f"{step.order_problems[:3]}, "
                        f"open failures {step.open_failures}, active after close {step.active_after_close}"
                    )
        problems = log_problems(server.log())
        results["server_log_problems"] = problems[:50]
        results["server_rss_end_mb"] = round(rss_mb(server_pid), 1)
    except BaseException:
        for process in processes:
            tail = "\n".join(process.log().splitlines()[-30:])
            print(f"--- last lines of the {process.name} log ({process.log_path}):\n{tail}", file=sys.stderr)
        raise
    finally:
        for process in reversed(processes):
            process.stop()

    print(
        f"\nmachine: {results['machine']}; server RSS idle {results['server_rss_idle_mb']} MB, "
        f"end {results['server_rss_end_mb']} MB"
    )
    if problems:
        print(f"warning: {len(problems)} warning/error lines in the server log ({server.log_path}), first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
