"""Soak: an hour (by default) of mixed traffic on the offline default, watching the server for leaks.

Starts `main.py` as `make run` does (no provider settings). A few clients (`--clients`) open sessions one after
another with the official SDK; each session does one to three things at random — a text turn, a spoken turn (a
fixture's speech then silence, the server's VAD finds the turn), a reply the client leaves in the middle of (it
closes the socket), a few bad events (each must get an `error`) followed by a text turn — and closes. Every
`--sample-s` seconds it samples the server's RSS, open file descriptors and threads (from /proc) and its asyncio
tasks (from `/health`), with no session open at that moment (the clients pause for the sample).

It prints a table of the samples and the growth after the warm-up (`--warmup-min`): RSS per 1,000 sessions by a
least-squares line, and the range of the other counts. Target: under 1 MB per 1,000 sessions, the rest flat.
The samples go to bench/results/soak.json and, with matplotlib installed, a plot to bench/results/soak.png.

    .venv/bin/python bench/soak.py                      # 60 minutes
    .venv/bin/python bench/soak.py --minutes 20 --sample-s 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from response_latency import free_port, machine
from voice_to_voice import ROOT, cache_ready, start_offline_server

sys.path.insert(0, str(ROOT))
from tests.support.audio_fixtures import pcm24k, silence24k

RESULTS_PATH = ROOT / "bench" / "results" / "soak.json"
PLOT_PATH = ROOT / "bench" / "results" / "soak.png"
EVENT_TIMEOUT_S = 120.0
QUESTIONS = ("What is the capital of France?", "Name a colour.", "Say hello.", "Count to three.")
BAD_EVENTS = (
    '{"type": "no.such.event"}',
    "this is not JSON",
    '{"type": "session.update", "session": {"type": "realtime", "temperature": "hot"}}',
    '{"type": "conversation.item.delete", "item_id": "item_missing"}',
)


@dataclass
class Sample:
    minute: float
    sessions: int
    rss_mb: float
    fds: int
    threads: int
    tasks: int


@dataclass
class Traffic:
    sessions: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    errors_expected: int = 0
    errors_seen: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def count(self, action: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1


def proc_counts(pid: int) -> tuple[float, int, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    values = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in status}
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return round(int(values["VmRSS"][0]) / 1024, 1), fds, int(values["Threads"][0])


class Soak:
    def __init__(self, port: int, pid: int, clients: int, seed: int) -> None:
        self.port = port
        self.pid = pid
        self.clients = clients
        self.random = random.Random(seed)
        self.traffic = Traffic()
        self.samples: list[Sample] = []
        self.open_gate = asyncio.Event()
        self.open_gate.set()
        self.open_sessions = 0
        self.speech = [pcm24k(name) for name in ("hello.wav", "question.wav")]
        self.started = time.monotonic()

    # ---- traffic -------------------------------------------------------------------------------------------------

    async def run_client(self, deadline: float) -> None:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="dummy")
        while time.monotonic() < deadline:
            await self.open_gate.wait()
            self.open_sessions += 1
            try:
                async with client.realtime.connect(model="gpt-realtime") as conn:
                    await self.until(conn, "session.created")
                    self.traffic.sessions += 1
                    for _ in range(self.random.randint(1, 3)):
                        action = self.random.choice(("text", "text", "spoken", "leave", "bad"))
                        self.traffic.count(action)
                        if await getattr(self, f"do_{action}")(conn):
                            break  # the client left
            except Exception as exc:  # a soak keeps going; what failed is reported at the end
                self.traffic.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            finally:
                self.open_sessions -= 1

    async def until(self, conn: Any, event_type: str) -> list[Any]:
        seen = []
        while True:
            event = await asyncio.wait_for(conn.recv(), EVENT_TIMEOUT_S)
            seen.append(event)
            if event.type == "error":
                code = str(event.error.code)
                self.traffic.errors_seen[code] = self.traffic.errors_seen.get(code, 0) + 1
            if event.type == event_type:
                return seen

    async def ask(self, conn: Any) -> None:
        text = self.random.choice(QUESTIONS)
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        )
        await conn.response.create(response={"max_output_tokens": 40})

    async def do_text(self, conn: Any) -> bool:
        await self.ask(conn)
        await self.until(conn, "response.done")
        return False

    async def do_spoken(self, conn: Any) -> bool:
        audio = self.random.choice(self.speech) + silence24k(1500)
        for start in range(0, len(audio), 48_000):  # half-second appends, sent at once
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[start : start + 48_000]).decode())
        await self.until(conn, "response.done")
        return False

    async def do_leave(self, conn: Any) -> bool:
        await self.ask(conn)
        while (await asyncio.wait_for(conn.recv(), EVENT_TIMEOUT_S)).type not in (
            "response.output_audio.delta",
            "response.output_text.delta",
            "response.done",
        ):
            pass
        return True  # closing the connection now leaves the reply in the middle

    async def do_bad(self, conn: Any) -> bool:
        for raw in self.random.sample(BAD_EVENTS, 2):
            await conn.send_raw(raw)
            self.traffic.errors_expected += 1
            await self.until(conn, "error")
        return await self.do_text(conn)

    # ---- sampling ------------------------------------------------------------------------------------------------

    async def sample_every(self, interval_s: float, deadline: float) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                await self.take_sample(http)
                if time.monotonic() + interval_s > deadline:
                    return
                await asyncio.sleep(interval_s)

    async def take_sample(self, http: httpx.AsyncClient) -> None:
        self.open_gate.clear()  # no new session; wait for the open ones to end, then for the server to settle
        while self.open_sessions:
            await asyncio.sleep(0.1)
        health: dict[str, Any] = {}
        for _ in range(50):
            health = (await http.get(f"http://127.0.0.1:{self.port}/health")).json()
            if health["active_sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        health = (await http.get(f"http://127.0.0.1:{self.port}/health")).json()
        rss, fds, threads = proc_counts(self.pid)
        minute = (time.monotonic() - self.started) / 60
        sample = Sample(round(minute, 1), self.traffic.sessions, rss, fds, threads, health["asyncio_tasks"])
        self.samples.append(sample)
        print(
            f"  {sample.minute:6.1f} min  {sample.sessions:5d} sessions  RSS {rss:7.1f} MB  {fds} fds  "
            f"{threads} threads  {sample.tasks} tasks",
            flush=True,
        )
        self.open_gate.set()

    async def run(self, minutes: float, sample_s: float) -> None:
        deadline = time.monotonic() + minutes * 60
        clients = [asyncio.create_task(self.run_client(deadline)) for _ in range(self.clients)]
        await self.sample_every(sample_s, deadline)
        await asyncio.gather(*clients)
        if self.traffic.sessions != self.samples[-1].sessions:
            async with httpx.AsyncClient(timeout=10) as http:
                await self.take_sample(http)


def growth(samples: list[Sample], warmup_min: float) -> dict[str, Any]:
    """RSS per 1,000 sessions after the warm-up (least squares), and the other counts' ranges."""
    after = [sample for sample in samples if sample.minute >= warmup_min]
    if len(after) < 2 or after[-1].sessions == after[0].sessions:
        return {}
    xs = [sample.sessions for sample in after]
    ys = [sample.rss_mb for sample in after]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return {
        "from_minute": after[0].minute,
        "sessions": after[-1].sessions - after[0].sessions,
        "rss_mb_per_1000_sessions": round(slope * 1000, 2),
        "rss_mb": [min(ys), max(ys)],
        "fds": [min(s.fds for s in after), max(s.fds for s in after)],
        "threads": [min(s.threads for s in after), max(s.threads for s in after)],
        "tasks": [min(s.tasks for s in after), max(s.tasks for s in after)],
    }


