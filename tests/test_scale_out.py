"""Several workers and several replicas: client secrets any of them accepts, one session limit for the whole server,
its count in `/health`, and `/metrics` adding up every worker. Servers are started as users start them
(`python main.py` with WORKERS=2), clients are the official SDK."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import websockets
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import chunks, pcm24k, silence24k
from tests.support.realtime_client import connect
from tests.support.servers import RunningServer, provider_env, start_server

KEY = "sk-scale-out-test-key"
SHARED_SECRET_KEY = "replicas-share-this-signing-key-0123"


def wait_for_workers(server: RunningServer, workers: int, timeout_s: float = 90) -> None:
    """Until every worker is ready: `/health` answers healthy, counting `workers`, several times in a row (each
    request may land on another worker)."""
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while in_a_row < 8:
        assert time.monotonic() < deadline, server.log()
        assert server.process.poll() is None, server.log()
        try:
            response = httpx.get(f"{server.base_url}/health", timeout=5)
            body = response.json()
            good = response.status_code == 200 and body["workers"] == workers
        except httpx.HTTPError:
            good = False
        in_a_row = in_a_row + 1 if good else 0
        time.sleep(0.05 if good else 0.3)


def start_workers(env: dict[str, str], workers: int = 2) -> RunningServer:
    server = start_server({"WORKERS": str(workers), **env}, wait=False)
    wait_for_workers(server, workers)
    return server


@pytest.fixture(scope="module")
def two_workers(fake_openai: FakeOpenAI) -> Iterator[RunningServer]:
    env = {
        **provider_env(fake_openai),
        "REALTIME_API_KEYS": KEY,
        "REALTIME_SECRET_KEY": SHARED_SECRET_KEY,
        "MAX_SESSIONS": "3",
        "METRICS": "true",
    }
    running = start_workers(env)
    yield running
    running.stop()


def ws_url(server: RunningServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


async def refusal(server: RunningServer, key: str) -> tuple[int, dict]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {key}"}):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body)


async def mint(server: RunningServer, instructions: str) -> str:
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=KEY)
    secret = await client.realtime.client_secrets.create(session={"type": "realtime", "instructions": instructions})
    assert secret.value.startswith("ek_") and secret.session.instructions == instructions
    return secret.value


async def use(server: RunningServer, secret: str) -> str:
    """Opens a session with `secret`; the instructions it started with."""
    async with connect(server.base_url, api_key=secret) as session:
        created = await session.expect("session.created")
        return created["session"]["instructions"]


async def until_no_sessions(server: RunningServer) -> None:
    """A client's close returns before the server has ended the session: its place comes back a moment later."""
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.base_url}/health").json()["active_sessions"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert httpx.get(f"{server.base_url}/health").json()["active_sessions"] == 0


def worker_pids(log: str) -> set[str]:
    return set(re.findall(r"Session \S+ opened \(.*pid (\d+)\)", log))


async def use_everywhere(server: RunningServer, secrets: list[str], expected: list[str], times: int = 2) -> None:
    """Uses every secret `times` times, three sessions at a time (MAX_SESSIONS), and again (up to five rounds) until
    both workers have served some: which worker takes a connection is the kernel's choice, and it may favour one."""
    for _round in range(5):
        for _ in range(times):
            for start in range(0, len(secrets), 3):
                batch = secrets[start : start + 3]
                assert await asyncio.gather(*(use(server, s) for s in batch)) == expected[start : start + 3]
                await until_no_sessions(server)
        if len(worker_pids(server.log())) == 2:
            return
    raise AssertionError(f"one worker served every session in five rounds:\n{server.log()}")


async def test_secrets_minted_by_any_worker_work_on_every_worker(two_workers: RunningServer) -> None:
    secrets = await asyncio.gather(*(mint(two_workers, f"Secret number {n}.") for n in range(20)))
    # Both workers minted and both served, every use accepted: each took the other's secrets.
    await use_everywhere(two_workers, secrets, [f"Secret number {n}." for n in range(20)])


