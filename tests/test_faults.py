"""Clients that leave at every stage of a response, and many sessions coming and going: nothing outlives them."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time

import pytest
import websockets

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.fake_control import script
from tests.support.in_process import InProcessServer
from tests.support.realtime_client import connect


def rss_mb() -> float:
    """This process's resident memory now (the in-process server shares it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def settle(server: InProcessServer, baseline: int, timeout: float = 2.0) -> float:
    """Waits until no session is open and the task count is back at `baseline`; returns how long it took."""
    started = time.monotonic()
    while server.health()["active_sessions"] or server.task_count() > baseline:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"tasks {server.task_count()} > baseline {baseline}, {server.health()}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def baseline_of(server: InProcessServer) -> int:
    async with connect(server.base_url) as client:  # first use: imports, pools
        await client.until("conversation.created")
        await client.send({"type": "response.create"})
        await client.until("response.done")
    return await settled_task_count(server)


async def settled_task_count(server: InProcessServer, timeout: float = 5.0) -> int:
    """The task count once no session is open and it has stopped falling (the closed session's last tasks end)."""
    started = time.monotonic()
    last = -1
    while server.health()["active_sessions"] or (count := server.task_count()) != last:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the task count did not settle: {server.health()}")
        last = -1 if server.health()["active_sessions"] else count
        await asyncio.sleep(0.05)
    return count


STAGES = [
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.function_call_arguments.delta",
    "response.done",
]


@pytest.mark.parametrize("stage", STAGES)
async def test_leaving_at_every_stage_of_a_response(in_process: InProcessServer, fake: FakeOpenAI, stage: str) -> None:
    baseline = await baseline_of(in_process)
    if stage == "response.function_call_arguments.delta":
        steps = {
            "chat": [
                {
                    "text": "One moment.",
                    "tool_calls": [{"name": "f", "arguments": '{"a": 1}' * 20}],
                    "chunk_delay_s": 0.02,
                }
            ]
        }
        response = {"tools": [{"type": "function", "name": "f"}]}
    else:
        steps = {
            "chat": [{"text": "A reply. It has sentences. Several of them.", "chunk_delay_s": 0.02}],
            "speech": [{"stall_s": 0.05}] * 3,
        }
        response = {}
    async with connect(in_process.base_url) as client:
        await client.until("conversation.created")
        script(fake, client.session_id, **steps)
        await client.send({"type": "response.create", "response": response})
        await client.until(stage)
    assert await settle(in_process, baseline) < 1.0


async def test_many_sessions_come_and_go_without_leaking(in_process: InProcessServer, fake: FakeOpenAI) -> None:
    """500 connect/disconnect cycles, half of them in the middle of a response: the task count returns to its
    baseline and memory stays within 20 MB."""
    baseline = await baseline_of(in_process)
    url = in_process.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    create = json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}})

    async def cycle(index: int) -> None:
        async with websockets.connect(url) as ws:
            while json.loads(await ws.recv())["type"] != "conversation.created":
                pass
            if index % 2:
                await ws.send(create)
                while json.loads(await ws.recv())["type"] not in ("response.output_text.delta", "response.done"):
                    pass

    async def run(cycles: int, concurrency: int = 10) -> None:
        for start in range(0, cycles, concurrency):
            await asyncio.gather(*(cycle(index) for index in range(start, start + concurrency)))

    await run(100)  # warm: caches, pools, allocator arenas
    await settle(in_process, baseline, timeout=5)
    gc.collect()
    before = rss_mb()
    await run(500)
    await settle(in_process, baseline, timeout=5)
    gc.collect()
    growth = rss_mb() - before
    print(f"RSS growth over 500 sessions: {growth:.1f} MB")
    assert growth < 20, f"RSS grew by {growth:.1f} MB over 500 sessions"
