"""The two clients against the real server: the Textual free-mic app (driven by Textual's pilot, with a fake sound
card) and the scripted `test_client.py` (run as users run it, in a subprocess). Also the playback helper."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.pilot import Pilot

from clients import scripted, voice_chat
from clients.playback import AudioPlayer
from clients.voice_chat import LevelMeter, Line, RealtimeApp, Settings
from tests.fakes.audio_backend import FakeAudioBackend
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.audio_fixtures import pcm24k
from tests.support.fake_control import fake_requests, script
from tests.support.servers import ROOT, RunningServer, free_port

# ---- the playback helper --------------------------------------------------------------------------------------------


def tone_ms(ms: int, rate: int = 24_000) -> bytes:
    samples = np.arange(rate * ms // 1000)
    return (3000 * np.sin(2 * np.pi * 440 * samples / rate)).astype(np.int16).tobytes()


def test_player_counts_what_was_played_and_stop_mutes_the_item() -> None:
    player = AudioPlayer(24_000)
    player.write(tone_ms(500), "item_a")
    player.write(tone_ms(500), "item_a")
    assert player.current_item == "item_a"
    assert player.read(48 * 300) == tone_ms(1000)[: 48 * 300]  # 300 ms
    assert player.played_ms("item_a") == 300
    stop = player.stop()
    assert (stop.item_id, stop.played_ms, stop.received_ms, stop.interrupted) == ("item_a", 300, 1000, True)
    assert player.buffered_ms == 0 and not player.is_playing
    assert player.read(480) == bytes(480)  # silence at once
    player.write(tone_ms(200), "item_a")  # a delta that was in flight when the response was cancelled
    assert player.read(480) == bytes(480)
    assert player.played_ms("item_a") == 300
    player.write(tone_ms(200), "item_b")  # the next reply plays
    assert player.current_item == "item_b"
    assert player.read(48 * 200) != bytes(48 * 200)
    stop = player.stop()
    assert (stop.item_id, stop.played_ms, stop.interrupted) == ("item_b", 200, False)  # heard in full


def test_player_reports_a_queued_item_not_yet_played() -> None:
    player = AudioPlayer(24_000)
    player.write(tone_ms(100), "item_a")
    player.read(48 * 100)
    player.write(tone_ms(300), "item_b")  # arrived after item_a finished, not played yet
    stop = player.stop()
    assert (stop.item_id, stop.played_ms, stop.received_ms, stop.interrupted) == ("item_b", 0, 300, True)


def test_player_resamples_for_the_device_and_discounts_its_latency() -> None:
    now = [0.0]
    player = AudioPlayer(24_000, output_rate=48_000, latency_ms=100, clock=lambda: now[0])
    for _ in range(10):
        player.write(tone_ms(100), "item")
    player.end_item("item")
    played = player.read(96 * 2000)  # more than there is: the rest is silence
    assert abs(np.count_nonzero(np.frombuffer(played, np.int16)) / 48 - 1000) < 30
    assert player.played_ms("item") == 900  # the device still holds the last 100 ms
    now[0] += 0.05
    assert player.played_ms("item") == 950
    now[0] += 1
    assert player.played_ms("item") == 1000  # never more than was received


# ---- the Textual app ------------------------------------------------------------------------------------------------


class RecordingApp(RealtimeApp):
    """The app, keeping what it sent and received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[dict[str, Any]] = []
        self.sent_after: list[str] = []  # for each sent event, the type of the last event received before it
        self.appended_ms = 0.0
        self.received: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        if event["type"] == "input_audio_buffer.append":
            self.appended_ms += len(event["audio"]) * 3 / 4 / 48
        else:
            self.sent.append(event)
            self.sent_after.append(self.received[-1]["type"] if self.received else "")
        await super().send(event)

    async def on_server_event(self, event: dict[str, Any]) -> None:
        self.received.append(event)
        await super().on_server_event(event)

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.sent if event["type"] == event_type]

    def received_of(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event["type"] == event_type]


