"""Long session: one conversation of many text turns on the offline default, past the local model's context.

Starts `main.py` as `make run` does (no provider settings), opens one GA session with the official SDK and holds a
conversation of `--turns` turns, each a user message of about 60 words and a short reply (`max_output_tokens`).
Once the conversation passes the model's context (LOCAL_LLM_CONTEXT, 4096 by default) the session's truncation
keeps each request inside it. It prints, for each stretch of the conversation, `response.create` → first text delta
(p50 / p99), the prompt tokens the model reported (all / of them cached), and the server's memory at the end: the
latency should stay flat however long the conversation grows.

    .venv/bin/python bench/long_session.py
    .venv/bin/python bench/long_session.py --turns 60 --truncation retention_ratio
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from response_latency import free_port, machine, percentile
from voice_to_voice import ROOT, cache_ready, memory_mb, start_offline_server

RESULTS_PATH = ROOT / "bench" / "results" / "long_session.json"
MESSAGE = (
    "Tell me about turn {n}: the harbour, the boats, the nets, the gulls, the tide, the wind, the rain, the sun, "
    "the fish market, the old lighthouse keeper, his dog, his garden, the bakery on the corner, the bread, the "
    "church bells, the school, the children, the bus to town, the long road over the hill and the farms beside it."
)
TRUNCATIONS: dict[str, Any] = {
    "auto": "auto",
    "retention_ratio": {"type": "retention_ratio", "retention_ratio": 0.7},
}


@dataclass
class TurnResult:
    turn: int
    first_delta_ms: float
    input_tokens: int
    cached_tokens: int
    status: str


async def converse(port: int, turns: int, truncation: Any, max_output_tokens: int) -> list[TurnResult]:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench")
    results = []
    async with client.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "instructions": "Answer in one short sentence.",
                "truncation": truncation,
            }
        )
        for n in range(turns):
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": MESSAGE.format(n=n)}]}
            await connection.conversation.item.create(item=item)
            await connection.response.create(response={"max_output_tokens": max_output_tokens})
            sent = time.perf_counter()
            first: float | None = None
            async for event in connection:
                if event.type == "response.output_text.delta" and first is None:
                    first = (time.perf_counter() - sent) * 1000
                elif event.type == "error":
                    raise RuntimeError(f"turn {n}: {event.error}")
                elif event.type == "response.done":
                    usage = event.response.usage
                    details = usage.input_token_details if usage else None
                    results.append(
                        TurnResult(
                            n + 1,
                            first if first is not None else float("nan"),
                            usage.input_tokens if usage and usage.input_tokens else 0,
                            details.cached_tokens if details and details.cached_tokens else 0,
                            str(event.response.status),
                        )
                    )
                    break
    return results


def stretches(results: list[TurnResult], size: int) -> str:
    lines = [
        "| turns | first text delta p50 ms | p99 ms | prompt tokens (mean) | of them cached (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for start in range(0, len(results), size):
        chunk = results[start : start + size]
        delays = [result.first_delta_ms for result in chunk]
        lines.append(
            f"| {chunk[0].turn}–{chunk[-1].turn} | {percentile(delays, 0.5):.0f} | {percentile(delays, 0.99):.0f} "
            f"| {statistics.mean(r.input_tokens for r in chunk):.0f} "
            f"| {statistics.mean(r.cached_tokens for r in chunk):.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="turns of the conversation (default: 200)")
    parser.add_argument("--truncation", choices=sorted(TRUNCATIONS), default="auto", help="the session's truncation")
    parser.add_argument("--max-output-tokens", type=int, default=24, help="each reply's limit (default: 24)")
    parser.add_argument("--stretch", type=int, default=50, help="turns per row of the table (default: 50)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not cache_ready():
        print("warning: the LLM's joined file is not cached yet: the first start joins it first", file=sys.stderr)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="long-session-"))
    server, ready_s = start_offline_server(port, workdir)
    try:
        started = time.perf_counter()
        results = asyncio.run(converse(port, args.turns, TRUNCATIONS[args.truncation], args.max_output_tokens))
        elapsed = time.perf_counter() - started
        memory = memory_mb(server.popen.pid)
        truncations = server.log().count("context truncated")
    finally:
        server.stop()
    print(stretches(results, args.stretch))
    statuses = {status: sum(r.status == status for r in results) for status in {r.status for r in results}}
    print(
        f"{len(results)} turns in {elapsed:.0f} s, truncation {args.truncation}: {truncations} truncation(s) logged; "
        f"statuses {statuses}; server RSS at the end {memory.get('VmRSS')} MB (peak {memory.get('VmHWM')} MB); "
        f"ready in {ready_s:.1f} s"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "args": vars(args) | {"output": str(args.output)}, "memory": memory}
    args.output.write_text(json.dumps({**record, "turns": [asdict(r) for r in results]}, indent=2))
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
