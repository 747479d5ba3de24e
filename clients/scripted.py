"""Scripted client for a Realtime API server: an automatic end-to-end check, or an interactive session (`-i`).

    python test_client.py                           # automatic check of ws://localhost:8000/v1/realtime
    python test_client.py --dialect beta --wav my_question.wav --out reply.wav
    python test_client.py -i                        # type a line, hear (or save) the reply; /wav FILE, /quit

Automatic mode connects with the official `openai` SDK and runs four checks, printing each server event as it
arrives: the session opens; a text turn; a spoken turn (a WAV streamed at real-time pace, the server's VAD ends the
turn); a cancel (`response.cancel` right after `response.create` must end the response `cancelled`). Then it prints a
pass/fail summary with latencies and saves the replies' audio as a WAV. The exit status is 0 only if every check
passed, 1 if one failed, 2 if the server could not be reached (or an argument is wrong).

Settings come from flags or the environment: REALTIME_URL, REALTIME_MODEL, REALTIME_API_KEY; USE_LOCAL_SERVER=false
or --openai use OpenAI's own API with OPENAI_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from audio_utils import WIRE_PCM_RATE, decode_base64, encode_base64, pcm16_to_wav, resample
from clients.command_line import add_openai_argument, add_server_arguments, resolve_server
from clients.connection import TRANSCRIPTION_MODEL, CannotConnect, close_quietly, open_connection
from clients.playback import AudioPlayer, AudioUnavailable, open_sounddevice_player

PROG = "test_client"  # the launcher's name, which starts the messages on stderr
DEFAULT_WAV = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "question.wav"
CHUNK_MS = 20
BYTES_PER_MS = WIRE_PCM_RATE * 2 // 1000
TRAILING_SILENCE_MS = 1200  # after the recording: the VAD needs its silence window (500 ms by default) to end the turn
RESPONSE_TIMEOUT_S = 60.0

# Event names that differ between the dialects.
NAMES = {
    "ga": {
        "audio_delta": "response.output_audio.delta",
        "transcript_delta": "response.output_audio_transcript.delta",
        "text_delta": "response.output_text.delta",
    },
    "beta": {
        "audio_delta": "response.audio.delta",
        "transcript_delta": "response.audio_transcript.delta",
        "text_delta": "response.text.delta",
    },
}


class CheckFailed(Exception):
    """A check's expectation was not met; the message says which."""


# ---- events ----------------------------------------------------------------------------------------------------------


@dataclass
class Received:
    event: dict[str, Any]
    at: float  # loop time of arrival
    index: int  # position in the log

    @property
    def type(self) -> str:
        return self.event.get("type", "")


class EventLog:
    """Reads server events in the background, keeps them with their arrival times, and lets checks wait for one.

    Waiting by predicate over the whole log (from a given index) rather than consuming a queue means no event is
    lost to the wrong waiter, and each check can read back everything that happened during it."""

    def __init__(self, connection: Any, echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.connection = connection
        self.events: list[Received] = []
        self.closed: BaseException | None = None
        self._echo = echo
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                event = json.loads(await self.connection.recv_bytes())
                self.events.append(Received(event, loop.time(), len(self.events)))
                if self._echo is not None:
                    self._echo(event)
                self._changed.set()
        except (ConnectionClosed, OSError) as exc:
            self.closed = exc
            self._changed.set()

    def mark(self) -> int:
        """The index the next event will have."""
        return len(self.events)

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, start: int = 0) -> Received:
        """The first event at index ≥ `start` that matches; TimeoutError after `timeout` s, CheckFailed if the
        socket closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = start
        while True:
            while index < len(self.events):
                received = self.events[index]
                index += 1
                if predicate(received.event):
                    return received
            if self.closed is not None:
                raise CheckFailed(f"the server closed the connection ({self.closed})")
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise TimeoutError from None

    async def wait_type(self, event_type: str, timeout: float, start: int = 0) -> Received:
        """The first event of `event_type` at index ≥ `start`, or CheckFailed."""
        try:
            return await self.wait(lambda event: event.get("type") == event_type, timeout, start)
        except TimeoutError:
            raise CheckFailed(f"no {event_type} within {timeout:.0f} s") from None

    async def wait_done(self, response_id: str, timeout: float, start: int = 0) -> Received:
        """The response.done of `response_id`, or CheckFailed."""

        def matches(event: dict[str, Any]) -> bool:
            return event.get("type") == "response.done" and event.get("response", {}).get("id") == response_id

        try:
            return await self.wait(matches, timeout, start)
        except TimeoutError:
            raise CheckFailed(f"no response.done for {response_id} within {timeout:.0f} s") from None

    def since(self, start: int) -> list[Received]:
        return self.events[start:]


class EventPrinter:
    """Prints each server event type as it arrives; a run of the same delta is one line plus a count at its end."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._run_type = ""
        self._run_count = 0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "?")
        if kind == self._run_type and kind.endswith(".delta"):
            self._run_count += 1
            return
        self.flush()
        detail = ""
        if kind == "error":
            detail = f"  {event.get('error', {}).get('code')}: {event.get('error', {}).get('message')}"
        elif kind == "response.done":
            detail = f"  status={event.get('response', {}).get('status')}"
        print(f"  {time.monotonic() - self.t0:7.3f}s  ← {kind}{detail}", flush=True)
        self._run_type, self._run_count = kind, 1

    def flush(self) -> None:
        if self._run_count > 1:
            print(f"  {'':7s}   ← … {self._run_count - 1} more {self._run_type}", flush=True)
        self._run_type, self._run_count = "", 0


