"""Where the memory of session churn goes: Python allocations and live objects between rounds of sessions.

Runs the server in this process (the loopback fake of the providers in a process of its own, so its request log
does not count) under `tracemalloc`, and opens `--rounds` rounds of `--sessions` sessions, half of which leave in
the middle of a reply. After each round (and a `gc.collect()`) it records the process's RSS, the bytes `tracemalloc`
sees, and the live objects by type; it prints how each grew per round after the first (the warm-up), and the source
lines whose allocations grew most between the second round and the last. Python-level growth that keeps going is a
leak; RSS growth that Python does not see is the allocator (or a native library) keeping pages.

    .venv/bin/python bench/churn_memory.py --rounds 6 --sessions 100
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from response_latency import ROOT, free_port, start_fake
from voice_to_voice import memory_mb

sys.path.insert(0, str(ROOT))
from openai import AsyncOpenAI

import local_models
from config import Settings
from tests.support.in_process import InProcessServer

TEXT = "Tell me a short story about a lighthouse."


def object_counts() -> Counter[str]:
    return Counter(type(obj).__qualname__ for obj in gc.get_objects())


async def one_session(client: AsyncOpenAI, leave: bool) -> None:
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": TEXT}]}
        )
        await conn.response.create(response={"max_output_tokens": 30})
        async for event in conn:
            if leave and event.type in ("response.output_audio.delta", "response.output_text.delta"):
                return
            if event.type == "response.done":
                return


async def run_round(port: int, sessions: int, concurrency: int = 5) -> None:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="dummy")
    gate = asyncio.Semaphore(concurrency)

    async def bounded(index: int) -> None:
        async with gate:
            await one_session(client, leave=index % 2 == 1)

    await asyncio.gather(*(bounded(index) for index in range(sessions)))
    await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=100, help="sessions per round")
    parser.add_argument("--offline", action="store_true", help="the offline default's models instead of the fake")
    parser.add_argument(
        "--llm-prompt-cache-mib",
        type=int,
        help="with --offline: llama.cpp's host-RAM prompt cache in MiB (the server's: 256), to see its share",
    )
    parser.add_argument(
        "--no-trace", action="store_true", help="without tracemalloc (its own tables make RSS grow): RSS alone"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "churn_memory.json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="churn-"))
    fake_port = free_port()
    fake = None if args.offline else start_fake(fake_port, workdir)
    providers = (
        {}
        if args.offline
        else {
            "openai_base_url": f"http://127.0.0.1:{fake_port}/v1",
            "openai_api_key": "sk-churn",
            "stt_provider": "openai_whisper",
            "llm_provider": "openai",
            "tts_provider": "openai_tts",
        }
    )
    settings = Settings(_env_file=None, server_port=free_port(), log_level="WARNING", **providers)
    if args.llm_prompt_cache_mib is not None:
        load = local_models.LocalLLM.load
        local_models.LocalLLM.load = functools.partial(load, cache_ram_mib=args.llm_prompt_cache_mib)  # type: ignore
    if not args.no_trace:
        tracemalloc.start(12)
    rows = []
    trimmed = None
    snapshots: list[tracemalloc.Snapshot] = []  # after the first round and the last: each holds every trace
    try:
        with InProcessServer(settings, startup_timeout_s=300) as server:
            for round_number in range(args.rounds + 1):
                if round_number:
                    asyncio.run(run_round(server.port, args.sessions))
                while server.health()["active_sessions"]:
                    time.sleep(0.1)
                gc.collect()
                traced, _peak = tracemalloc.get_traced_memory()
                counts = object_counts()
                rows.append(
                    {
                        "round": round_number,
                        "sessions": round_number * args.sessions,
                        "rss_mb": memory_mb(os.getpid())["VmRSS"],
                        "python_mb": round(traced / 2**20, 2),
                        "objects": sum(counts.values()),
                        "tasks": server.task_count(),
                        "counts": counts,
                    }
                )
                if tracemalloc.is_tracing() and round_number in (1, args.rounds):
                    snapshots.append(tracemalloc.take_snapshot())
                row = rows[-1]
                print(
                    f"round {round_number}: {row['sessions']:5d} sessions  RSS {row['rss_mb']:7.1f} MB  "
                    f"Python {row['python_mb']:6.2f} MB  {row['objects']} objects  {row['tasks']} tasks",
                    flush=True,
                )
            trimmed = malloc_trim_rss()
    finally:
        if fake is not None:
            fake.stop()
    report(rows, snapshots, args.sessions)
    if trimmed is not None:
        print(f"\nRSS after malloc_trim(0), sessions closed: {trimmed:.1f} MB (was {rows[-1]['rss_mb']:.1f})")
    for row in rows:
        row["counts"] = dict(row["counts"].most_common(40))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"args": vars(args) | {"output": str(args.output)}, "rounds": rows}, indent=1))
    return 0


def malloc_trim_rss() -> float | None:
    """Hands the allocator's free pages back to the system (glibc) and returns the RSS then: what is left is in use."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc_trim(0)
    return memory_mb(os.getpid())["VmRSS"]


def report(rows: list[dict], snapshots: list[tracemalloc.Snapshot], per_round: int) -> None:
    if len(rows) < 3:
        return
    first, last = rows[1], rows[-1]
    rounds = last["round"] - first["round"]
    per_1000 = 1000 / (per_round * rounds)
    print("\nafter the first round, per 1,000 sessions:")
    print(f"  RSS     {(last['rss_mb'] - first['rss_mb']) * per_1000:+8.2f} MB")
    print(f"  Python  {(last['python_mb'] - first['python_mb']) * per_1000:+8.2f} MB (tracemalloc)")
    print(f"  objects {(last['objects'] - first['objects']) * per_1000:+8.0f}")
    grown = (last["counts"] - first["counts"]).most_common(8)
    print("  object types that grew:", ", ".join(f"{name} +{count}" for name, count in grown) or "none")
    if len(snapshots) < 2:
        return
    print("\nallocations that grew most (after the first round → the last):")
    for stat in snapshots[-1].compare_to(snapshots[0], "lineno")[:8]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+6d} blocks  {stat.traceback[0]}")


if __name__ == "__main__":
    sys.exit(main())
