"""Response latency benchmark: time from `response.create` to the first `response.output_audio.delta`.

Runs three processes so that none shares an event loop with another:

* the loopback fake of OpenAI's HTTP API (`tests.fakes.openai_fake`), which answers at once;
* the server (`main.py`, started from an empty temporary directory so no `.env` is read), on the OpenAI LLM and
  TTS providers pointed at the fake;
* the clients (this process): official `openai` SDK Realtime connections.

For each concurrency level (`--sessions 1,50`) it opens all connections first, then every session runs its turns
back to back, concurrently with the others: `conversation.item.create` (a short user text message), wait for the
item, `response.create` (clock starts), first audio delta (clock stops), drain to `response.done`. The first
`--warmup` turns of each session are not counted.

    .venv/bin/python bench/response_latency.py                  # `make bench`
    .venv/bin/python bench/response_latency.py --sessions 1,10,50 --turns 20
    .venv/bin/python bench/response_latency.py --pause-ms 2000  # paced like users who listen before speaking

Prints a Markdown table, then where the CPU time went during each level (server, fake, clients, and other
processes: other work on the machine inflates the latencies, and the script warns when there was some), and writes
the same results to `bench/results/response_latency.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "bench" / "results" / "response_latency.json"
TARGET_P50_MS = 15.0
TARGET_P99_MS = 50.0
EVENT_TIMEOUT_S = 30.0
OTHER_CPU_WARNING = 0.15  # cores used by other processes during a run above which its numbers are suspect
USER_TEXT = "Hi."

ITEM_CREATE = json.dumps(
    {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": USER_TEXT}]},
    }
)
RESPONSE_CREATE = json.dumps({"type": "response.create"})


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    """A child process with its output going to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminates the process (SIGTERM, then SIGKILL after 10 s) and waits for it."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, args: list[str], cwd: Path, env: dict[str, str], workdir: Path) -> Process:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Process(name, popen, log_path)


def wait_until_ready(process: Process, url: str, check: str | None, timeout_s: float = 60.0) -> None:
    """Polls `url` until it answers 2xx (and its body contains `check`, when given); stops the process if it
    never does."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.log()}")
            try:
                response = httpx.get(url, timeout=2)
                if response.is_success and (check is None or check in response.text):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{process.name} did not become ready at {url}:\n{process.log()}")
    except BaseException:
        process.stop()
        raise


def start_fake(port: int, workdir: Path, root: Path = ROOT) -> Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fake = spawn("fake", [sys.executable, "-m", "tests.fakes.openai_fake", "--port", str(port)], root, env, workdir)
    # Any path answers once the server is up; `/_fake/requests` is the one that does not change the fake's state.
    wait_until_ready(fake, f"http://127.0.0.1:{port}/_fake/requests", None)
    return fake


def start_server(
    port: int, fake_port: int, workdir: Path, root: Path = ROOT, extra_env: dict[str, str] | None = None
) -> Process:
    prefixes = ("OPENAI_", "STT_", "LLM_", "TTS_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(
        {
            "SERVER_HOST": "127.0.0.1",
            "SERVER_PORT": str(port),
            "STT_PROVIDER": "openai_whisper",  # unused by text turns, but the server checks every provider at startup
            "LLM_PROVIDER": "openai",
            "TTS_PROVIDER": "openai_tts",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
            "OPENAI_API_KEY": "sk-bench",
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
    )
    server = spawn("server", [sys.executable, str(root / "main.py")], workdir, env, workdir)
    wait_until_ready(server, f"http://127.0.0.1:{port}/health", '"healthy"')
    return server


# --------------------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------------------


class Session:
    """One Realtime connection driven with the official SDK; events are read as raw JSON (cheaper than the SDK's
    models)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv_bytes(), EVENT_TIMEOUT_S)
        return json.loads(raw)

    async def until(self, event_type: str) -> dict[str, Any]:
        """Reads events up to the first of `event_type`; an `error` event fails the run."""
        while True:
            event = await self.recv()
            if event["type"] == event_type:
                return event
            if event["type"] == "error":
                raise RuntimeError(f"server error while waiting for {event_type}: {event}")

    async def turn(self) -> float:
        """One turn; returns the milliseconds from sending `response.create` to the first audio delta."""
        await self.connection.send_raw(ITEM_CREATE)
        await self.until("conversation.item.done")
        started = time.perf_counter()
        await self.connection.send_raw(RESPONSE_CREATE)
        response_id = None
        latency_ms = None
        while True:
            event = await self.recv()
            kind = event["type"]
            if kind == "response.created":
                response_id = event["response"]["id"]
            elif kind == "response.output_audio.delta":
                if latency_ms is None and event.get("response_id") == response_id:
                    latency_ms = (time.perf_counter() - started) * 1000
            elif kind == "response.done":
                response = event["response"]
                if response["status"] != "completed":
                    raise RuntimeError(f"response ended {response['status']}: {response.get('status_details')}")
                break
            elif kind == "error":
                raise RuntimeError(f"server error during a response: {event}")
        if latency_ms is None:
            raise RuntimeError("response.done without any audio delta")
        return latency_ms