async def until(pilot: Pilot[Any], condition: Callable[[], Any], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(
                f"timed out waiting for {what}; status={app.state!r} users={app.user_lines} "
                f"assistant={app.assistant_lines} errors={app.errors} received={[e['type'] for e in app.received]}"
            )
        await pilot.pause(0.03)


def text(app: RealtimeApp, selector: str) -> str:
    return str(app.query_one(selector).content)


REPLY = (
    "This first sentence is long enough that it is still playing when the user starts to talk over it. "
    "The second sentence is never heard. Nor is this third one."
)


async def test_app_talks_hears_the_reply_is_interrupted_and_quits(server: RunningServer, fake: FakeOpenAI) -> None:
    sessions_before = server.health()["active_sessions"]
    backend = FakeAudioBackend()
    app = RecordingApp(Settings(url=f"ws://127.0.0.1:{server.port}/v1/realtime"), backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.session_id and backend.microphone, "the session and the microphone")
        script(
            fake,
            app.session_id,
            chat=[{"text": REPLY}, {"text": "Sure, something else."}],
            speech=[{"stall_s": 0.1}] * 6,  # about real time, so the reply is still playing when the user speaks
            transcription=[{"text": "Hello there."}] + [{"text": "Stop, stop. Tell me something else instead."}] * 4,
        )
        assert app.session_id.startswith("sess_")
        assert text(app, "#status").startswith("connected") and app.session_id in text(app, "#status")
        assert app.sent[0]["type"] == "session.update"  # input transcription on, so the user sees what was heard
        assert app.sent[0]["session"]["audio"]["input"]["transcription"]
        meter = app.query_one(LevelMeter)
        await until(pilot, lambda: app.appended_ms >= 200, "the microphone streaming (silence)")
        assert meter.level == -90.0 and "○ listening" in text(app, "#hearing")

        # The user speaks: the audio goes out, the server hears it, the transcript and the reply show up.
        backend.say(pcm24k("hello.wav"))
        await until(pilot, lambda: meter.level > -40, "the level meter showing speech")
        await until(pilot, lambda: "hearing you" in text(app, "#hearing"), "the server hearing speech")
        await until(pilot, lambda: "listening" in text(app, "#hearing"), "the end of the turn")
        await until(pilot, lambda: app.user_lines == ["Hello there."], "the user's transcript")
        await until(pilot, lambda: app.assistant_lines and app.assistant_lines[0].startswith("This first"), "reply")
        (added,) = app.received_of("response.output_item.added")
        item_id = added["item"]["id"]
        player = app.player
        assert player is not None
        await until(pilot, lambda: player.played_ms(item_id) >= 600, "the reply playing")
        assert backend.speaker is not None and backend.speaker.audible_ms() >= 500

        # The user talks over the reply: playback stops at once and the truncate says what was heard.
        backend.say(pcm24k("long_reply_interrupt.wav"))
        await until(pilot, lambda: app.sent_of("conversation.item.truncate"), "the truncate")
        played_at_stop = len(backend.speaker.played)
        (truncate,) = app.sent_of("conversation.item.truncate")
        heard_ms = truncate["audio_end_ms"]
        assert truncate["item_id"] == item_id and truncate["content_index"] == 0
        assert 600 <= heard_ms < 4000, truncate  # the first sentence alone is ~4 s of the fake's speech
        assert player.played_ms(item_id) == heard_ms and not player.is_playing
        assert app.sent_after[app.sent.index(truncate)] == "input_audio_buffer.speech_started"
        assert len(app.received_of("input_audio_buffer.speech_started")) == 2
        await until(pilot, lambda: app.received_of("conversation.item.truncated"), "the server's truncated")
        assert app.received_of("conversation.item.truncated")[0]["audio_end_ms"] == heard_ms
        await pilot.pause(0.3)
        assert backend.speaker.audible_ms(played_at_stop) == 0  # nothing more of the reply was played
        assert player.played_ms(item_id) == heard_ms
        first_done = app.received_of("response.done")[0]["response"]
        assert first_done["status"] == "cancelled" and first_done["status_details"]["reason"] == "turn_detected"
        assert any("[interrupted: heard" in str(line.content) for line in app.query(Line))

        # The interrupting turn is answered, from a conversation that holds only what was heard.
        await until(pilot, lambda: "Sure, something else." in app.assistant_lines, "the second reply", timeout=30)
        assert app.user_lines == ["Hello there.", "Stop, stop. Tell me something else instead."]
        messages = fake_requests(fake, "/v1/chat/completions", app.session_id)[-1]["body"]["messages"]
        (assistant,) = [m for m in messages if m["role"] == "assistant"]
        assert REPLY.startswith(assistant["content"]) and "second" not in assistant["content"]
        assert app.errors == []
        # Both utterances go out, in 20 ms appends (the reply may come before the microphone has sent all of them).
        await until(pilot, lambda: app.appended_ms >= 1835 + 4622, "both utterances sent")

        await pilot.press("q")
        await pilot.pause(0.1)
    assert app.return_code == 0
    assert backend.microphone is not None and backend.microphone.closed
    assert backend.speaker.closed
    deadline = time.monotonic() + 5
    while server.health()["active_sessions"] != sessions_before:  # the socket was closed
        assert time.monotonic() < deadline, server.health()
        await asyncio.sleep(0.05)


async def test_app_quits_with_capital_q(server: RunningServer) -> None:
    backend = FakeAudioBackend()
    app = RecordingApp(Settings(url=f"ws://127.0.0.1:{server.port}/v1/realtime"), backend)
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.session_id and backend.microphone, "the session")
        await pilot.press("Q")
        await pilot.pause(0.1)
    assert app.return_code == 0 and backend.microphone is not None and backend.microphone.closed


