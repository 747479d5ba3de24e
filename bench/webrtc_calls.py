"""WebRTC on loopback: reply latency beside the WebSocket's, and how many calls one process holds in real time.

1. Latency, on the offline default (the server started as `make run` starts it, no provider settings: local
   Whisper, the local LLM, Piper), or with `--loopback` on the loopback providers (the transports alone). Spoken
   turns (question.wav, hello.wav, in turn, cut 300 ms before the speech to its end), each on a fresh session,
   alternately over WebRTC (an aiortc peer: `tests/support/webrtc_client.py`, the microphone a real-time Opus
   track) and over the WebSocket (20 ms appends at real-time pace). `end` is when the last frame of the speech left
   the client; the figure is `end` → the first reply audio arriving at the client: the first audible frame decoded
   from the track (WebRTC), the first `response.output_audio.delta` (WebSocket). Both include the 500 ms of silence
   server VAD waits for.
2. Capacity, on the loopback providers (`tests.fakes.openai_fake`: the transport is measured, not the models). For
   each step N (`--calls 1,2,4,8`): N calls at once, each speaking hello.wav `--capacity-turns` times and listening
   to the whole reply each time. A step holds in real time when no reply had an underrun (a silent 20 ms frame
   between the first and last audible frame of a reply: the fake's reply is a continuous tone) and the VAD lag p99
   (speech_stopped's arrival − end of speech − the 500 ms silence window) stayed under 100 ms.

    .venv/bin/python bench/webrtc_calls.py
    .venv/bin/python bench/webrtc_calls.py --loopback --turns 8 --calls 1,2,4,8,16

Prints Markdown tables, writes bench/results/webrtc.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from response_latency import ROOT, free_port, machine, percentile, start_fake, start_server
from voice_to_voice import start_offline_server
from websockets.asyncio.client import connect

sys.path.insert(0, str(ROOT))

from tests.support.audio_fixtures import pcm24k, utterances
from tests.support.webrtc_client import WebRtcTestClient

RESULTS_PATH = ROOT / "bench" / "results" / "webrtc_calls.json"
SILENCE_MS = 500
AUDIBLE = 300  # peak, of 32767: the replies' quietest speech is well above it, decoded silence is ~0
VAD_P99_LIMIT_MS = 100.0
TURN_TIMEOUT_S = 60.0
FIXTURES = ("question.wav", "hello.wav")


def speech_of(fixture: str) -> bytes:
    """The fixture from 300 ms before its speech to the end of its speech (PCM16 24 kHz)."""
    (utterance,) = utterances(fixture)[:1]
    audio = pcm24k(fixture)
    start = max(0, int((utterance["start_ms"] - 300) * 48)) // 2 * 2
    end = int(utterance["end_ms"] * 48) // 2 * 2
    return audio[start:end]


def first_audible_after(client: WebRtcTestClient, since: float) -> float | None:
    for arrived, peak in client.audio_arrivals:
        if arrived >= since and peak > AUDIBLE:
            return arrived
    return None


async def webrtc_turn(base_url: str, fixture: str) -> float:
    client = WebRtcTestClient(base_url)
    try:
        await client.connect_sdk(session={"type": "realtime"})
        await client.until("session.created")
        await asyncio.sleep(0.5)
        end = client.mic.say(speech_of(fixture))
        await client.until("output_audio_buffer.started", timeout=TURN_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (arrived := first_audible_after(client, end)) is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if arrived is None:
            raise RuntimeError("no audible reply on the track")
        return (arrived - end) * 1000
    finally:
        await client.close()


async def websocket_turn(port: int, fixture: str) -> float:
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime", max_size=None) as ws:
        await ws.recv()
        audio = speech_of(fixture) + bytes(48 * 2000)  # then an open mic's silence
        chunk = 960  # 20 ms
        t0 = time.monotonic()
        speech_end = len(speech_of(fixture))
        end = t0 + speech_end / 48 / 1000
        first_audio: list[float] = []

        async def read() -> None:
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "response.output_audio.delta":
                    first_audio.append(time.monotonic())
                    return

        reader = asyncio.create_task(read())
        for index, offset in enumerate(range(0, len(audio), chunk)):
            if reader.done():
                break
            delay = t0 + (index + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = base64.b64encode(audio[offset : offset + chunk]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
        await asyncio.wait_for(reader, TURN_TIMEOUT_S)
        return (first_audio[0] - end) * 1000


async def latency(turns: int, loopback: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-webrtc-"))
    port = free_port()
    fake = None
    if loopback:
        fake_port = free_port()
        fake = start_fake(fake_port, workdir)
        started = time.monotonic()
        server = start_server(port, fake_port, workdir)
        startup_s = time.monotonic() - started
    else:
        server, startup_s = start_offline_server(port, workdir)
    results: dict[str, list[float]] = {"webrtc": [], "websocket": []}
    failures: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        for index in range(turns):
            fixture = FIXTURES[index % len(FIXTURES)]
            for transport in ("webrtc", "websocket"):
                turn = webrtc_turn(base, fixture) if transport == "webrtc" else websocket_turn(port, fixture)
                try:
                    results[transport].append(await turn)
                    print(f"turn {index + 1}: {transport} {results[transport][-1]:.0f} ms")
                except (TimeoutError, RuntimeError) as exc:
                    failures.append(f"turn {index + 1} {transport}: {exc!r}")
                    print(failures[-1])
    finally:
        server.stop()
        if fake is not None:
            fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"startup_s": startup_s, "providers": "loopback" if loopback else "offline", "failures": failures, **results}


def underruns(client: WebRtcTestClient, start: float, stop: float) -> int:
    """Silent frames between the first and the last audible frame that arrived between `start` and `stop`."""
    peaks = np.array([peak for arrived, peak in client.audio_arrivals if start <= arrived <= stop])
    audible = np.flatnonzero(peaks > AUDIBLE)
    if len(audible) < 2:
        return 0
    return int((peaks[audible[0] : audible[-1] + 1] <= AUDIBLE).sum())


async def call_turns(base_url: str, turns: int) -> tuple[list[float], list[int]]:
    client = WebRtcTestClient(base_url)
    lags: list[float] = []
    gaps: list[int] = []
    try:
        await client.connect_sdk(session={"type": "realtime"})
        await client.until("session.created")
        await asyncio.sleep(0.3)
        for _ in range(turns):
            end = client.mic.say(speech_of("hello.wav"))
            await client.until("input_audio_buffer.speech_stopped", timeout=TURN_TIMEOUT_S)
            lags.append((time.monotonic() - end) * 1000 - SILENCE_MS)
            started = time.monotonic()
            await client.until("output_audio_buffer.stopped", timeout=TURN_TIMEOUT_S)
            await asyncio.sleep(0.2)  # the last frames through the receiver's jitter buffer
            gaps.append(underruns(client, started, time.monotonic()))
    finally:
        await client.close()
    return lags, gaps


async def capacity(steps: list[int], turns: int) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-webrtc-"))
    fake_port, port = free_port(), free_port()
    fake = start_fake(fake_port, workdir)
    server = start_server(port, fake_port, workdir, extra_env={"STT_PROVIDER": "openai_whisper"})
    rows = []
    try:
        base = f"http://127.0.0.1:{port}"
        for calls in steps:
            outcomes = await asyncio.gather(*(call_turns(base, turns) for _ in range(calls)), return_exceptions=True)
            failed = [str(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
            lags = [lag for outcome in outcomes if not isinstance(outcome, BaseException) for lag in outcome[0]]
            gaps = [gap for outcome in outcomes if not isinstance(outcome, BaseException) for gap in outcome[1]]
            row = {
                "calls": calls,
                "replies": len(gaps),
                "replies_with_underruns": sum(1 for gap in gaps if gap),
                "underrun_frames": sum(gaps),
                "vad_lag_p50_ms": percentile(lags, 0.5) if lags else None,
                "vad_lag_p99_ms": percentile(lags, 0.99) if lags else None,
                "failed_calls": failed,
            }
            row["real_time"] = (
                not failed and not row["replies_with_underruns"] and (row["vad_lag_p99_ms"] or 0) < VAD_P99_LIMIT_MS
            )
            rows.append(row)
            print(json.dumps(row))
            if failed or row["replies_with_underruns"]:
                break  # the VAD lag alone does not stop the steps: aiortc's jitter buffer adds a fixed part
    finally:
        server.stop()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=6, help="latency turns per transport")
    parser.add_argument("--calls", default="1,2,4,8", help="capacity steps: concurrent calls")
    parser.add_argument("--capacity-turns", type=int, default=2, help="turns per call in each capacity step")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--loopback", action="store_true", help="latency on the loopback providers (the transports alone)"
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"machine": machine()}
    if not args.skip_latency:
        measured = asyncio.run(latency(args.turns, args.loopback))
        result["latency"] = measured
        print("\n| end of speech → first reply audio | p50 | p90 |\n|---|---|---|")
        for transport in ("webrtc", "websocket"):
            values = measured[transport]
            if values:
                print(f"| {transport} | {percentile(values, 0.5):.0f} ms | {percentile(values, 0.9):.0f} ms |")
    steps = [int(step) for step in args.calls.split(",")]
    rows = asyncio.run(capacity(steps, args.capacity_turns))
    result["capacity"] = rows
    print("\n| calls | replies | with underruns | VAD lag p50 | VAD lag p99 | real time |\n|---|---|---|---|---|---|")
    for row in rows:
        p50, p99 = row["vad_lag_p50_ms"], row["vad_lag_p99_ms"]
        print(
            f"| {row['calls']} | {row['replies']} | {row['replies_with_underruns']} | "
            f"{p50 if p50 is None else round(p50)} ms | {p99 if p99 is None else round(p99)} ms | {row['real_time']} |"
        )
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
