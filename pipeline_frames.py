"""The frames our pipeline adds to Pipecat's: a response's request, its boundaries, and what it produced.

They are `DataFrame`s so that they keep their order relative to the audio around them: Pipecat's TTS services
queue such frames behind the audio still being generated, so a `ResponseEndFrame` reaches the transport only after
the last audio of its response.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame, SystemFrame

from session.commands import ProviderFailure, RunResponse, Transcribe, Usage


@dataclass
class ResponseRequestFrame(DataFrame):
    """Ask the LLM processor to generate a response."""

    run: RunResponse


@dataclass
class ResponseStartFrame(DataFrame):
    """Everything after this frame (until the matching end) belongs to `response_id`."""

    response_id: str


@dataclass
class ResponseMessageStartFrame(DataFrame):
    """The LLM started writing the reply's text (the assistant message opens before its audio is ready)."""

    response_id: str


@dataclass
class ResponseTextFrame(DataFrame):
    """A text delta of a text-only response (not spoken, so it bypasses the TTS)."""

    response_id: str
    text: str


@dataclass
class ResponseToolCallFrame(DataFrame):
    """A streamed piece of a tool call: `index` tells the calls of one response apart. (Not `name`: every Pipecat
    frame has a `name` of its own.)"""

    response_id: str
    index: int
    call_id: str | None
    tool_name: str | None
    arguments: str


@dataclass
class ResponseEndFrame(DataFrame):
    """The LLM finished (or failed); arrives after all of the response's audio."""

    response_id: str
    usage: Usage | None = None
    finish_reason: str | None = None
    failure: ProviderFailure | None = None


@dataclass
class TranscribeFrame(SystemFrame):
    """Transcribe a committed user turn. A system frame: a response being cancelled must not drop it."""

    request: Transcribe