async def open_session(client: AsyncOpenAI) -> tuple[Any, Session]:
    """Connects and waits for `session.created` and `conversation.created`; returns the SDK manager and session."""
    manager = client.realtime.connect(model="gpt-realtime")
    connection = await manager.__aenter__()
    session = Session(connection)
    created = await session.recv()
    if created["type"] != "session.created":
        raise RuntimeError(f"expected session.created, got {created}")
    await session.until("conversation.created")
    return manager, session


async def run_sessions(port: int, sessions: int, turns: int, warmup: int, pause_ms: float = 0.0) -> list[float]:
    """Opens `sessions` connections, then runs `warmup + turns` turns on each concurrently; returns the latencies
    of the counted turns. With `pause_ms`, each session waits a random 0.5–1.5 × `pause_ms` before every turn (a
    user listening to the reply, then speaking), which also spreads the sessions' turns apart."""
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="dummy")
    opened = await asyncio.gather(*(open_session(client) for _ in range(sessions)), return_exceptions=True)
    managers = [item[0] for item in opened if not isinstance(item, BaseException)]
    try:
        failures = [item for item in opened if isinstance(item, BaseException)]
        if failures:
            raise RuntimeError(f"{len(failures)} of {sessions} connections failed: {failures[0]!r}")

        rng = random.Random(sessions)

        async def paced_turn(session: Session) -> float:
            if pause_ms:
                await asyncio.sleep(pause_ms * rng.uniform(0.5, 1.5) / 1000)
            return await session.turn()

        async def drive(session: Session) -> list[float]:
            for _ in range(warmup):
                await paced_turn(session)
            return [await paced_turn(session) for _ in range(turns)]

        per_session = await asyncio.gather(*(drive(item[1]) for item in opened))  # type: ignore[index]
        return [latency for latencies in per_session for latency in latencies]
    finally:
        await asyncio.gather(*(manager.__aexit__(None, None, None) for manager in managers), return_exceptions=True)
        await client.close()


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    sessions: int
    turns: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(sessions: int, latencies: list[float]) -> Row:
    return Row(
        sessions=sessions,
        turns=len(latencies),
        p50_ms=round(percentile(latencies, 0.50), 2),
        p90_ms=round(percentile(latencies, 0.90), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        mean_ms=round(statistics.fmean(latencies), 2),
        max_ms=round(max(latencies), 2),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| sessions | turns | p50 ms | p90 ms | p99 ms | mean ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.sessions} | {row.turns} | {row.p50_ms:.1f} | {row.p90_ms:.1f} | {row.p99_ms:.1f} "
            f"| {row.mean_ms:.1f} | {row.max_ms:.1f} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_s() -> float | None:
    """CPU seconds all CPUs have spent busy since boot (Linux `/proc/stat`); None elsewhere."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """A process's resident memory, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a live process has used (Linux `/proc/<pid>/stat`); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class CpuUse:
    """Where the CPU time went while the sessions ran, as a share of one core."""

    wall_s: float
    server: float | None
    fake: float | None
    clients: float
    other: float | None  # everything else on the machine: other people's work inflates the latencies


class CpuMeter:
    """Measures the CPU time of the server, the fake, this process and the rest of the machine over a stretch."""

    def __init__(self, server_pid: int, fake_pid: int) -> None:
        self.pids = {"server": server_pid, "fake": fake_pid}
        self._start = self._sample()

    def _sample(self) -> dict[str, float | None]:
        sample: dict[str, float | None] = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        times = os.times()
        sample["clients"] = times.user + times.system
        sample["system"] = system_busy_s()
        sample["wall"] = time.perf_counter()
        return sample

    def stop(self) -> CpuUse:
        end = self._sample()

        def used(name: str) -> float | None:
            first, last = self._start[name], end[name]
            return None if first is None or last is None else last - first

        wall = used("wall") or 1e-9
        server, fake, clients, system = used("server"), used("fake"), used("clients") or 0.0, used("system")
        other = None
        if system is not None and server is not None and fake is not None:
            other = max(0.0, system - server - fake - clients)

        def share(value: float | None) -> float | None:
            return None if value is None else round(value / wall, 2)

        return CpuUse(round(wall, 2), share(server), share(fake), round(clients / wall, 2), share(other))


def target_met(rows: list[Row]) -> bool | None:
    """Whether the 50-session row meets the target; None without a 50-session row."""
    row = next((row for row in rows if row.sessions == 50), None)
    return None if row is None else row.p50_ms <= TARGET_P50_MS and row.p99_ms <= TARGET_P99_MS


def verdict(rows: list[Row]) -> str:
    met = target_met(rows)
    return "not measured" if met is None else ("met" if met else "MISSED")


def log_problems(log: str) -> list[str]:
    """Lines of the server log that report warnings, errors or tracebacks (but not the open-server warning: the
    benchmarks run without keys on purpose)."""
    pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
    return [line for line in log.splitlines() if pattern.search(line) and "REALTIME_API_KEYS is empty" not in line]


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sessions",
        type=lambda text: [int(part) for part in text.split(",") if part.strip()],
        default=[1, 50],
        help="comma-separated concurrency levels (default: 1,50)",
    )
    parser.add_argument(
        "--turns",
        type=int,
        default=None,
        help="counted turns per session (default: 20 for one session, 10 each for more)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="uncounted turns per session first (default: 2)")
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=0.0,
        help="think time before each turn, jittered 0.5-1.5x (default: 0, turns back to back)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--fake-port", type=int, default=0, help="fake provider port (default: a free one)")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="checkout to run the server and fake from (default: this one)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    return parser.parse_args(argv)