# ---- audio -----------------------------------------------------------------------------------------------------------


class WavError(ValueError):
    """A recording that cannot be used; the message names the file and why."""


def load_wav(path: Path) -> bytes:
    """A WAV file as PCM16 mono 24 kHz (mixed down and resampled as needed)."""
    try:
        with wave.open(str(path)) as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise WavError(f"cannot read {path}: {exc}") from None
    if width != 2:
        raise WavError(f"{path}: only 16-bit PCM WAV files are supported (this one has {8 * width}-bit samples)")
    samples = np.frombuffer(frames, dtype=np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(samples.tobytes(), rate, WIRE_PCM_RATE)


async def stream_audio(connection: Any, pcm: bytes, realtime: bool = True, chunk_ms: int = CHUNK_MS) -> None:
    """Appends the audio in `chunk_ms` pieces, paced like a microphone when `realtime` (the server's VAD works on
    the audio clock either way, but a real-time stream is what a live client sends)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    size = chunk_ms * BYTES_PER_MS
    for index, offset in enumerate(range(0, len(pcm), size)):
        if realtime:
            delay = start + index * chunk_ms / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await connection.send(
            {"type": "input_audio_buffer.append", "audio": encode_base64(pcm[offset : offset + size])}
        )


def silence(ms: int) -> bytes:
    return bytes(ms * BYTES_PER_MS)


def save_wav(path: Path, pcm: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pcm16_to_wav(pcm, WIRE_PCM_RATE))


# ---- automatic mode --------------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""
    latencies_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ResponseSummary:
    """What one response produced, read back from the event log."""

    response_id: str
    status: str
    audio: bytes
    transcript: str
    first_audio_at: float | None
    done_at: float
    error: str | None


def summarize_response(log: EventLog, start: int, response_id: str, dialect: str) -> ResponseSummary:
    names = NAMES[dialect]
    audio = bytearray()
    transcript: list[str] = []
    first_audio_at = None
    done_at = 0.0
    status = "?"
    error = None
    for received in log.since(start):
        event = received.event
        kind = received.type
        if kind == "error":
            error = f"{event.get('error', {}).get('code')}: {event.get('error', {}).get('message')}"
        if event.get("response_id") != response_id and event.get("response", {}).get("id") != response_id:
            continue
        if kind == names["audio_delta"]:
            audio += decode_base64(event["delta"])
            if first_audio_at is None:
                first_audio_at = received.at
        elif kind in (names["transcript_delta"], names["text_delta"]):
            transcript.append(event.get("delta", ""))
        elif kind == "response.done":
            status = event["response"]["status"]
            done_at = received.at
            details = event["response"].get("status_details") or {}
            if details.get("error"):
                error = f"{details['error'].get('code')}: {details['error'].get('message')}"
    return ResponseSummary(response_id, status, bytes(audio), "".join(transcript), first_audio_at, done_at, error)


def user_message(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def transcription_update(dialect: str) -> dict[str, Any]:
    """Turns on input transcription, so that the spoken turn shows what the server heard."""
    if dialect == "ga":
        session = {"type": "realtime", "audio": {"input": {"transcription": {"model": TRANSCRIPTION_MODEL}}}}
    else:
        session = {"input_audio_transcription": {"model": TRANSCRIPTION_MODEL}}
    return {"type": "session.update", "session": session}


class AutomaticRun:
    """The scripted check, on one connection."""

    def __init__(self, connection: Any, log: EventLog, dialect: str, speech: bytes) -> None:
        self.connection = connection
        self.log = log
        self.dialect = dialect
        self.speech = speech
        self.reply_audio: list[bytes] = []

    async def run(self) -> list[CheckResult]:
        results = [await self._check("connect", self.check_connect)]
        if results[0].passed:
            for name, check in (
                ("text turn", self.check_text_turn),
                ("spoken turn", self.check_spoken_turn),
                ("cancel", self.check_cancel),
            ):
                results.append(await self._check(name, check))
                if self.log.closed is not None:
                    break
        return results

    async def _check(self, name: str, check: Callable[[CheckResult], Any]) -> CheckResult:
        result = CheckResult(name, passed=False)
        print(f"\n▶ {name}", flush=True)
        try:
            await check(result)
            result.passed = True
        except CheckFailed as exc:
            result.detail = str(exc)
        except ConnectionClosed as exc:
            result.detail = f"the server closed the connection ({exc})"
        return result

    async def _response_after(self, start: int) -> tuple[str, int]:
        """The id and log index of the first response created at index ≥ `start`."""
        created = await self.log.wait_type("response.created", 15, start)
        return created.event["response"]["id"], created.index

    async def check_connect(self, result: CheckResult) -> None:
        created = await self.log.wait_type("session.created", 10)
        session_id = created.event["session"].get("id")
        start = self.log.mark()
        await self.connection.send(transcription_update(self.dialect))
        try:
            updated = await self.log.wait(lambda e: e.get("type") in ("session.updated", "error"), 10, start)
        except TimeoutError:
            raise CheckFailed("no session.updated within 10 s") from None
        if updated.type == "error":
            raise CheckFailed(f"session.update was refused: {updated.event['error'].get('message')}")
        result.detail = f"session {session_id}"

    async def check_text_turn(self, result: CheckResult) -> None:
        start = self.log.mark()
        await self.connection.send(user_message("Hello! Please answer in one short sentence."))
        await self.connection.send({"type": "response.create"})
        sent_at = asyncio.get_running_loop().time()
        response_id, index = await self._response_after(start)
        await self.log.wait_done(response_id, RESPONSE_TIMEOUT_S, index)
        reply = summarize_response(self.log, index, response_id, self.dialect)
        self._require_complete_reply(reply)
        self.reply_audio.append(reply.audio)
        result.latencies_ms = {
            "first audio": (reply.first_audio_at - sent_at) * 1000,  # type: ignore[operator]
            "total": (reply.done_at - sent_at) * 1000,
        }
        result.detail = f"{len(reply.audio) / BYTES_PER_MS / 1000:.1f} s of audio: {_quote(reply.transcript)}"

    async def check_spoken_turn(self, result: CheckResult) -> None:
        start = self.log.mark()
        audio = self.speech + silence(TRAILING_SILENCE_MS)
        streaming = asyncio.create_task(stream_audio(self.connection, audio))
        try:
            duration_s = len(audio) / BYTES_PER_MS / 1000
            await self.log.wait_type("input_audio_buffer.speech_started", duration_s + 5, start)
            stopped = await self.log.wait_type("input_audio_buffer.speech_stopped", duration_s + 5, start)
            item_id = stopped.event["item_id"]
            response_id, index = await self._response_after(stopped.index)
            await self.log.wait_done(response_id, RESPONSE_TIMEOUT_S, index)
            transcribed = await self._transcription(item_id, start)
        finally:
            streaming.cancel()
            await asyncio.gather(streaming, return_exceptions=True)
        reply = summarize_response(self.log, index, response_id, self.dialect)
        self._require_complete_reply(reply)
        self.reply_audio.append(reply.audio)
        if transcribed.type.endswith(".failed"):
            raise CheckFailed(f"transcription failed: {transcribed.event.get('error', {}).get('message')}")
        transcript = transcribed.event.get("transcript", "").strip()
        if not transcript:
            raise CheckFailed("the turn's transcript is empty")
        result.latencies_ms = {
            "speech_stopped → first audio": (reply.first_audio_at - stopped.at) * 1000,  # type: ignore[operator]
            "total": (reply.done_at - stopped.at) * 1000,
        }
        result.detail = f"heard {_quote(transcript)}, answered {_quote(reply.transcript)}"

    async def check_cancel(self, result: CheckResult) -> None:
        start = self.log.mark()
        # Back to back: the server handles a socket's events in order, so the cancel finds the response running.
        await self.connection.send(
            {"type": "response.create", "response": {"instructions": "Tell a long story about the sea."}}
        )
        await self.connection.send({"type": "response.cancel"})
        sent_at = asyncio.get_running_loop().time()
        response_id, index = await self._response_after(start)
        done = await self.log.wait_done(response_id, RESPONSE_TIMEOUT_S, index)
        status = done.event["response"]["status"]
        if status != "cancelled":
            raise CheckFailed(f"response.done has status {status!r}, not 'cancelled'")
        errors = [r.event["error"] for r in self.log.since(start) if r.type == "error"]
        if errors:
            raise CheckFailed(f"error: {errors[0].get('message')}")
        result.latencies_ms = {"cancel → response.done": (done.at - sent_at) * 1000}
        result.detail = f"{response_id} cancelled"

    async def _transcription(self, item_id: str, start: int) -> Received:
        """The input transcription's outcome for the item (completed or failed)."""
        outcomes = (
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.input_audio_transcription.failed",
        )
        try:
            return await self.log.wait(
                lambda e: e.get("type") in outcomes and e.get("item_id") == item_id, RESPONSE_TIMEOUT_S, start
            )
        except TimeoutError:
            raise CheckFailed("the turn was not transcribed (no input_audio_transcription event)") from None

    @staticmethod
    def _require_complete_reply(reply: ResponseSummary) -> None:
        if reply.status != "completed":
            reason = f": {reply.error}" if reply.error else ""
            raise CheckFailed(f"response {reply.response_id} ended {reply.status!r}{reason}")
        if not reply.audio or reply.first_audio_at is None:
            raise CheckFailed(f"response {reply.response_id} has no audio")


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return f'"{text[:limit]}…"' if len(text) > limit else f'"{text}"'


def print_summary(results: list[CheckResult], url: str, dialect: str) -> None:
    print(f"\nSummary — {url} ({dialect})")
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        latencies = ", ".join(f"{name} {value:.0f} ms" for name, value in result.latencies_ms.items())
        parts = [part for part in (latencies, result.detail) if part]
        print(f"  {mark}  {result.name:<12} {' · '.join(parts)}")


async def automatic(args: argparse.Namespace) -> int:
    speech = load_wav(Path(args.wav))
    manager, connection = await open_connection(args.url, args.model, args.api_key, args.dialect)
    printer = EventPrinter(time.monotonic())
    log = EventLog(connection, echo=printer)
    log.start()
    run = AutomaticRun(connection, log, args.dialect, speech)
    try:
        results = await run.run()
    finally:
        printer.flush()
        await log.stop()
        await close_quietly(manager.__aexit__(None, None, None))
    print_summary(results, args.url, args.dialect)
    audio = b"".join(part + silence(500) for part in run.reply_audio)
    if audio:
        save_wav(Path(args.out), audio)
        print(f"  reply audio: {len(audio) / BYTES_PER_MS / 1000:.1f} s saved to {args.out}")
    passed = sum(result.passed for result in results)
    expected = 4
    if passed == expected:
        print(f"All {expected} checks passed.")
        return 0
    print(f"{expected - passed} of {expected} checks failed.")
    return 1


# ---- interactive mode ------------------------------------------------------------------------------------------------


class Interactive:
    """Type a line: it is sent as a user message; the reply's text streams to the terminal and its audio plays (or,
    without a sound card, is saved to --out). `/wav FILE` sends a recording; `/quit` (or Ctrl-D) ends."""

    def __init__(self, connection: Any, dialect: str, out: Path, player: AudioPlayer | None) -> None:
        self.connection = connection
        self.dialect = dialect
        self.out = out
        self.player = player
        self.log = EventLog(connection, echo=self._on_event)
        self._audio = bytearray()
        self._reply_open = False

    def _on_event(self, event: dict[str, Any]) -> None:
        names = NAMES[self.dialect]
        kind = event.get("type")
        if kind in (names["transcript_delta"], names["text_delta"]):
            if not self._reply_open:  # the reply's line; other lines may have come between its deltas
                print("assistant> ", end="")
                self._reply_open = True
            print(event.get("delta", ""), end="", flush=True)
        elif kind == names["audio_delta"]:
            pcm = decode_base64(event["delta"])
            self._audio += pcm
            if self.player is not None:
                self.player.write(pcm, event.get("item_id"))
        elif kind == "input_audio_buffer.speech_started":
            self._line("[speech started]")
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._line(f"you (heard): {event.get('transcript', '').strip()}")
        elif kind == "response.done":
            status = event["response"]["status"]
            self._line("" if status == "completed" else f"[{status}]")
        elif kind == "error":
            self._line(f"error: {event.get('error', {}).get('message')}")

    def _line(self, text: str) -> None:
        """Prints a whole line, ending the reply's line first if it is open."""
        if self._reply_open:
            print(flush=True)
            self._reply_open = False
        if text:
            print(text, flush=True)

    async def run(self) -> int:
        self.log.start()
        try:
            await self.log.wait_type("session.created", 10)
            await self.connection.send(transcription_update(self.dialect))
            print("Type a message and press Enter. /wav FILE sends a recording, /quit ends.")
            while self.log.closed is None:
                line = await asyncio.to_thread(_read_line, "you> ")
                if line is None or line.strip() in ("/quit", "/exit"):
                    break
                line = line.strip()
                if not line:
                    continue
                start = self.log.mark()
                spoken = line.startswith("/wav")
                if spoken:
                    if not await self._send_wav(line[4:].strip()):
                        continue
                else:
                    await self.connection.send(user_message(line))
                    await self.connection.send({"type": "response.create"})
                await self._finish_reply(start, spoken)
        except (CheckFailed, ConnectionClosed) as exc:
            self._line("")
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        finally:
            await self.log.stop()
        return 0

    async def _send_wav(self, name: str) -> bool:
        try:
            pcm = load_wav(Path(name))
        except WavError as exc:
            print(exc)
            return False
        print(f"(sending {len(pcm) / BYTES_PER_MS / 1000:.1f} s of {name})")
        await stream_audio(self.connection, pcm + silence(TRAILING_SILENCE_MS), realtime=False, chunk_ms=100)
        return True

    async def _finish_reply(self, start: int, spoken: bool) -> None:
        """Waits for the reply (its text and audio are handled as they arrive), then saves its audio."""
        self._audio.clear()
        try:
            if spoken:  # the whole recording was sent at once: the VAD has seen it all within moments
                await self.log.wait(lambda e: e.get("type") == "input_audio_buffer.speech_started", 5, start)
        except TimeoutError:
            self._line("(no speech detected in the recording)")
            return
        try:
            await self.log.wait(lambda e: e.get("type") == "response.done", RESPONSE_TIMEOUT_S, start)
        except TimeoutError:
            self._line(f"(no reply within {RESPONSE_TIMEOUT_S:.0f} s)")
            return
        if self._audio:
            seconds = len(self._audio) / BYTES_PER_MS / 1000
            if self.player is None:
                save_wav(self.out, bytes(self._audio))
                print(f"(audio: {seconds:.1f} s saved to {self.out})")


def _read_line(prompt: str) -> str | None:
    """One line from the terminal, or None at end of input (run in a thread: `input` blocks)."""
    try:
        return input(prompt)
    except EOFError:
        return None


async def interactive(args: argparse.Namespace) -> int:
    player = None
    if not args.no_play:
        try:
            player = open_sounddevice_player()
        except AudioUnavailable as exc:
            print(f"(no playback: {str(exc).split('. ')[0]}; replies are saved to {args.out})")
    manager, connection = await open_connection(args.url, args.model, args.api_key, args.dialect)
    try:
        return await Interactive(connection, args.dialect, Path(args.out), player).run()
    finally:
        if player is not None:
            player.close()
        await close_quietly(manager.__aexit__(None, None, None))


# ---- command line ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--interactive", action="store_true", help="interactive mode")
    add_server_arguments(parser)
    parser.add_argument("--dialect", choices=("ga", "beta"), default="ga", help="protocol dialect (default: ga)")
    parser.add_argument("--wav", default=str(DEFAULT_WAV), help="recording for the spoken turn (16-bit WAV)")
    parser.add_argument("--out", default="test_client_reply.wav", help="where the reply audio is saved")
    parser.add_argument("--no-play", action="store_true", help="interactive: save replies instead of playing them")
    add_openai_argument(parser)
    args = parser.parse_args(argv)
    args.url, args.api_key = resolve_server(parser, args, PROG)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(interactive(args) if args.interactive else automatic(args))
    except CannotConnect as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except WavError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
