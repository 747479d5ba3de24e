"""Free-mic terminal client for a Realtime API server: talk, hear the reply, talk over it to interrupt.

    python push_to_talk_app.py                      # ws://localhost:8000/v1/realtime
    python push_to_talk_app.py --openai             # OpenAI's own API (OPENAI_API_KEY)
    python push_to_talk_app.py --list-devices       # pick --input-device / --output-device

There is nothing to press: the microphone streams all the time (PCM16 mono 24 kHz, 20 ms appends) and the server's
voice activity detection decides when a turn starts and ends. The reply's audio plays as it arrives; when the server
hears you start speaking (`input_audio_buffer.speech_started`) playback stops at once and the client tells the
server how much of the reply you actually heard (`conversation.item.truncate`), so the conversation keeps only that.
`Q` quits. Needs PortAudio (`apt-get install libportaudio2` / `brew install portaudio`), a microphone and a speaker.

Settings come from flags or the environment: REALTIME_URL, REALTIME_MODEL, REALTIME_API_KEY, REALTIME_VOICE,
USE_LOCAL_SERVER=false (the same as --openai; the key then comes from OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Static
from websockets.exceptions import ConnectionClosed

from audio_utils import WIRE_PCM_RATE, StreamResampler, decode_base64, encode_base64
from clients.command_line import add_openai_argument, add_server_arguments, resolve_server
from clients.connection import (
    DEFAULT_MODEL,
    DEFAULT_URL,
    TRANSCRIPTION_MODEL,
    CannotConnect,
    close_quietly,
    open_connection,
)
from clients.playback import (
    AudioPlayer,
    AudioUnavailable,
    ClosableStream,
    import_sounddevice,
    open_sounddevice_player,
    supported_sample_rate,
)

PROG = "push_to_talk_app"  # the launcher's name, which starts the messages on stderr
BLOCK_MS = 20  # microphone block = one input_audio_buffer.append


# ---- connection settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where to connect and with which audio devices."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    api_key: str = "local"
    voice: str | None = None
    input_device: int | str | None = None
    output_device: int | str | None = None


# ---- audio devices ---------------------------------------------------------------------------------------------------


class AudioBackend(Protocol):
    """Where microphone audio comes from and reply audio goes (a sound card, or a fake in tests)."""

    def open_input(self, callback: Callable[[bytes], None], rate: int, block_ms: int) -> ClosableStream:
        """Starts capturing: `callback` gets PCM16 mono at `rate` in blocks of `block_ms`, from any thread."""
        ...

    def open_output(self, rate: int) -> AudioPlayer:
        """A started player for PCM16 mono at `rate`."""
        ...


class SoundDeviceBackend:
    """The sound card, through sounddevice (PortAudio); raises `AudioUnavailable` with advice when it can't."""

    def __init__(self, input_device: int | str | None = None, output_device: int | str | None = None) -> None:
        self.sd = import_sounddevice()
        self.input_device = input_device
        self.output_device = output_device

    def check(self) -> None:
        """Fails early, before the UI starts, when there is no microphone or no speaker."""
        for kind, device in (("input", self.input_device), ("output", self.output_device)):
            try:
                self.sd.query_devices(device, kind=kind)
            except (ValueError, self.sd.PortAudioError) as exc:
                what = "microphone" if kind == "input" else "speaker"
                chosen = f"device {device!r}" if device is not None else f"a default {what}"
                raise AudioUnavailable(
                    f"No usable {what}: cannot use {chosen} ({exc}). Connect one, or choose one with "
                    f"--{kind}-device (see --list-devices)."
                ) from None

    def open_input(self, callback: Callable[[bytes], None], rate: int, block_ms: int) -> ClosableStream:
        sd = self.sd
        try:
            device_rate = supported_sample_rate(sd, self.input_device, "input", rate)
            resampler = StreamResampler(device_rate, rate)

            def on_audio(indata: Any, _frames: int, _time: Any, _status: Any) -> None:
                pcm = resampler.process(bytes(indata))
                if pcm:
                    callback(pcm)

            stream = sd.RawInputStream(
                samplerate=device_rate,
                blocksize=device_rate * block_ms // 1000,
                channels=1,
                dtype="int16",
                device=self.input_device,
                callback=on_audio,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioUnavailable(f"Cannot open the microphone: {exc}") from None
        return stream

    def open_output(self, rate: int) -> AudioPlayer:
        return open_sounddevice_player(self.output_device, rate, BLOCK_MS)


def level_dbfs(pcm: bytes) -> float:
    """Loudness of a PCM16 block, -90 (silence) to 0 dBFS."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    if not len(samples):
        return -90.0
    rms = float(np.sqrt(np.mean(samples * samples))) / 32768.0
    return max(-90.0, 20 * float(np.log10(rms)) if rms > 0 else -90.0)


# ---- UI --------------------------------------------------------------------------------------------------------------


class LevelMeter(Static):
    """The microphone's level as a bar, -60 to 0 dBFS."""

    WIDTH = 24

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.level = -90.0

    def show(self, dbfs: float) -> None:
        self.level = dbfs
        filled = round(max(0.0, min(1.0, (dbfs + 60) / 60)) * self.WIDTH)
        self.update("mic " + "█" * filled + "░" * (self.WIDTH - filled))


class Line(Static):
    """One line of the conversation; keeps its plain text for updates (and for tests to read)."""

    def __init__(self, speaker: str, text: str, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.speaker = speaker
        self.text = text
        self.note = ""
        self._render_text()

    def set_text(self, text: str, note: str | None = None) -> None:
        self.text = text
        if note is not None:
            self.note = note
        self._render_text()

    def _render_text(self) -> None:
        note = f"  [{self.note}]" if self.note else ""
        self.update(f"{self.speaker}: {self.text}{note}")


class RealtimeApp(App[int]):
    """The free-mic client. Network and audio run as asyncio tasks in Textual's own event loop; the audio device
    threads only hand blocks over (`call_soon_threadsafe`), so nothing blocks the UI."""

    TITLE = "Realtime voice"
    CSS = """
    #status { height: 1; padding: 0 1; background: $boost; }
    #meters { height: 1; padding: 0 1; }
    #level { width: 30; }
    #hearing { width: 1fr; }
    #conversation { height: 1fr; border: round $primary; padding: 0 1; }
    .user { color: $text; }
    .assistant { color: $success; }
    #errors { height: auto; max-height: 5; padding: 0 1; color: $error; }
    """
    BINDINGS = [Binding("q,Q", "quit", "Quit")]

    def __init__(self, settings: Settings, backend: AudioBackend) -> None:
        super().__init__()
        self.settings = settings
        self.backend = backend
        self.session_id: str | None = None
        self.state = "starting"
        self.player: AudioPlayer | None = None
        self._mic: ClosableStream | None = None
        self._mic_queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)  # 10 s: more means the socket is stuck
        self._mic_level = -90.0
        self._connection: Any = None
        self._users: dict[str, Line] = {}
        self._assistants: dict[str, Line] = {}
        self._in_progress: set[str] = set()  # assistant items whose response has not ended
        self._errors: list[str] = []
        self._quitting = False

    def compose(self) -> ComposeResult:
        yield Static("", id="status", markup=False)
        with Horizontal(id="meters"):
            yield LevelMeter(id="level")
            yield Static("", id="hearing", markup=False)
        yield VerticalScroll(id="conversation")
        yield Static("", id="errors", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._show_status("connecting")
        self._show_hearing(False)
        self.query_one(LevelMeter).show(-90.0)
        self.set_interval(1 / 15, self._refresh_level)
        self.run_worker(self._run_session(), name="session", exclusive=True)

    # ---- session ----------------------------------------------------------------------------------------------

    async def _run_session(self) -> None:
        url = self.settings.url
        try:
            _manager, connection = await open_connection(url, self.settings.model, self.settings.api_key)
        except CannotConnect as exc:
            self._show_status("not connected")
            self.show_error(str(exc))
            return
        self._connection = connection
        self._show_status("connected")
        sender: asyncio.Task[None] | None = None
        try:
            await self.send(self._session_update())
            self._start_audio()
            sender = asyncio.create_task(self._send_microphone())
            while True:
                event = json.loads(await connection.recv_bytes())
                try:
                    await self.on_server_event(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed event: say so, go on
                    self.show_error(f"could not handle {event.get('type')!r}: {exc!r}")
        except ConnectionClosed as exc:
            if not self._quitting:
                reason = f": {exc.rcvd.code} {exc.rcvd.reason}".rstrip() if exc.rcvd else ""
                self._show_status("disconnected")
                self.show_error(f"the server closed the connection{reason}")
        except AudioUnavailable as exc:
            self.exit(return_code=2, message=str(exc))
        finally:
            if sender is not None:
                sender.cancel()
            await self._close_connection()

    def _session_update(self) -> dict[str, Any]:
        """Input transcription on (to show what the server heard), and the voice if one was chosen."""
        audio: dict[str, Any] = {"input": {"transcription": {"model": TRANSCRIPTION_MODEL}}}
        if self.settings.voice:
            audio["output"] = {"voice": self.settings.voice}
        return {"type": "session.update", "session": {"type": "realtime", "audio": audio}}

    async def send(self, event: dict[str, Any]) -> None:
        """Sends a client event (every event the app sends goes through here)."""
        if self._connection is not None:
            await self._connection.send(event)

    def _start_audio(self) -> None:
        self.player = self.backend.open_output(WIRE_PCM_RATE)
        loop = asyncio.get_running_loop()

        def on_block(pcm: bytes) -> None:  # runs in the audio device's thread
            self._mic_level = level_dbfs(pcm)
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop has closed, the app is gone
                loop.call_soon_threadsafe(self._queue_block, pcm)

        self._mic = self.backend.open_input(on_block, WIRE_PCM_RATE, BLOCK_MS)

    def _queue_block(self, pcm: bytes) -> None:
        if self._mic_queue.full():  # the socket can't keep up: drop the oldest, keep the live edge
            self._mic_queue.get_nowait()
        self._mic_queue.put_nowait(pcm)

    async def _send_microphone(self) -> None:
        while True:
            pcm = await self._mic_queue.get()
            await self.send({"type": "input_audio_buffer.append", "audio": encode_base64(pcm)})

    async def on_server_event(self, event: dict[str, Any]) -> None:
        """Updates the UI and playback for one server event."""
        kind = event.get("type", "")
        if kind == "session.created":
            self.session_id = event["session"].get("id")
            self._show_status("connected")
        elif kind == "input_audio_buffer.speech_started":
            self._show_hearing(True)
            await self._barge_in()
        elif kind == "input_audio_buffer.speech_stopped":
            self._show_hearing(False)
        elif kind == "input_audio_buffer.committed":
            self._user_line(event["item_id"])
        elif kind == "conversation.item.input_audio_transcription.delta":
            line = self._user_line(event["item_id"])
            line.set_text(("" if line.text == "…" else line.text) + event.get("delta", ""))
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._user_line(event["item_id"]).set_text(event.get("transcript", "").strip() or "(nothing heard)")
        elif kind == "conversation.item.input_audio_transcription.failed":
            self._user_line(event["item_id"]).set_text("(transcription failed)")
        elif kind == "response.output_item.added":
            item = event.get("item", {})
            if item.get("type") == "message" and item.get("role") == "assistant":
                self._in_progress.add(item["id"])
                self._assistant_line(item["id"])
        elif kind in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            line = self._assistant_line(event["item_id"])
            line.set_text(line.text + event.get("delta", ""))
        elif kind == "response.output_audio.delta":
            if self.player is not None:
                self.player.write(decode_base64(event["delta"]), event["item_id"])
        elif kind == "response.output_audio.done":
            if self.player is not None:
                self.player.end_item(event["item_id"])
        elif kind == "response.done":
            response = event.get("response", {})
            for item in response.get("output", []):
                self._in_progress.discard(item.get("id"))
                if response.get("status") not in ("completed", None) and item.get("id") in self._assistants:
                    self._assistants[item["id"]].set_text(self._assistants[item["id"]].text, response["status"])
        elif kind == "conversation.item.truncated":
            line = self._assistants.get(event["item_id"])
            if line is not None:
                line.set_text(line.text, f"interrupted: heard {event['audio_end_ms'] / 1000:.1f} s")
        elif kind == "error":
            error = event.get("error", {})
            self.show_error(f"{error.get('code') or error.get('type', 'error')}: {error.get('message', '')}")

    async def _barge_in(self) -> None:
        """The user started talking: silence the reply now and tell the server how much of it was heard."""
        if self.player is None:
            return
        stop = self.player.stop()
        if stop.item_id is not None and (stop.interrupted or stop.item_id in self._in_progress):
            await self.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": stop.item_id,
                    "content_index": 0,
                    "audio_end_ms": stop.played_ms,
                }
            )

    # ---- widgets ----------------------------------------------------------------------------------------------

    def _user_line(self, item_id: str) -> Line:
        return self._item_line(self._users, item_id, "You", "…", "user")

    def _assistant_line(self, item_id: str) -> Line:
        return self._item_line(self._assistants, item_id, "Assistant", "", "assistant")

    def _item_line(self, lines: dict[str, Line], item_id: str, speaker: str, text: str, classes: str) -> Line:
        """The item's line, added to the conversation the first time the item shows up (its events can come in
        any order: a transcript delta before the item's own event, say)."""
        line = lines.get(item_id)
        if line is None:
            line = lines[item_id] = Line(speaker, text, classes=classes)
            self._add_line(line)
        return line

    def _add_line(self, line: Line) -> None:
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.mount(line)
        conversation.scroll_end(animate=False)

    def _show_status(self, state: str) -> None:
        self.state = state
        session = f" · session {self.session_id}" if self.session_id else ""
        self.query_one("#status", Static).update(f"{state} · {self.settings.url}{session}")

    def _show_hearing(self, hearing: bool) -> None:
        text = "● hearing you" if hearing else "○ listening"
        self.query_one("#hearing", Static).update(text)

    def show_error(self, message: str) -> None:
        """Errors stay on screen (the last few), under the conversation."""
        self._errors = [*self._errors[-3:], message]
        self.query_one("#errors", Static).update("\n".join(f"error: {line}" for line in self._errors))

    def _refresh_level(self) -> None:
        self.query_one(LevelMeter).show(self._mic_level)

    @property
    def errors(self) -> list[str]:
        return list(self._errors)

    @property
    def user_lines(self) -> list[str]:
        return [line.text for line in self._users.values()]

    @property
    def assistant_lines(self) -> list[str]:
        return [line.text for line in self._assistants.values()]

    # ---- quitting ---------------------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        """Closes the microphone, the speaker and the socket, then exits."""
        await self._close_everything()
        self.exit(return_code=0)

    async def on_unmount(self) -> None:
        await self._close_everything()

    async def _close_everything(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        mic, self._mic = self._mic, None
        player = self.player
        # Closing a PortAudio stream waits for its callback to return: do it off the event loop.
        if mic is not None:
            await asyncio.to_thread(mic.close)
        if player is not None:
            await asyncio.to_thread(player.close)
        await self._close_connection()

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await close_quietly(connection.close())


# ---- command line ----------------------------------------------------------------------------------------------------


def _device(value: str | None) -> int | str | None:
    """A device index (`3`) or part of a device name (`USB`)."""
    if value is None or value == "":
        return None
    return int(value) if value.isdigit() else value


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--voice", default=os.environ.get("REALTIME_VOICE"), help="reply voice (alloy, marin, …)")
    parser.add_argument("--input-device", default=None, help="microphone: index or part of its name")
    parser.add_argument("--output-device", default=None, help="speaker: index or part of its name")
    add_openai_argument(parser)
    parser.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    args = parser.parse_args(argv)
    url, api_key = resolve_server(parser, args, PROG)
    settings = Settings(
        url=url,
        model=args.model,
        api_key=api_key,
        voice=args.voice,
        input_device=_device(args.input_device),
        output_device=_device(args.output_device),
    )
    return settings, args


def main(argv: list[str] | None = None, backend: AudioBackend | None = None) -> int:
    settings, args = parse_args(argv)
    if backend is None:
        try:
            sound = SoundDeviceBackend(settings.input_device, settings.output_device)
            if args.list_devices:
                print(sound.sd.query_devices())
                return 0
            sound.check()
        except AudioUnavailable as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        backend = sound
    app = RealtimeApp(settings, backend)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