async def measure(
    port: int, pids: tuple[int, int], levels: list[int], turns: int | None, warmup: int, pause_ms: float = 0.0
) -> list[tuple[Row, CpuUse]]:
    """Runs each concurrency level in turn; returns its latencies and where the CPU time went meanwhile."""
    results = []
    for sessions in levels:
        count = turns if turns is not None else (20 if sessions == 1 else 10)
        meter = CpuMeter(*pids)
        latencies = await run_sessions(port, sessions, count, warmup, pause_ms)
        results.append((summarise(sessions, latencies), meter.stop()))
    return results


def cpu_line(sessions: int, cpu: CpuUse) -> str:
    def show(value: float | None) -> str:
        return "?" if value is None else f"{value:.2f}"

    return (
        f"{sessions} sessions: {cpu.wall_s:.1f} s; CPU in cores: server {show(cpu.server)}, fake {show(cpu.fake)}, "
        f"clients {show(cpu.clients)}, other processes {show(cpu.other)}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = args.port or free_port()
    fake_port = args.fake_port or free_port()
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))  # the server's cwd: no `.env` there
    processes: list[Process] = []
    try:
        root = args.root.resolve()
        processes.append(start_fake(fake_port, workdir, root))
        server = start_server(port, fake_port, workdir, root)
        processes.append(server)
        pids = (server.popen.pid, processes[0].popen.pid)
        measured = asyncio.run(measure(port, pids, args.sessions, args.turns, args.warmup, args.pause_ms))
        time.sleep(0.5)  # let the server finish closing the sessions before asking
        active = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json().get("active_sessions")
        problems = log_problems(server.log())
    except BaseException:
        for process in processes:
            tail = "\n".join(process.log().splitlines()[-30:])
            print(f"--- last lines of the {process.name} log ({process.log_path}):\n{tail}", file=sys.stderr)
        raise
    finally:
        for process in reversed(processes):
            process.stop()

    rows = [row for row, _ in measured]
    print(table(rows))
    print()
    for row, cpu in measured:
        print(cpu_line(row.sessions, cpu))
    print(f"machine: nproc={info['nproc']}, {info['implementation']} {info['python']}, {info['platform']}")
    busiest = max((cpu.other or 0.0 for _, cpu in measured), default=0.0)
    if busiest > OTHER_CPU_WARNING:
        print(f"warning: other processes used up to {busiest:.2f} cores during the run; the latencies may be inflated")
    print(f"target at 50 sessions: p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms: {verdict(rows)}")
    if active:
        print(f"warning: the server still reports {active} active sessions after all clients closed")
    if problems:
        print(f"warning: {len(problems)} warning/error lines in the server log ({server.log_path}), first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)  # kept, with the logs, only when they have something to show

    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "response.create -> first response.output_audio.delta",
        "machine": info,
        "target": {"sessions": 50, "p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS, "met": target_met(rows)},
        "warmup_turns_per_session": args.warmup,
        "pause_ms": args.pause_ms,
        "root": str(args.root.resolve()),
        "rows": [{**asdict(row), "cpu_cores": asdict(cpu)} for row, cpu in measured],
        "server_active_sessions_after": active,
        "server_log_problems": problems,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