def plot(samples: list[Sample], warmup_min: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (memory, counts) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    sessions = [sample.sessions for sample in samples]
    memory.plot(sessions, [sample.rss_mb for sample in samples], marker="o")
    memory.set_ylabel("server RSS (MB)")
    warm = next((sample.sessions for sample in samples if sample.minute >= warmup_min), None)
    if warm is not None:
        memory.axvline(warm, color="grey", linestyle="--", label=f"end of warm-up ({warmup_min:g} min)")
        memory.legend()
    for name in ("fds", "threads", "tasks"):
        counts.plot(sessions, [getattr(sample, name) for sample in samples], marker=".", label=name)
    counts.set_ylabel("count")
    counts.set_xlabel("sessions so far")
    counts.legend()
    figure.suptitle("Soak on the offline default")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--warmup-min", type=float, default=10.0, help="minutes left out of the growth figures")
    parser.add_argument("--clients", type=int, default=3, help="sessions open at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--plot", type=Path, default=PLOT_PATH)
    args = parser.parse_args(argv)
    if not cache_ready():
        print("note: the LLM's weights are joined on this first start (a minute or two)", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    port = free_port()
    server, startup_s = start_offline_server(port, workdir)
    try:
        soak = Soak(port, server.popen.pid, args.clients, args.seed)
        print(f"server ready in {startup_s:.1f} s; {args.minutes:g} min of traffic, {args.clients} clients")
        asyncio.run(soak.run(args.minutes, args.sample_s))
    finally:
        server.stop()
    summary = growth(soak.samples, args.warmup_min)
    traffic = soak.traffic
    print(
        f"\n{traffic.sessions} sessions; actions {traffic.actions}; errors by code {traffic.errors_seen} ("
        f"{traffic.errors_expected} expected); {len(traffic.failures)} client failures"
    )
    for failure in traffic.failures[:5]:
        print(f"  {failure}")
    print("\n| minute | sessions | RSS (MB) | fds | threads | asyncio tasks |\n|---|---|---|---|---|---|")
    for s in soak.samples:
        print(f"| {s.minute:g} | {s.sessions} | {s.rss_mb:g} | {s.fds} | {s.threads} | {s.tasks} |")
    if summary:
        print(
            f"\nafter minute {summary['from_minute']:g} ({summary['sessions']} sessions): RSS "
            f"{summary['rss_mb_per_1000_sessions']:+.2f} MB per 1,000 sessions (target < 1); fds {summary['fds']}, "
            f"threads {summary['threads']}, tasks {summary['tasks']}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine(),
        "args": {key: str(value) for key, value in vars(args).items()},
        "traffic": asdict(traffic),
        "samples": [asdict(sample) for sample in soak.samples],
        "growth": summary,
    }
    args.output.write_text(json.dumps(record, indent=1))
    if plot(soak.samples, args.warmup_min, args.plot):
        print(f"plot: {args.plot}")
    return 0 if not traffic.failures else 1


if __name__ == "__main__":
    sys.exit(main())