async def test_app_shows_a_server_that_cannot_be_reached() -> None:
    backend = FakeAudioBackend()
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    app = RecordingApp(Settings(url=url), backend)
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.errors, "the error")
        assert app.state == "not connected"
        assert "connection refused" in app.errors[0] and url in app.errors[0]
        assert backend.microphone is None  # nothing opened
        await pilot.press("q")
        await pilot.pause(0.1)
    assert app.return_code == 0


FAKE_SOUNDDEVICE = {
    "no_portaudio": 'raise OSError("PortAudio library not found")\n',
    "no_devices": (
        "class PortAudioError(Exception):\n"
        "    pass\n"
        "def query_devices(device=None, kind=None):\n"
        '    raise PortAudioError("Error querying device -1")\n'
    ),
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [("no_portaudio", ["libportaudio2", "brew install portaudio"]), ("no_devices", ["No usable microphone"])],
)
def test_app_without_sound_says_what_is_missing(tmp_path: Path, case: str, expected: list[str]) -> None:
    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE[case])
    result = subprocess.run(
        [sys.executable, str(ROOT / "push_to_talk_app.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    for words in expected:
        assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- test_client.py -------------------------------------------------------------------------------------------------


def run_test_client(
    *args: str, cwd: Path, stdin: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "test_client.py"), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
        return wav.getnframes() / 24_000


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_test_client_automatic_mode_passes(
    server_factory: Callable[..., RunningServer], fake: FakeOpenAI, tmp_path: Path, dialect: str
) -> None:
    server = server_factory()  # the client runs in a process of its own: the fake is scripted for this server
    script(fake, server.provider_key, transcription=[{"text": "What is the weather like in Paris today?"}] * 3)
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    result = run_test_client("--url", url, "--dialect", dialect, "--out", "reply.wav", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    delta = "response.output_audio.delta" if dialect == "ga" else "response.audio.delta"
    for event_type in ("session.created", "input_audio_buffer.speech_stopped", delta, "response.done"):
        assert f"← {event_type}" in out
    for check in ("connect", "text turn", "spoken turn", "cancel"):
        assert f"PASS  {check}" in out
    assert "FAIL" not in out and "All 4 checks passed." in out
    assert 'heard "What is the weather like in Paris today?"' in out
    assert "speech_stopped → first audio" in out and "status=cancelled" in out
    assert wav_seconds(tmp_path / "reply.wav") > 2  # both replies (the fake speaks 40 ms a character)
    # The spoken turn was streamed at real-time pace (the recording is 4.4 s) and transcribed once.
    assert len(fake_requests(fake, "/v1/audio/transcriptions", server.provider_key)) == 1


def test_test_client_fails_when_a_check_fails(
    server_factory: Callable[..., RunningServer], fake: FakeOpenAI, tmp_path: Path
) -> None:
    server = server_factory()
    script(fake, server.provider_key, transcription=[{"status": 500}] * 3)
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    result = run_test_client("--url", url, "--out", "reply.wav", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  spoken turn" in result.stdout and "transcription failed" in result.stdout
    assert "PASS  cancel" in result.stdout  # the other checks still ran


def test_test_client_reports_a_stopped_server(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    result = run_test_client("--url", url, cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert url in line and "connection refused" in line and "make run" in line


def test_test_client_interactive_mode(
    server_factory: Callable[..., RunningServer], fake: FakeOpenAI, tmp_path: Path
) -> None:
    server = server_factory()
    script(fake, server.provider_key, transcription=[{"text": "Hello there."}] * 2)
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    hello = ROOT / "tests" / "fixtures" / "hello.wav"
    noise = ROOT / "tests" / "fixtures" / "noise.wav"
    lines = f"What time is it?\n/wav {hello}\n/wav missing.wav\n/wav {noise}\n/quit\n"
    result = run_test_client("-i", "--no-play", "--url", url, "--out", "last.wav", cwd=tmp_path, stdin=lines)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "assistant> You said: What time is it?. That is all I have to say." in out
    assert "you (heard): Hello there." in out and "assistant> You said: Hello there." in out
    assert "cannot read missing.wav" in out
    assert "(no speech detected in the recording)" in out
    assert wav_seconds(tmp_path / "last.wav") > 1


def test_both_clients_switch_to_openai_with_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-user-key")
    monkeypatch.setenv("USE_LOCAL_SERVER", "false")
    settings, _ = voice_chat.parse_args([])
    assert (settings.url, settings.api_key) == ("wss://api.openai.com/v1/realtime", "sk-user-key")
    args = scripted.parse_args([])
    assert (args.url, args.api_key) == ("wss://api.openai.com/v1/realtime", "sk-user-key")
    monkeypatch.delenv("USE_LOCAL_SERVER")
    settings, _ = voice_chat.parse_args(["--input-device", "2", "--output-device", "USB"])
    # The local server never gets the user's OpenAI key.
    assert (settings.url, settings.api_key) == ("ws://localhost:8000/v1/realtime", "local")
    assert (settings.input_device, settings.output_device) == (2, "USB")
    assert scripted.parse_args(["--openai"]).url == "wss://api.openai.com/v1/realtime"
