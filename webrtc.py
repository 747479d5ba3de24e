"""The WebRTC transport (`POST /v1/realtime/calls`): one peer connection per call, on aiortc.

A call plugs into the same seam as a WebSocket (`connection.RealtimeConnection`):

* `PeerChannel` is its `EventChannel`: the `oai-events` data channel carries the same JSON events both ways, and any
  sideband WebSockets (`/v1/realtime?call_id=…`) joined to the call see the same server events and send into the
  same session;
* the microphone's Opus track (48 kHz) is decoded, resampled to the session's input format and goes in as an append
  would (`RealtimeSession.append_media_audio`);
* `ReplyTrack` is the outgoing audio track (`transport.MediaOutput`): it plays the reply in real time, 20 ms a frame,
  and reports when a response's audio starts and stops playing and how much had played when it was cut, which is
  what the session's `output_audio_buffer.*` events and its truncation on barge-in are made from.

A call ends when its session does, when it is hung up, or when its peer disappears: the data channel or the peer
connection closes, ICE fails, no media arrives for `WEBRTC_PEER_TIMEOUT_S`, or it never connects within
`WEBRTC_CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from loguru import logger

from audio_utils import PIPELINE_OUTPUT_RATE, AudioFormat, StreamResampler, format_to_pcm, pcm_to_format
from connection import ConnectionLimits, RealtimeConnection
from protocol import ProtocolError, new_id
from realtime_session import RealtimeSession
from service_providers import Providers
from session.commands import EndAudio, PlayAudio
from session.output_audio import PlayedAudio
from transport import Ending, EventChannel

DATA_CHANNEL_LABEL = "oai-events"
FRAME_MS = 20
TRACK_RATE = PIPELINE_OUTPUT_RATE  # the reply track's frames; aiortc's Opus encoder takes them to 48 kHz
FRAME_BYTES = TRACK_RATE * FRAME_MS // 1000 * 2
MAX_BUFFERED_BYTES = 16 * 1024 * 1024  # a data channel that holds this much unsent has a peer that stopped reading


@dataclass(frozen=True)
class PeerSettings:
    """What a call's peer connection is built with (from `config.Settings`' `WEBRTC_*`)."""

    connect_timeout_s: float = 15.0
    peer_timeout_s: float = 10.0
    public_ip: str | None = None  # advertised beside the host's addresses (1:1 NAT, containers)
    max_queued_events: int = 10_000


class OfferError(Exception):
    """An offer the server cannot answer: the HTTP status and OpenAI's error body say why."""

    def __init__(self, message: str, code: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param


def check_offer(sdp: str) -> None:
    """Refuses what aiortc would fail on less clearly: not SDP, no audio, no Opus."""
    if not sdp.lstrip().startswith("v=0"):
        message = "The request body is not an SDP offer (it must start with 'v=0')."
        raise OfferError(message, "invalid_offer", param="sdp")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line makes it raise
        raise OfferError(f"The SDP offer could not be parsed: {exc}", "invalid_offer", param="sdp") from None
    audio = [media for media in description.media if media.kind == "audio"]
    if not audio:
        raise OfferError("The SDP offer has no audio m-line: the call needs one.", "invalid_offer", param="sdp")
    codecs = {codec.mimeType.lower() for media in audio for codec in media.rtp.codecs}
    if "audio/opus" not in codecs:
        names = ", ".join(sorted(codecs)) or "none"
        raise OfferError(
            f"The SDP offer's audio has no Opus codec (offered: {names}); this server speaks Opus.",
            "unsupported_codec",
            param="sdp",
        )


class PlaybackEvent(Enum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass
class _Chunk:
    response_id: str
    item_id: str
    pcm: bytearray  # PCM16 mono at TRACK_RATE


@dataclass
class TrackStats:
    """What a benchmark reads off a call: frames sent, and frames that found the reply's audio late."""

    frames: int = 0
    underruns: int = 0
    first_audio_at: float | None = None
    played_ms: dict[str, float] = field(default_factory=dict)


class ReplyTrack(MediaStreamTrack):
    """The reply's audio, paced in real time; silence between replies. See the module docstring."""

    kind = "audio"

    def __init__(self, report: Callable[[PlaybackEvent, str], None]) -> None:
        super().__init__()
        self._report = report
        self._chunks: deque[_Chunk] = deque()
        self._ended: set[str] = set()  # responses whose audio is all queued
        self._playing: str | None = None
        self._resamplers: dict[str, StreamResampler] = {}
        self._start: float | None = None
        self._timestamp = 0
        self.stats = TrackStats()

    # ---- transport.MediaOutput ---------------------------------------------------------------------------------

    def play(self, command: PlayAudio) -> None:
        pcm = format_to_pcm(command.audio, command.audio_format)
        if command.audio_format is not AudioFormat.PCM16:  # G.711 is 8 kHz
            resampler = self._resamplers.setdefault(
                command.response_id, StreamResampler(command.audio_format.sample_rate, TRACK_RATE)
            )
            pcm = resampler.process(pcm)
        if not pcm:
            return
        last = self._chunks[-1] if self._chunks else None
        if last is not None and last.item_id == command.item_id:
            last.pcm.extend(pcm)
        else:
            self._chunks.append(_Chunk(command.response_id, command.item_id, bytearray(pcm)))

    def end(self, command: EndAudio) -> None:
        self._resamplers.pop(command.response_id, None)
        if self._playing == command.response_id or any(c.response_id == command.response_id for c in self._chunks):
            self._ended.add(command.response_id)

    def clear(self) -> PlayedAudio | None:
        current = self._playing
        item_id = self._chunks[0].item_id if self._chunks else None
        response_id = current or (self._chunks[0].response_id if self._chunks else None)
        self._chunks.clear()
        self._ended.clear()
        self._resamplers.clear()
        self._playing = None
        if response_id is None:
            return None
        if item_id is None:  # it had just played out its last chunk: the stop is not reported yet
            item_id = next(reversed(self.stats.played_ms), "")
        return PlayedAudio(response_id, item_id, self.stats.played_ms.get(item_id, 0.0))

    # ---- aiortc ------------------------------------------------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._timestamp += FRAME_BYTES // 2
            delay = self._start + self._timestamp / TRACK_RATE - now
            if delay > 0:
                await asyncio.sleep(delay)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_BYTES // 2)
        frame.planes[0].update(self._next_frame())
        frame.pts = self._timestamp
        frame.sample_rate = TRACK_RATE
        frame.time_base = fractions.Fraction(1, TRACK_RATE)
        self.stats.frames += 1
        return frame

    def _next_frame(self) -> bytes:
        out = bytearray()
        while len(out) < FRAME_BYTES and self._chunks:
            chunk = self._chunks[0]
            if self._playing != chunk.response_id:
                self._finish_playing()
                self._playing = chunk.response_id
                self.stats.played_ms = {}  # what a clear reports is of the response playing
                if self.stats.first_audio_at is None:
                    self.stats.first_audio_at = time.monotonic()
                self._report(PlaybackEvent.STARTED, chunk.response_id)
            take = bytes(chunk.pcm[: FRAME_BYTES - len(out)])
            del chunk.pcm[: len(take)]
            out.extend(take)
            played = self.stats.played_ms
            played[chunk.item_id] = played.get(chunk.item_id, 0.0) + len(take) / 2 / TRACK_RATE * 1000
            if not chunk.pcm:
                self._chunks.popleft()
        if not self._chunks and self._playing is not None:
            if self._playing in self._ended:
                self._finish_playing()
            elif len(out) < FRAME_BYTES:
                self.stats.underruns += 1  # the reply is not over and its audio is late
        return bytes(out) + bytes(FRAME_BYTES - len(out))

    def _finish_playing(self) -> None:
        playing, self._playing = self._playing, None
        if playing is not None:
            self._ended.discard(playing)
            self._report(PlaybackEvent.STOPPED, playing)


class PeerChannel:
    """The call's `EventChannel`: the `oai-events` data channel, and the sideband WebSockets joined to the call."""

    def __init__(self, max_queued_events: int) -> None:
        self._max_queued = max_queued_events
        self._incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._data: RTCDataChannel | None = None
        self._pending: list[str] = []  # events before the data channel opened
        self.sidebands: set[EventChannel] = set()
        self._closed = False
        self.on_close: Callable[[], object] | None = None

    def attach(self, data: RTCDataChannel) -> None:
        self._data = data

        @data.on("open")
        def _open() -> None:
            self._flush()

        @data.on("message")
        def _message(message: str | bytes) -> None:
            self._incoming.put_nowait(message)

        @data.on("close")
        def _close() -> None:
            self.peer_gone()

        if data.readyState == "open":
            self._flush()

    @property
    def is_open(self) -> bool:
        return self._data is not None and self._data.readyState == "open"

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for text in pending:
            self._send_data(text)

    def peer_gone(self) -> None:
        self._incoming.put_nowait(None)

    def inject(self, message: str | bytes) -> None:
        """A sideband WebSocket's client event, into the call's session."""
        self._incoming.put_nowait(message)

    async def start(self) -> None:
        return None

    async def receive(self) -> str | bytes | None:
        return await self._incoming.get()

    def send(self, text: str) -> bool:
        if self._closed:
            return True
        for sideband in list(self.sidebands):
            if not sideband.send(text):
                self.sidebands.discard(sideband)  # a sideband that stopped reading loses its place, not the call
        if not self.is_open:
            if len(self._pending) >= self._max_queued:
                return False
            self._pending.append(text)
            return True
        return self._send_data(text)

    def _send_data(self, text: str) -> bool:
        data = self._data
        if data is None or data.readyState != "open":
            return True
        if data.bufferedAmount > MAX_BUFFERED_BYTES:
            return False
        try:
            data.send(text)
        except ValueError as exc:  # larger than the peer's SCTP max-message-size (a retrieved item's audio, say)
            event_type = json.loads(text).get("type")
            error = ProtocolError(
                f"The server event {event_type} is too large for the data channel: {exc}",
                code="event_too_large",
                type="server_error",
            )
            data.send(json.dumps(error.to_event(), separators=(",", ":")))
        return True

    async def close(self, ending: Ending) -> None:
        if self._closed:
            return
        self._closed = True
        sidebands, self.sidebands = list(self.sidebands), set()
        await asyncio.gather(*(sideband.close(ending) for sideband in sidebands), return_exceptions=True)
        if self.on_close is not None:
            result = self.on_close()
            if asyncio.iscoroutine(result):
                await result


class CallState(Enum):
    CONNECTING = "connecting"  # answered; the data channel is not open yet
    CONNECTED = "connected"
    ENDED = "ended"


class WebRtcCall:
    """One call: its peer connection, its session's connection, and the tasks that move audio."""

    def __init__(
        self,
        session: RealtimeSession,
        providers: Providers,
        limits: ConnectionLimits,
        settings: PeerSettings,
    ) -> None:
        self.id = new_id("rtc")
        self.settings = settings
        self.state = CallState.CONNECTING
        self.channel = PeerChannel(settings.max_queued_events)
        self.track = ReplyTrack(self._on_playback)
        self.connection = RealtimeConnection(self.channel, session, providers, limits, media=self.track)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel.on_close = self._close_peer
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports: asyncio.Queue[tuple[PlaybackEvent, str]] = asyncio.Queue()
        self._media_seen = time.monotonic()
        self._receiving = False  # the microphone's track has started: its silence means the peer is gone
        self._wire_events()

    @property
    def session(self) -> RealtimeSession:
        return self.connection.session

    def _wire_events(self) -> None:
        pc = self.pc

        @pc.on("datachannel")
        def _datachannel(data: RTCDataChannel) -> None:
            if data.label != DATA_CHANNEL_LABEL:
                return
            self.channel.attach(data)
            self.state = CallState.CONNECTED

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self._read_audio(track), "webrtc-audio-in")

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.channel.peer_gone()

    def _spawn(self, coroutine: object, name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"{name}-{self.id}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, offer_sdp: str) -> str:
        """The SDP answer to the client's offer (ICE candidates included: aiortc gathers before answering)."""
        check_offer(offer_sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            self.pc.addTrack(self.track)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except (ValueError, KeyError) as exc:
            await self.pc.close()
            raise OfferError(f"The SDP offer cannot be answered: {exc}", "invalid_offer", param="sdp") from None
        sdp = self.pc.localDescription.sdp
        return advertise(sdp, self.settings.public_ip)

    async def run(self) -> None:
        """Serves the call until it ends; nothing of it outlives this."""
        self._spawn(self._report_playback(), "webrtc-playback")
        self._spawn(self._watch_peer(), "webrtc-watchdog")
        try:
            await self.connection.run()
        finally:
            self.state = CallState.ENDED
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_peer()
            self.track.stop()

    async def hangup(self) -> None:
        await self.connection.end(Ending.CLIENT_LEFT)

    async def _close_peer(self) -> None:
        with contextlib.suppress(Exception):
            await self.pc.close()

    async def _watch_peer(self) -> None:
        """Ends a call whose peer never connected, or whose media stopped (a closed tab, a lost network)."""
        connect_deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if self.state is CallState.CONNECTING and now > connect_deadline:
                logger.info(f"Call {self.id}: the peer did not connect in {self.settings.connect_timeout_s:g}s")
                self.channel.peer_gone()
                return
            if self._receiving and now - self._media_seen > self.settings.peer_timeout_s:
                logger.info(f"Call {self.id}: no media from the peer for {self.settings.peer_timeout_s:g}s")
                self.channel.peer_gone()
                return

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        """The microphone into the session's input, as an append would put it."""
        await self.connection.opened.wait()
        self._receiving = True
        resampler: av.AudioResampler | None = None
        rate = 0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.channel.peer_gone()
                return
            self._media_seen = time.monotonic()
            audio_format = self.session.input_format
            if resampler is None or rate != audio_format.sample_rate:
                rate = audio_format.sample_rate
                resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            pcm = b"".join(out.to_ndarray().tobytes() for out in resampler.resample(frame))
            if pcm:
                self.session.append_media_audio(pcm_to_format(pcm, audio_format))
                await self.connection.pump()

    def _on_playback(self, event: PlaybackEvent, response_id: str) -> None:
        self._reports.put_nowait((event, response_id))

    async def _report_playback(self) -> None:
        while True:
            event, response_id = await self._reports.get()
            if event is PlaybackEvent.STARTED:
                self.session.on_output_audio_started(response_id)
            else:
                self.session.on_output_audio_stopped(response_id)
            await self.connection.pump()


def advertise(sdp: str, public_ip: str | None) -> str:
    """Adds, for each host candidate, the same candidate at `public_ip` (a 1:1 NAT or a container's published
    ports: the host's own addresses are not reachable from the browser there)."""
    if not public_ip:
        return sdp
    lines = sdp.split("\r\n")
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line.split(" ")
            if len(parts) > 5 and parts[4] != public_ip:
                parts[0] = parts[0] + "p"  # a foundation of its own
                parts[4] = public_ip
                out.append(" ".join(parts))
    return "\r\n".join(out)
