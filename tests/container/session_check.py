"""The session half of `make test-container` (tests/container/run.sh): the official SDK, from the host, against the
server in the container. Every server event is validated against the SDK's models (tests/support/realtime_client.py).

    python -m tests.container.session_check turns BASE_URL
        a text turn and a spoken turn (tests/fixtures/question.wav) on the image's own offline models;
    python -m tests.container.session_check shutdown BASE_URL READY_FILE
        starts a long answer, creates READY_FILE once it streams, then expects the graceful close that the container's
        stop must bring: the response fails, an `error` event says `server_shutting_down`, the socket closes with 1001.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sys
import time
from pathlib import Path

import numpy as np
import websockets

from tests.support.audio_fixtures import chunks, pcm24k, silence24k
from tests.support.realtime_client import RealtimeTestClient, connect


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def user_text(text: str) -> dict[str, object]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


async def text_turn(client: RealtimeTestClient) -> str:
    await client.send(user_text("What is the capital of France? Answer in one word."))
    await client.send(
        {"type": "response.create", "response": {"output_modalities": ["text"], "instructions": "Answer briefly."}}
    )
    done = (await client.until("response.done", timeout=120))[-1]["response"]
    assert done["status"] == "completed", done
    answer = done["output"][0]["content"][0]["text"]
    assert "paris" in answer.lower(), answer
    return answer


async def spoken_turn(client: RealtimeTestClient) -> tuple[str, str, float]:
    await client.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "You are a weather assistant. Answer in one short sentence that names the city and "
                "the weather.",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        }
    )
    await client.until("session.updated")
    for chunk in chunks(pcm24k("question.wav") + silence24k(800), 40, 48):
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
    events = await client.until("response.done", timeout=120)
    kinds = [event["type"] for event in events]
    assert "input_audio_buffer.speech_stopped" in kinds, kinds
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert {"weather", "today"} <= words(heard["transcript"]), heard["transcript"]
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    said = done["output"][0]["content"][0]["transcript"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    seconds = len(audio) / 48_000  # PCM16 mono at 24 kHz
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    rms_dbfs = 20 * np.log10(max(float(np.sqrt(np.mean(samples**2))), 1.0) / 32768) if len(samples) else -120.0
    # Speech, not silence, and about as long as its transcript (Piper speaks 2-4 words a second).
    assert said.strip() and rms_dbfs > -40 and seconds > 0.15 * len(said.split()), (said, seconds, rms_dbfs)
    return heard["transcript"], said, seconds


async def turns(base_url: str) -> None:
    async with connect(base_url) as client:
        await client.until("conversation.created")
        started = time.monotonic()
        answer = await text_turn(client)
        print(f"text turn: {answer!r} in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        heard, said, seconds = await spoken_turn(client)
        print(
            f"spoken turn: heard {heard!r}, answered {said!r} ({seconds:.1f} s of audio) in "
            f"{time.monotonic() - started:.1f} s"
        )


async def shutdown(base_url: str, ready_file: Path) -> None:
    async with connect(base_url) as client:
        await client.until("conversation.created")
        await client.send(user_text("Count from one to two hundred, as words, separated by commas."))
        await client.send(
            {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 2000}}
        )
        await client.until("response.output_text.delta", timeout=120)
        ready_file.touch()
        seen: list[dict[str, object]] = []
        try:
            while True:
                seen.append(await client.recv(timeout=30))
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
    types = [event["type"] for event in seen]
    assert code == 1001, (code, types)
    errors = [event["error"] for event in seen if event["type"] == "error"]
    assert [error["code"] for error in errors] == ["server_shutting_down"], errors  # type: ignore[index]
    done = next(event["response"] for event in seen if event["type"] == "response.done")
    assert done["status"] == "failed", done  # type: ignore[index]
    print(f"graceful stop: response failed, error server_shutting_down, close code {code}")


def main() -> None:
    command, base_url, *rest = sys.argv[1:]
    if command == "turns":
        asyncio.run(turns(base_url))
    elif command == "shutdown":
        asyncio.run(shutdown(base_url, Path(rest[0])))
    else:
        raise SystemExit(f"unknown command {command!r}: turns or shutdown")


if __name__ == "__main__":
    main()
