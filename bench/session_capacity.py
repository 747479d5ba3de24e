"""Session capacity: how many sessions one server process holds, idle and talking.

For each step N (`--idle 250,500,750,1000`): open N WebSocket sessions (raw `websockets`, 25 at a time) and measure how
long each waits for `session.created`; then `--talking` of them (or all, if fewer) run text turns concurrently, each
turn `conversation.item.create` + `response.create` (output text) with `--pause-ms` between turns (turns start at
random points, not all at once), and we measure `response.create` → first `response.output_text.delta`. A step
passes when every session got `session.created` within 1 s and the turns' p99 stayed under 100 ms. Loopback
providers (`tests.fakes.openai_fake`) answer at once; fake, server and clients run as separate processes
(helpers from `bench/response_latency.py`).

    .venv/bin/python bench/session_capacity.py
    .venv/bin/python bench/session_capacity.py --idle 500,1000 --talking 50 --turns 10

Prints a Markdown table (and the server's RSS at each step), writes bench/results/session_capacity.json.
Targets: ≥ 500 idle sessions, ≥ 50 of them talking.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from response_latency import ROOT, CpuMeter, free_port, machine, percentile, rss_mb, start_fake, start_server
from websockets.asyncio.client import ClientConnection, connect

RESULTS_PATH = ROOT / "bench" / "results" / "session_capacity.json"
CREATED_LIMIT_S = 1.0
TURN_P99_LIMIT_MS = 100.0
ITEM = json.dumps(
    {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
    }
)
CREATE = json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}})


@dataclass
class Step:
    sessions: int
    talking: int
    created_p50_ms: float
    created_max_ms: float
    turns: int
    turn_p50_ms: float
    turn_p99_ms: float
    server_rss_mb: float
    server_cpu_cores: float
    passed: bool


async def open_session(url: str) -> tuple[ClientConnection, float]:
    started = time.perf_counter()
    ws = await connect(url, max_size=None, compression=None, open_timeout=30)
    while json.loads(await ws.recv())["type"] != "session.created":
        pass
    return ws, time.perf_counter() - started


async def talk(ws: ClientConnection, turns: int, pause_s: float) -> list[float]:
    """Turns with pauses of `pause_s` on average (0.5-1.5x), starting at a random point of the first pause: people
    don't all speak at the same instant, and a synchronised burst would measure queueing, not capacity."""
    latencies = []
    await asyncio.sleep(random.uniform(0, pause_s))
    for _ in range(turns):
        await ws.send(ITEM)
        while json.loads(await ws.recv())["type"] != "conversation.item.done":
            pass
        started = time.perf_counter()
        await ws.send(CREATE)
        first = None
        while True:
            kind = json.loads(await ws.recv())["type"]
            if kind == "response.output_text.delta" and first is None:
                first = time.perf_counter() - started
            if kind == "response.done":
                break
        latencies.append(first if first is not None else float("nan"))
        await asyncio.sleep(pause_s * random.uniform(0.5, 1.5))
    return latencies


async def run_step(
    port: int, server_pid: int, fake_pid: int, sessions: int, talking: int, turns: int, pause_s: float
) -> Step:
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    opened: list[tuple[ClientConnection, float]] = []
    meter: CpuMeter | None = None
    try:
        for start in range(0, sessions, 25):
            opened += await asyncio.gather(*(open_session(url) for _ in range(min(25, sessions - start))))
        waits = sorted(wait for _, wait in opened)
        await asyncio.sleep(1.0)  # idle for a moment, all open
        meter = CpuMeter(server_pid, fake_pid)
        results = await asyncio.gather(*(talk(ws, turns, pause_s) for ws, _ in opened[:talking]))
        cpu = meter.stop()
        latencies = sorted(value * 1000 for result in results for value in result)
        rss = rss_mb(server_pid)
    finally:
        await asyncio.gather(*(ws.close() for ws, _ in opened), return_exceptions=True)
    p99 = percentile(latencies, 0.99)
    passed = waits[-1] <= CREATED_LIMIT_S and p99 <= TURN_P99_LIMIT_MS
    return Step(
        sessions=sessions,
        talking=talking,
        created_p50_ms=round(percentile([w * 1000 for w in waits], 0.5), 1),
        created_max_ms=round(waits[-1] * 1000, 1),
        turns=len(latencies),
        turn_p50_ms=round(percentile(latencies, 0.5), 1),
        turn_p99_ms=round(p99, 1),
        server_rss_mb=round(rss, 1),
        server_cpu_cores=cpu.server or 0.0,
        passed=passed,
    )


def table(steps: list[Step]) -> str:
    lines = [
        "| open sessions | talking | session.created p50 / max ms | turns | first delta p50 / p99 ms "
        "| server RSS MB | server CPU | pass |",
        "|---:|---:|---|---:|---|---:|---:|---|",
    ]
    for step in steps:
        lines.append(
            f"| {step.sessions} | {step.talking} | {step.created_p50_ms} / {step.created_max_ms} | {step.turns} "
            f"| {step.turn_p50_ms} / {step.turn_p99_ms} | {step.server_rss_mb} | {step.server_cpu_cores} "
            f"| {'yes' if step.passed else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", default="250,500,750,1000", help="open sessions per step (comma-separated)")
    parser.add_argument("--talking", type=int, default=50, help="sessions that run turns in each step")
    parser.add_argument("--turns", type=int, default=10, help="turns per talking session")
    parser.add_argument("--pause-ms", type=float, default=1000.0, help="pause between a session's turns")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    steps_wanted = [int(value) for value in args.idle.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per session on each side
    workdir = Path(tempfile.mkdtemp(prefix="session-capacity-"))
    fake_port, port = free_port(), free_port()
    fake = start_fake(fake_port, workdir)
    server = None
    try:
        server = start_server(port, fake_port, workdir, extra_env={"MAX_SESSIONS": str(max(steps_wanted) + 10)})
        idle_rss = rss_mb(server.popen.pid)
        steps = []
        for sessions in steps_wanted:
            step = asyncio.run(
                run_step(
                    port,
                    server.popen.pid,
                    fake.popen.pid,
                    sessions,
                    min(args.talking, sessions),
                    args.turns,
                    args.pause_ms / 1000,
                )
            )
            steps.append(step)
            print(
                f"[{sessions} open, {step.talking} talking: created max {step.created_max_ms} ms, "
                f"turn p99 {step.turn_p99_ms} ms, RSS {step.server_rss_mb} MB]",
                flush=True,
            )
            time.sleep(2)
        best = max((step.sessions for step in steps if step.passed), default=0)
        print()
        print(table(steps))
        print()
        print(
            f"most open sessions passing (created <= 1 s, turn p99 <= 100 ms, {args.talking} talking): {best}; "
            f"server RSS idle {idle_rss:.1f} MB"
        )
        print(f"targets: >= 500 open, >= 50 talking: {'met' if best >= 500 and args.talking >= 50 else 'MISSED'}")
        print(f"machine: {machine()}")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {
            "benchmark": "session capacity: idle sessions, some talking",
            "machine": machine(),
            "pause_ms": args.pause_ms,
            "idle_rss_mb": idle_rss,
            "steps": [asdict(step) for step in steps],
            "best": best,
        }
        args.output.write_text(json.dumps(result, indent=2))
        return 0
    finally:
        if server is not None:
            server.stop()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
