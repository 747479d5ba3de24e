"""A WebRTC client for tests and benchmarks: a real aiortc peer connection, as a browser makes one.

It offers a microphone track (PCM fed by the test, paced in real time, silence otherwise) and the `oai-events` data
channel, posts the offer through the official SDK (`client.realtime.calls.create`, multipart with a `session`) or as
the raw `application/sdp` body agents-js sends, and records what comes back: every data-channel event (validated
against the SDK's GA models) and the reply track's audio, decoded.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import deque
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from openai import AsyncOpenAI

from audio_utils import resample
from tests.support.realtime_client import validate_server_event

MIC_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms


class Microphone(MediaStreamTrack):
    """What the test says, in real time: 20 ms frames of what was fed, silence between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[bytes] = deque()
        self._start: float | None = None
        self._timestamp = 0
        self.fed_until = 0.0  # monotonic time the audio fed so far will have been sent by

    def say(self, pcm24k: bytes) -> float:
        """Queues speech (PCM16 mono 24 kHz); returns the time its last frame goes out."""
        pcm = resample(pcm24k, 24_000, MIC_RATE)
        step = FRAME_SAMPLES * 2
        for offset in range(0, len(pcm), step):
            self._queue.append(pcm[offset : offset + step].ljust(step, b"\0"))
        self.fed_until = max(self.fed_until, time.monotonic()) + len(pcm) / 2 / MIC_RATE
        return self.fed_until

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._timestamp += FRAME_SAMPLES
            delay = self._start + self._timestamp / MIC_RATE - now
            if delay > 0:
                await asyncio.sleep(delay)
        data = self._queue.popleft() if self._queue else bytes(FRAME_SAMPLES * 2)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(data)
        frame.pts = self._timestamp
        frame.sample_rate = MIC_RATE
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        return frame


class WebRtcTestClient:
    """One call from the client's side."""

    def __init__(self, base_url: str, api_key: str = "dummy") -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = Microphone()
        self.pc.addTrack(self.mic)
        self.data = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.audio = bytearray()  # the reply track, PCM16 mono 48 kHz, silence included
        self.audio_arrivals: list[tuple[float, float]] = []  # (monotonic time, peak) per received frame
        self.location = ""
        self.call_id = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.opened = asyncio.Event()

        @self.data.on("open")
        def _open() -> None:
            self.opened.set()

        @self.data.on("message")
        def _message(message: str | bytes) -> None:
            event = json.loads(message)
            validate_server_event(event, "ga")
            self.events.append(event)
            self._incoming.put_nowait(event)

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=MIC_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                self.audio.extend(samples.tobytes())
                peak = float(np.abs(samples.astype(np.int32)).max()) if samples.size else 0.0
                self.audio_arrivals.append((time.monotonic(), peak))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect_sdk(self, session: dict[str, Any] | None = None, model: str | None = None) -> None:
        """Posts the offer as the Python SDK does (multipart: `sdp` and `session` parts)."""
        client = AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0)
        kwargs: dict[str, Any] = {"sdp": await self.offer()}
        if session is not None:
            kwargs["session"] = session
        extra = {"extra_query": {"model": model}} if model else {}
        response = await client.realtime.calls.with_raw_response.create(**kwargs, **extra)
        assert response.status_code == 201, response.status_code
        assert response.headers["content-type"].startswith("application/sdp")
        await self._answered(response.headers["location"], response.content.decode())

    async def connect_raw(self, model: str | None = None) -> httpx.Response:
        """Posts the offer as agents-js does (`application/sdp`, `Authorization: Bearer`)."""
        sdp = await self.offer()
        params = {"model": model} if model else {}
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{self.base_url}/v1/realtime/calls",
                params=params,
                content=sdp,
                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.api_key}"},
            )
        if response.status_code == 201:
            await self._answered(response.headers["location"], response.text)
        return response

    async def _answered(self, location: str, answer: str) -> None:
        self.location = location
        self.call_id = location.rsplit("/", 1)[-1]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.wait_for(self.opened.wait(), 15)

    def send(self, event: dict[str, Any]) -> None:
        self.data.send(json.dumps(event))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._incoming.get(), timeout)

    async def until(self, event_type: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        received = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(timeout=max(0.01, deadline - loop.time()))
            received.append(event)
            if event["type"] == event_type:
                return received

    def audible_ms(self, since_byte: int = 0, threshold: int = 500) -> float:
        """How much of the received audio (from `since_byte`) is not silence, in ms."""
        samples = np.frombuffer(bytes(self.audio[since_byte:]), dtype=np.int16)
        frames = samples[: len(samples) // 960 * 960].reshape(-1, 960)
        loud = int((np.abs(frames.astype(np.int32)).max(axis=1) > threshold).sum()) if len(frames) else 0
        return loud * 20.0

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


async def _hold_a_call(base_url: str) -> None:
    client = WebRtcTestClient(base_url)
    await client.connect_sdk(session={"type": "realtime"})
    await client.until("session.created")
    print("connected", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    # A peer that a test kills (`tests/test_webrtc.py`): it vanishes without closing anything, as a crashed tab does.
    import sys

    asyncio.run(_hold_a_call(sys.argv[1]))
