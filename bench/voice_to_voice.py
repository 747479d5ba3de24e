"""Voice-to-voice latency on the offline default: from the end of the user's speech to the first reply audio.

Starts the server the way `make run` does with no configuration at all (no provider settings, from an empty
temporary directory so no `.env` is read): local Whisper tiny.en, the local LLM (Qwen2.5-Coder-0.5B via xllamacpp)
and Piper. Startup time is process start → `/health` answering 200 `healthy` (polled every 20 ms); the first-run
join of the model files is not part of it (the script warns when the cache in ~/.cache/realtime-server is empty).

Then spoken turns run one session at a time (`--turns-per-session` turns each, a fresh session after that), with
default server VAD (threshold 0.5, prefix 300 ms, silence 500 ms, `create_response: true`) and input transcription
on (`audio.input.transcription: {"model": "whisper-1"}`). Each turn is one utterance of the fixtures
(tests/fixtures/manifest.json: question.wav, hello.wav, both sentences of two_utterances.wav, long_reply_interrupt
.wav, in turn), cut from 300 ms before it starts to 100 ms after it ends. A microphone task streams 20 ms chunks at
real-time pace the whole time, silence when the user is not speaking (an open mic), chunk i at t0 + (i + 1) · 20 ms.

For each turn, with `end` = the wall-clock instant the true end of speech (manifest `end_ms`) was captured, i.e. the
send time of the chunk containing it minus the part of that chunk after it:

* VAD: `end` → `input_audio_buffer.speech_stopped` arrives. Includes the 500 ms silence window, the VAD's
  algorithmic delay (32 ms window, input resampler) and the chunking.
* STT: speech_stopped → `conversation.item.input_audio_transcription.completed`. The server starts transcribing
  when the speaker has paused 200 ms, so this is often ~0: the transcript is ready when the turn is committed.
* LLM: transcription completed → first `response.output_audio_transcript.delta`. The response is held until the
  user's turn is transcribed; the LLM then streams tokens into Pipecat's TTS stage, which aggregates them into a
  sentence and announces each sentence (the transcript delta) just before it synthesizes it. So this is the LLM's
  time to its first complete sentence (prompt evaluation + first-token latency + the sentence's tokens), plus
  pipeline hops.
* TTS: first transcript delta → first `response.output_audio.delta`: Piper's time to the first audio of that
  sentence (plus resampling to 24 kHz and the socket).
* Total: speech_stopped → first audio delta (target p50 <= 1.0 s), and `end` → first audio delta.

Reports p50/p90 of each (Markdown), server RSS after the turns (VmRSS and peak VmHWM from /proc, target <= 1.5 GB),
startup time (target <= 10 s), CPU used by other processes meanwhile, and writes `bench/results/voice_to_voice.json`.

    .venv/bin/python bench/voice_to_voice.py
    .venv/bin/python bench/voice_to_voice.py --turns 20 --turns-per-session 1
    .venv/bin/python bench/voice_to_voice.py --language zh      # Chinese turns (make zh-voice first)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
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
    spawn,
    system_busy_s,
)
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.audio_fixtures import manifest, pcm24k, silence24k, zh_manifest  # noqa: E402

RESULTS_PATH = ROOT / "bench" / "results" / "voice_to_voice.json"
CHUNK_MS = 20
BYTES_PER_MS = 48  # PCM16 mono 24 kHz
LEAD_MS = 300  # audio kept before each utterance
TAIL_MS = 100  # and after it (then the microphone sends silence)
TURN_TIMEOUT_S = 90.0
STARTUP_TIMEOUT_S = 300.0
TARGET_TOTAL_P50_S = 1.0
TARGET_STARTUP_S = 10.0
TARGET_RSS_MB = 1.5 * 1024
UTTERANCES = (
    ("question.wav", 0),
    ("hello.wav", 0),
    ("two_utterances.wav", 0),
    ("two_utterances.wav", 1),
    ("long_reply_interrupt.wav", 0),
)
# `--language zh`: the Chinese fixture (tests/fixtures/make_zh_fixtures.py), the session's transcription language set
# to zh (tiny.en hands such turns to Whisper base) and short Chinese instructions; the reply is read by the offline
# Chinese voice (`make zh-voice`).
ZH_UTTERANCES = (("zh_question.wav", 0),)
ZH_INSTRUCTIONS = "你是一个语音助手。用一两句简短的中文回答。"
PROVIDER_PREFIXES = ("OPENAI_", "STT_", "LLM_", "TTS_", "LOCAL_LLM_", "WHISPER_", "PIPER_", "OLLAMA_", "VAD_")


# --------------------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------------------


def cache_ready() -> bool:
    """Whether the joined LLM file is cached (otherwise the first start joins ~470 MB first)."""
    configured = os.environ.get("REALTIME_CACHE_DIR")
    cache = Path(configured).expanduser() if configured else Path.home() / ".cache" / "realtime-server"
    return any(cache.glob("*.gguf.verified"))


def start_offline_server(port: int, workdir: Path, preemptive: str = "auto") -> tuple[Process, float]:
    """Starts `main.py` with no provider settings (but `PREEMPTIVE_RESPONSES`); returns it and the seconds until
    `/health` said healthy."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(PROVIDER_PREFIXES)}
    env.update({"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    env["PREEMPTIVE_RESPONSES"] = preemptive
    started = time.perf_counter()
    server = spawn("server", [sys.executable, str(ROOT / "main.py")], workdir, env, workdir)
    url = f"http://127.0.0.1:{port}/health"
    try:
        with httpx.Client(timeout=2) as client:
            while time.perf_counter() - started < STARTUP_TIMEOUT_S:
                if server.popen.poll() is not None:
                    raise RuntimeError(f"server exited with {server.popen.returncode}:\n{server.log()}")
                try:
                    response = client.get(url)
                    if response.status_code == 200 and response.json().get("status") == "healthy":
                        return server, time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{server.log()}")
    except BaseException:
        server.stop()
        raise


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(line.split()[1]) / 1024, 1)
    return values


# --------------------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------------------


class Microphone:
    """Sends 20 ms chunks at real-time pace: queued speech when there is some, silence otherwise."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.queue: deque[str] = deque()
        self.send_times: list[float] = []  # by chunk index
        self.lateness_ms: list[float] = []
        self._silence = json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(silence24k(CHUNK_MS)).decode()}
        )
        self._task = asyncio.create_task(self._run())

    @property
    def next_index(self) -> int:
        """The index of the first chunk not yet sent nor queued."""
        return len(self.send_times) + len(self.queue)

    def say(self, audio: bytes) -> int:
        """Queues audio (padded to whole chunks); returns the chunk index it starts at."""
        first = self.next_index
        audio += b"\x00" * (-len(audio) % (CHUNK_MS * BYTES_PER_MS))
        size = CHUNK_MS * BYTES_PER_MS
        for start in range(0, len(audio), size):
            chunk = base64.b64encode(audio[start : start + size]).decode()
            self.queue.append(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        return first

    async def _run(self) -> None:
        t0 = time.perf_counter()
        index = 0
        while True:
            target = t0 + (index + 1) * CHUNK_MS / 1000
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = self.queue.popleft() if self.queue else self._silence
            await self.ws.send(message)
            sent = time.perf_counter()
            self.send_times.append(sent)
            self.lateness_ms.append((sent - target) * 1000)
            index += 1

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Session:
    """One connection: a reader task stamps events with their arrival time; the microphone streams."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.mic: Microphone | None = None

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.events.append((time.perf_counter(), json.loads(raw)))
                self._arrived.set()
        except Exception:  # closed under us: what was read stays
            pass
        finally:
            self._arrived.set()

    async def until(self, event_type: str, start: int = 0, timeout: float = TURN_TIMEOUT_S) -> int:
        """Index of the first event of `event_type` at or after `start`, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(start, len(self.events)):
                event = self.events[index][1]
                if event["type"] == event_type:
                    return index
                if event["type"] == "error":
                    raise RuntimeError(f"server error: {event}")
            start = max(start, len(self.events))
            if self._reader.done():
                raise RuntimeError(f"connection closed before {event_type}")
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {event_type} within {timeout} s")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue

    async def close(self) -> None:
        if self.mic is not None:
            await self.mic.stop()
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_session(port: int, language: str) -> Session:
    ws = await connect(f"ws://127.0.0.1:{port}/v1/realtime", max_size=None, open_timeout=60, ping_interval=None)
    session = Session(ws)
    await session.until("session.created")
    update: dict[str, Any] = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    if language == "zh":
        update["audio"]["input"]["transcription"]["language"] = "zh"
        update["instructions"] = ZH_INSTRUCTIONS
    await ws.send(json.dumps({"type": "session.update", "session": update}))
    await session.until("session.updated")
    session.mic = Microphone(ws)
    return session


@dataclass
class Turn:
    session: int
    turn_in_session: int
    fixture: str
    said: str
    heard: str | None
    reply: str
    status: str
    vad_s: float
    stt_s: float
    llm_s: float
    tts_s: float
    stopped_to_audio_s: float
    end_to_audio_s: float
    true_end_to_audio_end_ms: float  # speech_stopped.audio_end_ms − true end: where the VAD put it (+500 ms)
    output_tokens: int | None
    server_rss_mb: float | None = None  # after the turn


async def run_turn(session: Session, fixture: str, index: int, number: tuple[int, int], language: str = "en") -> Turn:
    """Speaks one utterance and waits for the reply; returns its timings."""
    mic = session.mic
    assert mic is not None
    utterance = (zh_manifest() if language == "zh" else manifest())["files"][fixture]["utterances"][index]
    pcm = pcm24k(fixture)
    cut_start = max(0, utterance["start_ms"] - LEAD_MS)
    cut_end = utterance["end_ms"] + TAIL_MS
    first_event = len(session.events)
    first_chunk = mic.say(pcm[cut_start * BYTES_PER_MS : cut_end * BYTES_PER_MS])
    end_offset_ms = utterance["end_ms"] - cut_start  # where the speech ends, from the first chunk
    end_chunk = first_chunk + end_offset_ms // CHUNK_MS
    end_position_ms = first_chunk * CHUNK_MS + end_offset_ms  # on the session's audio clock

    stopped = await session.until("input_audio_buffer.speech_stopped", first_event)
    done = await session.until("response.done", stopped)
    events = session.events
    completed = next(
        index
        for index in range(stopped, len(events))
        if events[index][1]["type"] == "conversation.item.input_audio_transcription.completed"
    )
    text = next(
        (i for i in range(stopped, done) if events[i][1]["type"] == "response.output_audio_transcript.delta"), None
    )
    audio = next((i for i in range(stopped, done) if events[i][1]["type"] == "response.output_audio.delta"), None)
    response = events[done][1]["response"]
    if text is None or audio is None:
        raise RuntimeError(f"response without transcript or audio: {response}")
    # When the speech ended: the send time of the chunk holding the end, less the part of the chunk after it.
    while len(mic.send_times) <= end_chunk:
        await asyncio.sleep(0.01)
    end_at = mic.send_times[end_chunk] - ((end_chunk + 1) * CHUNK_MS - end_position_ms) / 1000
    t_stop, t_stt, t_text, t_audio = (events[i][0] for i in (stopped, completed, text, audio))
    output = response.get("output") or [{}]
    content = (output[0].get("content") or [{}])[0]
    usage = response.get("usage") or {}
    return Turn(
        session=number[0],
        turn_in_session=number[1],
        fixture=f"{fixture}#{index}",
        said=utterance["text"],
        heard=events[completed][1].get("transcript"),
        reply=content.get("transcript") or "",
        status=response["status"],
        vad_s=t_stop - end_at,
        stt_s=t_stt - t_stop,
        llm_s=t_text - t_stt,
        tts_s=t_audio - t_text,
        stopped_to_audio_s=t_audio - t_stop,
        end_to_audio_s=t_audio - end_at,
        true_end_to_audio_end_ms=events[stopped][1]["audio_end_ms"] - end_position_ms,
        output_tokens=usage.get("output_tokens"),
    )


async def run_turns(port: int, pid: int, turns: int, per_session: int, language: str = "en") -> list[Turn]:
    results: list[Turn] = []
    utterances = ZH_UTTERANCES if language == "zh" else UTTERANCES
    plan = [utterances[index % len(utterances)] for index in range(turns)]
    for session_number, start in enumerate(range(0, turns, per_session)):
        session = await open_session(port, language)
        try:
            await asyncio.sleep(0.5)  # a little open-mic silence first
            for turn_number, (fixture, index) in enumerate(plan[start : start + per_session]):
                results.append(await run_turn(session, fixture, index, (session_number, turn_number), language))
                last = results[-1]
                last.server_rss_mb = memory_mb(pid).get("VmRSS")
                print(
                    f"  turn {len(results)}: {last.fixture} heard {last.heard!r} → {last.reply[:60]!r} "
                    f"({last.stopped_to_audio_s * 1000:.0f} ms to first audio; server RSS {last.server_rss_mb} MB)",
                    flush=True,
                )
                await asyncio.sleep(0.3)  # the user listens a moment before speaking again
        finally:
            await session.close()
    return results


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------

STAGES = {
    "vad_s": "VAD: true speech end → speech_stopped (incl. 500 ms silence)",
    "stt_s": "STT: speech_stopped → transcription.completed",
    "llm_s": "LLM: transcription → first transcript delta (first sentence)",
    "tts_s": "TTS: first transcript delta → first audio delta",
    "stopped_to_audio_s": "**speech_stopped → first audio delta**",
    "end_to_audio_s": "true speech end → first audio delta",
}


def stage_rows(turns: list[Turn]) -> dict[str, dict[str, float]]:
    rows = {}
    for key in STAGES:
        values = [getattr(turn, key) * 1000 for turn in turns]
        rows[key] = {
            "p50_ms": round(percentile(values, 0.5), 1),
            "p90_ms": round(percentile(values, 0.9), 1),
            "mean_ms": round(statistics.fmean(values), 1),
            "max_ms": round(max(values), 1),
        }
    return rows


def stage_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| stage | p50 ms | p90 ms | mean ms | max ms |", "|---|---:|---:|---:|---:|"]
    for key, label in STAGES.items():
        row = rows[key]
        lines.append(
            f"| {label} | {row['p50_ms']:.0f} | {row['p90_ms']:.0f} | {row['mean_ms']:.0f} | {row['max_ms']:.0f} |"
        )
    return "\n".join(lines)


def cell(text: str, limit: int) -> str:
    """Text fit for a Markdown table cell."""
    return " ".join(text.split())[:limit].replace("|", "/")


def turn_table(turns: list[Turn]) -> str:
    lines = [
        "| # | utterance | heard | VAD ms | STT ms | LLM ms | TTS ms | stopped→audio ms | RSS MB | reply (start) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for number, turn in enumerate(turns, 1):
        lines.append(
            f"| {number} | {turn.fixture} | {cell(turn.heard or '', 40)} | {turn.vad_s * 1000:.0f} "
            f"| {turn.stt_s * 1000:.0f} | {turn.llm_s * 1000:.0f} | {turn.tts_s * 1000:.0f} "
            f"| {turn.stopped_to_audio_s * 1000:.0f} | {turn.server_rss_mb or 0:.0f} | {cell(turn.reply, 50)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="spoken turns (default: 10)")
    parser.add_argument("--turns-per-session", type=int, default=2, help="turns per session (default: 2)")
    parser.add_argument("--output", type=Path, help="where to write the JSON results (default: by language)")
    parser.add_argument(
        "--language", choices=("en", "zh"), default="en", help="en: the English fixtures; zh: Chinese (make zh-voice)"
    )
    parser.add_argument(
        "--preemptive",
        default="off,on",
        help="PREEMPTIVE_RESPONSES values to measure, one server each, in this order (default: off,on)",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS_PATH if args.language == "en" else RESULTS_PATH.with_name("voice_to_voice_zh.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not cache_ready():
        print("warning: no joined model in the cache: this start includes the first-run join of the LLM file")
    modes = [mode.strip() for mode in args.preemptive.split(",") if mode.strip()]
    runs = {}
    for mode in modes:
        print(f"\n## PREEMPTIVE_RESPONSES={mode}", flush=True)
        runs[mode] = run_mode(args, mode)
    print(
        "\n| PREEMPTIVE_RESPONSES | speech_stopped → first audio p50 / p90 | end of speech → first audio p50 / p90 "
        "| preemptive responses discarded (server log) |"
    )
    print("|---|---|---|---|")
    for mode, run in runs.items():
        stopped, end = run["stages"]["stopped_to_audio_s"], run["stages"]["end_to_audio_s"]
        print(
            f"| {mode} | {stopped['p50_ms']:.0f} / {stopped['p90_ms']:.0f} ms | {end['p50_ms']:.0f} / "
            f"{end['p90_ms']:.0f} ms | {run['preemptive_discarded']} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "offline default: end of user speech -> first response.output_audio.delta",
        "language": args.language,
        "machine": machine(),
        "modes": runs,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


def run_mode(args: argparse.Namespace, preemptive: str) -> dict[str, Any]:
    """One server with `PREEMPTIVE_RESPONSES=preemptive`, the turns through it, and what was measured."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-v2v-"))
    server: Process | None = None
    try:
        port = free_port()
        server, startup_s = start_offline_server(port, workdir, preemptive)
        pid = server.popen.pid
        memory_ready = memory_mb(pid)
        log = server.log()
        ready_match = re.search(r"Models ready in ([\d.]+)s", log)
        providers = re.search(r"Providers: (\{.*\})", log)
        print(f"startup: {startup_s:.2f} s to /health healthy; RSS {memory_ready.get('VmRSS')} MB", flush=True)
        cpu_server, cpu_system, wall = process_cpu_s(pid), system_busy_s(), time.perf_counter()
        cpu_self = sum(os.times()[:2])
        turns = asyncio.run(run_turns(port, pid, args.turns, args.turns_per_session, args.language))
        wall = time.perf_counter() - wall
        server_cpu = (process_cpu_s(pid) or 0.0) - (cpu_server or 0.0)
        client_cpu = sum(os.times()[:2]) - cpu_self
        other_cpu = max(0.0, (system_busy_s() or 0.0) - (cpu_system or 0.0) - server_cpu - client_cpu)
        time.sleep(0.5)
        memory_after = memory_mb(pid)
        problems = log_problems(server.log())
        final_log = server.log()
    except BaseException:
        if server is not None:
            tail = "\n".join(server.log().splitlines()[-40:])
            print(f"--- last lines of the server log ({server.log_path}):\n{tail}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()

    rows = stage_rows(turns)
    total_p50_s = rows["stopped_to_audio_s"]["p50_ms"] / 1000
    rss_mb = memory_after.get("VmRSS", 0.0)
    print()
    print(stage_table(rows))
    print()
    print(turn_table(turns))
    print()
    print(
        f"CPU over the turns ({wall:.0f} s), in cores: server {server_cpu / wall:.2f}, client {client_cpu / wall:.2f}, "
        f"other processes {other_cpu / wall:.2f}"
    )
    print(f"providers: {providers.group(1) if providers else '?'}")
    verdict = {
        "stopped_to_audio_p50": total_p50_s <= TARGET_TOTAL_P50_S,
        "startup": startup_s <= TARGET_STARTUP_S,
        "rss": rss_mb <= TARGET_RSS_MB,
    }
    print(
        f"targets: speech_stopped → first audio p50 {total_p50_s:.2f} s (<= {TARGET_TOTAL_P50_S:g} s): "
        f"{'met' if verdict['stopped_to_audio_p50'] else 'MISSED'}; startup {startup_s:.2f} s "
        f"(<= {TARGET_STARTUP_S:g} s; models ready in {ready_match.group(1) if ready_match else '?'} s per the log): "
        f"{'met' if verdict['startup'] else 'MISSED'}; server RSS after the turns {rss_mb:.0f} MB, peak "
        f"{memory_after.get('VmHWM', 0):.0f} MB (<= {TARGET_RSS_MB:.0f} MB): {'met' if verdict['rss'] else 'MISSED'}"
    )
    if problems:
        print(f"warning: {len(problems)} warning/error lines in the server log ({server.log_path}), first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    # A discarded attempt is invisible to the client by design; the server logs each one.
    discarded = final_log.count("preemptive response discarded")
    return {
        "preemptive_responses": preemptive,
        "preemptive_discarded": discarded,
        "providers": providers.group(1) if providers else None,
        "startup_s": round(startup_s, 2),
        "models_ready_s_per_log": float(ready_match.group(1)) if ready_match else None,
        "server_memory_mb_ready": memory_ready,
        "server_memory_mb_after_turns": memory_after,
        "chunk_ms": CHUNK_MS,
        "turns_per_session": args.turns_per_session,
        "stages": rows,
        "targets": {
            "stopped_to_audio_p50_s": TARGET_TOTAL_P50_S,
            "startup_s": TARGET_STARTUP_S,
            "rss_mb": TARGET_RSS_MB,
            "met": verdict,
        },
        "cpu_cores": {
            "server": round(server_cpu / wall, 2),
            "client": round(client_cpu / wall, 2),
            "other": round(other_cpu / wall, 2),
        },
        "turns": [asdict(turn) for turn in turns],
        "server_log_problems": problems[:50],
    }


if __name__ == "__main__":
    sys.exit(main())