async def test_replicas_with_one_key_accept_each_others_secrets_and_refuse_tampered_ones(
    two_workers: RunningServer, fake: FakeOpenAI
) -> None:
    env = {**provider_env(fake), "REALTIME_API_KEYS": KEY, "REALTIME_SECRET_KEY": SHARED_SECRET_KEY}
    replica = start_server(env)
    try:
        assert await use(replica, await mint(two_workers, "From the first replica.")) == "From the first replica."
        assert await use(two_workers, await mint(replica, "From the second replica.")) == "From the second replica."
        secret = await mint(two_workers, "Tamper with me.")
        payload, mac = secret.removeprefix("ek_").split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        for tampered in (f"ek_{flipped}.{mac}", f"ek_{payload}.{mac[::-1]}", f"ek_{payload}", "ek_", secret + "x"):
            status, body = await refusal(replica, tampered)
            assert status == 401 and body["error"]["code"] == "invalid_api_key", body
            assert body["error"]["type"] == "invalid_request_error" and "expired" in body["error"]["message"]
    finally:
        replica.stop()


async def test_without_a_shared_key_secrets_work_across_workers_but_not_elsewhere(
    two_workers: RunningServer, fake: FakeOpenAI
) -> None:
    own_key = start_workers({**provider_env(fake), "REALTIME_API_KEYS": KEY})
    try:
        assert "REALTIME_SECRET_KEY is not set" in own_key.log()
        secrets = await asyncio.gather(*(mint(own_key, f"Boot key {n}.") for n in range(10)))
        await use_everywhere(own_key, secrets, [f"Boot key {n}." for n in range(10)])
        status, body = await refusal(two_workers, secrets[0])  # signed with another key: foreign
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    finally:
        own_key.stop()


async def test_max_sessions_is_the_whole_servers_whichever_worker_answers(two_workers: RunningServer) -> None:
    async with (
        connect(two_workers.base_url, api_key=KEY) as a,
        connect(two_workers.base_url, api_key=KEY) as b,
        connect(two_workers.base_url, api_key=KEY) as c,
    ):
        for client in (a, b, c):
            await client.until("conversation.created")
        for _ in range(8):  # several requests, answered by either worker
            assert httpx.get(f"{two_workers.base_url}/health").json()["active_sessions"] == 3
        for _ in range(6):
            status, body = await refusal(two_workers, KEY)
            assert status == 503 and body["error"]["code"] == "too_many_sessions"
            assert body["error"]["type"] == "server_error"
        await a.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert (await a.until("response.done"))[-1]["response"]["status"] == "completed"
    await until_no_sessions(two_workers)


async def test_concurrent_handshakes_never_pass_the_limit(two_workers: RunningServer) -> None:
    """Twelve clients at once for three places: exactly three get in, however the workers interleave."""
    opened: list[websockets.ClientConnection] = []

    async def attempt() -> int:
        try:
            ws = await websockets.connect(ws_url(two_workers), additional_headers={"Authorization": f"Bearer {KEY}"})
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        opened.append(ws)
        return 101

    await until_no_sessions(two_workers)
    statuses = await asyncio.gather(*(attempt() for _ in range(12)))
    try:
        assert sorted(statuses).count(101) == 3 and statuses.count(503) == 9, statuses
        assert httpx.get(f"{two_workers.base_url}/health").json()["active_sessions"] == 3
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_a_worker_killed_with_sessions_open_gives_its_places_back(two_workers: RunningServer) -> None:
    await until_no_sessions(two_workers)
    async with connect(two_workers.base_url, api_key=KEY) as a, connect(two_workers.base_url, api_key=KEY) as b:
        await a.until("conversation.created")
        await b.until("conversation.created")
        pids = [int(pid) for pid in re.findall(r"Session \S+ opened \(.*pid (\d+)\)", two_workers.log())[-2:]]
        assert httpx.get(f"{two_workers.base_url}/health").json()["active_sessions"] == 2
        victim = pids[-1]
        assert victim in children(two_workers.process.pid)
        os.kill(victim, signal.SIGKILL)  # no chance to clean up: the kernel drops its lock
        deadline = time.monotonic() + 60
        expected = pids.count(pids[0]) if pids[0] != victim else 0
        while time.monotonic() < deadline:
            health = httpx.get(f"{two_workers.base_url}/health").json()
            if health["active_sessions"] == expected:
                break
            await asyncio.sleep(0.2)
        assert health["active_sessions"] == expected, health
    wait_for_workers(two_workers, 2)  # uvicorn started another worker
    assert httpx.get(f"{two_workers.base_url}/health").json()["active_sessions"] == 0


