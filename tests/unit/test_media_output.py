"""The session core of a media transport (WebRTC): reply audio as track commands instead of delta events, the
output buffer's events from the track's reports, `output_audio_buffer.clear`, and truncation to what was played."""

from __future__ import annotations

import json
from typing import Any

from realtime_session import RealtimeSession
from session.commands import AudioOutput, ClearAudio, EndAudio, PlayAudio
from session.output_audio import OutputBufferState, PlayedAudio
from tests.support.realtime_client import validate_server_event
from tests.support.session_core import DEFAULTS

SECOND_OF_AUDIO = bytes(48_000)  # PCM16 24 kHz


def track_session(audio_output: AudioOutput = AudioOutput.TRACK) -> RealtimeSession:
    session = RealtimeSession(DEFAULTS, "ga", audio_output=audio_output)
    session.open()
    session.take_events()
    session.take_commands()
    return session


def events_of(session: RealtimeSession) -> list[dict[str, Any]]:
    events = session.take_events()
    for event in events:
        validate_server_event(event, "ga")
    return events


def spoken_reply(session: RealtimeSession, seconds: int = 2) -> tuple[str, str]:
    session.receive(json.dumps({"type": "response.create"}))
    response_id = events_of(session)[-1]["response"]["id"]
    session.take_commands()
    session.on_transcript(response_id, "One two three four.")
    for _ in range(seconds):
        session.on_audio(response_id, SECOND_OF_AUDIO)
    item_id = next(e for e in events_of(session) if e["type"] == "response.output_item.added")["item"]["id"]
    return response_id, item_id


def test_reply_audio_goes_to_the_track_not_into_events() -> None:
    session = track_session()
    response_id, item_id = spoken_reply(session)
    plays = [command for command in session.take_commands() if isinstance(command, PlayAudio)]
    assert plays and all(play.item_id == item_id and play.response_id == response_id for play in plays)
    assert sum(len(play.audio) for play in plays) > 90_000  # most of 2 s (the resampler holds a little back)
    session.on_response_done(response_id, None, "stop")
    events = events_of(session)
    assert "response.output_audio.delta" not in [event["type"] for event in events]
    assert events[-1]["type"] == "response.done"
    assert any(isinstance(command, EndAudio) for command in session.take_commands())


def test_the_tracks_reports_become_output_buffer_events() -> None:
    session = track_session()
    response_id, _ = spoken_reply(session)
    session.on_output_audio_started(response_id)
    assert session._output.state is OutputBufferState.PLAYING
    session.on_output_audio_stopped(response_id)
    started, stopped = events_of(session)
    assert started == {**started, "type": "output_audio_buffer.started", "response_id": response_id}
    assert stopped["type"] == "output_audio_buffer.stopped" and stopped["response_id"] == response_id
    assert session._output.state is OutputBufferState.IDLE


def test_clear_cuts_the_track_and_truncates_to_what_played() -> None:
    session = track_session()
    response_id, item_id = spoken_reply(session)
    session.on_output_audio_started(response_id)
    events_of(session)
    session.take_commands()
    session.receive(json.dumps({"type": "output_audio_buffer.clear", "event_id": "evt_1"}))
    assert events_of(session) == []
    assert any(isinstance(command, ClearAudio) for command in session.take_commands())
    session.on_output_audio_cleared(PlayedAudio(response_id, item_id, 700.0))
    truncated, cleared = events_of(session)
    assert truncated["type"] == "conversation.item.truncated" and truncated["audio_end_ms"] == 700
    assert cleared["type"] == "output_audio_buffer.cleared" and cleared["response_id"] == response_id
    assert session.conversation.get(item_id).audio_ms == 700  # type: ignore[union-attr]


def test_speech_over_the_reply_clears_the_track_even_after_generation_ended() -> None:
    session = track_session()
    response_id, item_id = spoken_reply(session)
    session.on_response_done(response_id, None, "stop")
    session.on_output_audio_started(response_id)
    events_of(session)
    session.take_commands()
    session.on_speech_started(100.0)
    assert any(isinstance(command, ClearAudio) for command in session.take_commands())
    session.on_output_audio_cleared(None)  # nothing was left to play: nothing is said about it
    assert [event["type"] for event in events_of(session)] == ["input_audio_buffer.speech_started"]


def test_output_audio_buffer_clear_is_an_error_on_a_websocket() -> None:
    session = track_session(AudioOutput.EVENTS)
    session.receive(json.dumps({"type": "output_audio_buffer.clear", "event_id": "evt_2"}))
    (error,) = events_of(session)
    assert error["type"] == "error" and error["error"]["event_id"] == "evt_2"


def test_media_audio_goes_through_the_input_path() -> None:
    session = track_session()
    session.append_media_audio(bytes(4800))  # 100 ms at 24 kHz
    commands = session.take_commands()
    assert commands and type(commands[0]).__name__ == "FeedAudio"
    session.receive(json.dumps({"type": "input_audio_buffer.commit"}))
    assert "input_audio_buffer.committed" in [event["type"] for event in events_of(session)]
