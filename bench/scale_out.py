"""Scaling out: the same load at WORKERS=1 and WORKERS=2, in one run, as ratios.

Two measurements per worker count, against loopback providers (`tests.fakes.openai_fake`, which answer at once):

- text turns back to back: `--sessions` sessions each run `--turns` turns (`conversation.item.create` +
  `response.create`, audio out) with no pause; turns/s = all turns / wall time (`response_latency.run_sessions`);
- real-time VAD sessions: steps of `--steps` sessions streaming audio in real time (`turn_detection.capacity_step`);
  a step passes while the `speech_stopped` lag p99 stays under 100 ms, and the figure is the largest passing step.

The clients run on the same machine as the server and share its cores (on a 2-core machine they take a large part
of them), so the ratio understates what a second core gives a server that has it to itself. The per-worker cost
(cores per turn/s, cores per VAD session) is printed too, to project a bigger box.

    .venv/bin/python bench/scale_out.py
    .venv/bin/python bench/scale_out.py --sessions 8 --turns 20 --steps 10,20,30,40,60,80

Writes bench/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from response_latency import ROOT, Process, free_port, machine, run_sessions, spawn, start_fake, wait_until_ready

from turn_detection import capacity_step

RESULTS_PATH = ROOT / "bench" / "results" / "scale_out.json"
LAG_P99_LIMIT_MS = 100.0


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def wait_for_workers(port: int, workers: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while in_a_row < 8:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not show {workers} ready workers")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            good = response.status_code == 200 and response.json()["workers"] == workers
        except httpx.HTTPError:
            good = False
        in_a_row = in_a_row + 1 if good else 0
        time.sleep(0.05 if good else 0.3)


def start_workers(port: int, fake_port: int, workdir: Path, workers: int) -> Process:
    """The server on the loopback fake (as `response_latency.start_server`), with more time to start N workers."""
    prefixes = ("OPENAI_", "STT_", "LLM_", "TTS_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(
        {
            "SERVER_HOST": "127.0.0.1",
            "SERVER_PORT": str(port),
            "STT_PROVIDER": "openai_whisper",
            "LLM_PROVIDER": "openai",
            "TTS_PROVIDER": "openai_tts",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
            "OPENAI_API_KEY": "sk-bench",
            "LOG_LEVEL": "WARNING",
            "WORKERS": str(workers),
            "MAX_SESSIONS": "10000",
        }
    )
    server = spawn("server", [sys.executable, str(ROOT / "main.py")], workdir, env, workdir)
    wait_until_ready(server, f"http://127.0.0.1:{port}/health", '"healthy"', timeout_s=300)
    return server


def measure(workers: int, fake: Process, fake_port: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_port()
    server = start_workers(port, fake_port, workdir / f"w{workers}", workers)
    try:
        wait_for_workers(port, workers)
        started = time.perf_counter()
        latencies = asyncio.run(run_sessions(port, args.sessions, args.turns, warmup=1))
        wall = time.perf_counter() - started
        turns_per_s = len(latencies) / wall
        steps = []
        for sessions in args.steps:
            procs = 1 if sessions <= 50 else 2
            step = capacity_step(port, server.popen.pid, fake.popen.pid, sessions, procs, 20, args.step_s, False)
            steps.append(asdict(step))
            p99 = step.lag["p99"]
            print(f"WORKERS={workers}: {sessions} VAD sessions, lag p99 {p99} ms", flush=True)
            if p99 is None or p99 > LAG_P99_LIMIT_MS or step.open_failures:
                break
        passing = [s["sessions"] for s in steps if s["lag"]["p99"] is not None and s["lag"]["p99"] <= LAG_P99_LIMIT_MS]
        return {
            "workers": workers,
            "text_turns": len(latencies),
            "text_wall_s": round(wall, 2),
            "turns_per_s": round(turns_per_s, 1),
            "vad_sessions_passing": max(passing, default=0),
            "vad_steps": steps,
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions of the text turns (default: 8)")
    parser.add_argument("--turns", type=int, default=20, help="turns per session (default: 20)")
    parser.add_argument("--steps", type=ints, default=[10, 20, 30, 40, 60, 80, 100, 130], help="VAD session steps")
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds of streaming per VAD step (default: 15)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    for folder in ("w1", "w2"):
        (workdir / folder).mkdir()
    fake_port = free_port()
    fake = start_fake(fake_port, workdir)
    try:
        runs = [measure(workers, fake, fake_port, args, workdir) for workers in (1, 2)]
    finally:
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    one, two = runs
    cores = os.cpu_count() or 1
    ratios = {
        "turns_per_s": round(two["turns_per_s"] / one["turns_per_s"], 2) if one["turns_per_s"] else None,
        "vad_sessions": round(two["vad_sessions_passing"] / one["vad_sessions_passing"], 2)
        if one["vad_sessions_passing"]
        else None,
    }
    print("\n| WORKERS | text turns/s | VAD sessions with lag p99 ≤ 100 ms |\n|---:|---:|---:|")
    for run in runs:
        print(f"| {run['workers']} | {run['turns_per_s']} | {run['vad_sessions_passing']} |")
    print(f"\nratios WORKERS=2 / WORKERS=1: {ratios} on {cores} cores shared with the clients and the fake")
    results = {"benchmark": "scale_out", "machine": machine(), "runs": runs, "ratios": ratios}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