def scrape(server: RunningServer) -> dict[str, float]:
    response = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if sample.name.endswith("_bucket"):
                continue
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_metrics_add_up_every_worker_and_move_with_a_text_and_a_spoken_turn(two_workers: RunningServer) -> None:
    assert httpx.get(f"{two_workers.base_url}/metrics").status_code == 401
    wrong = httpx.get(f"{two_workers.base_url}/metrics", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    before = scrape(two_workers)
    async with connect(two_workers.base_url, api_key=KEY) as session:
        await session.until("conversation.created")
        during = scrape(two_workers)
        assert during["realtime_open_sessions{}"] == 1
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}
        await session.send({"type": "conversation.item.create", "item": item})
        await session.send({"type": "response.create"})
        assert (await session.until("response.done"))[-1]["response"]["status"] == "completed"
        await session.send({"type": "response.create", "response": {"output_modalities": ["bogus"]}})
        await session.until("error")
        for chunk in chunks(pcm24k("question.wav") + silence24k(700), 40, 48):
            await session.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
        events = await session.until("response.done", timeout=20)
        assert "input_audio_buffer.speech_stopped" in [event["type"] for event in events]
    after = scrape(two_workers)

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert moved("realtime_turns_total{input=text}") == 1
    assert moved("realtime_turns_total{input=audio}") == 1
    assert moved("realtime_responses_total{status=completed}") == 2, {k: v for k, v in after.items() if "respon" in k}
    assert moved("realtime_errors_total{code=invalid_value}") == 1
    assert moved("realtime_response_first_delta_seconds_count{}") == 2
    assert moved("realtime_speech_stopped_to_first_audio_seconds_count{}") == 1
    assert moved("realtime_vad_lag_seconds_count{}") > 50  # one per appended chunk
    assert moved("realtime_sessions_total{}") == 1
    deadline = time.monotonic() + 10
    while scrape(two_workers)["realtime_open_sessions{}"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert scrape(two_workers)["realtime_open_sessions{}"] == 0


def test_metrics_are_off_unless_asked_for(server: RunningServer) -> None:
    assert httpx.get(f"{server.base_url}/metrics").status_code == 404


async def test_a_configuration_too_large_for_a_secret_is_refused_with_400(two_workers: RunningServer) -> None:
    client = AsyncOpenAI(base_url=f"{two_workers.base_url}/v1", api_key=KEY)
    noise = base64.b64encode(os.urandom(6000)).decode()  # does not deflate
    with pytest.raises(openai.BadRequestError) as caught:
        await client.realtime.client_secrets.create(session={"type": "realtime", "instructions": noise})
    assert caught.value.body["param"] == "session" and "session.update" in caught.value.body["message"]
    long_but_plain = "Answer like a pirate. " * 400  # 8.8 kB of instructions deflate into a short secret
    secret = await client.realtime.client_secrets.create(session={"type": "realtime", "instructions": long_but_plain})
    assert len(secret.value) < 1000
    assert await use(two_workers, secret.value) == long_but_plain


async def test_uvicorn_workers_share_the_same_limit_secrets_and_metrics(fake: FakeOpenAI) -> None:
    """`uvicorn main:app --workers 2` runs none of our code in its supervisor: the workers find each other alone."""
    from tests.test_launchers import start_uvicorn

    env = {**provider_env(fake), "REALTIME_API_KEYS": KEY, "MAX_SESSIONS": "1", "METRICS": "true"}
    server = start_uvicorn(env, "--workers", "2", wait=False)
    try:
        wait_for_workers(server, 2)
        secrets = await asyncio.gather(*(mint(server, f"Under uvicorn {n}.") for n in range(4)))
        for secret, n in zip(secrets * 2, list(range(4)) * 2, strict=True):
            assert await use(server, secret) == f"Under uvicorn {n}."
            await until_no_sessions(server)
        async with connect(server.base_url, api_key=KEY) as session:
            await session.until("conversation.created")
            for _ in range(6):
                status, body = await refusal(server, KEY)
                assert status == 503 and body["error"]["code"] == "too_many_sessions"
                assert scrape(server)["realtime_open_sessions{}"] == 1
        assert "WORKERS=" not in server.log()  # WORKERS is unset: nothing to warn about
    finally:
        server.stop()


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for parent in pids:
        with contextlib.suppress(OSError):
            pids += children(parent)
    return pids


def memory_mib(pid: int) -> dict[str, float]:
    """RSS and PSS (shared pages split between the processes that map them) of a process tree, and each process's."""
    totals = {"rss": 0.0, "pss": 0.0}
    for member in process_tree(pid):
        rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        rss = float(re.search(r"^Rss:\s+(\d+)", rollup, re.M)[1]) / 1024
        pss = float(re.search(r"^Pss:\s+(\d+)", rollup, re.M)[1]) / 1024
        command = Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ").decode()[-60:]
        totals["rss"] += rss
        totals["pss"] += pss
        totals[f"{member} {command}"] = rss
    return totals


async def offline_memory(workers: int) -> dict[str, float]:
    """The offline default (`make run`, no provider settings), after one text turn on each worker's models."""
    from local_models import default_cache_dir

    env = {"WORKERS": str(workers), "LLM_TEMPERATURE": "0", "REALTIME_CACHE_DIR": str(default_cache_dir())}
    server = start_server(env, wait=False)
    try:
        wait_for_workers(server, workers, timeout_s=300)
        async with connect(server.base_url) as session:
            await session.until("conversation.created")
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
            await session.send({"type": "conversation.item.create", "item": item})
            await session.send({"type": "response.create", "response": {"max_output_tokens": 20}})
            assert (await session.until("response.done", timeout=120))[-1]["response"]["status"] == "completed"
        memory = memory_mib(server.process.pid)
        if workers > 1:
            assert server.log().count("Model server: the local LLM at http://127.0.0.1:") == 1
            assert "LLM Qwen" not in server.log().split("Model server:")[1]  # no worker loaded one of its own
        return memory
    finally:
        server.stop()


async def test_two_workers_hold_one_copy_of_the_local_llm() -> None:
    one = await offline_memory(1)
    two = await offline_memory(2)
    print(f"\nWORKERS=1: {one}\nWORKERS=2: {two}")
    # RSS, not PSS: PSS splits shared pages with every other process mapping them (other servers on the machine).
    assert two["rss"] < 1.75 * one["rss"], (one, two)


async def test_a_stopping_server_is_not_ready(fake: FakeOpenAI) -> None:
    """What takes a stopping replica out of a load balancer's rotation (readiness on /health)."""
    from main import RealtimeServer
    from tests.support.in_process import in_process_settings

    server = RealtimeServer(in_process_settings(fake))
    server.ready = True
    assert (await server.health()).status_code == 200
    await server.shut_down_sessions()
    response = await server.health()
    assert response.status_code == 503 and json.loads(response.body)["status"] == "shutting_down"
