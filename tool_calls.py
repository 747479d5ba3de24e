"""Tool calls that a model wrote as text instead of as structured `tool_calls`. Pure: text in, pieces out.

Small local models (Qwen2.5 0.5B through llama.cpp, say) often answer a prompt that offers tools with a JSON object
such as `{"name": "get_weather", "arguments": {"city": "Paris"}}`, bare, in a ```json fence, or between
`<tool_call>` tags, in the text of their reply. `TextToolCallFilter` watches the start of a reply: text that cannot
be such a call passes through at once; text that might be one is held until it is known, and a call naming one of
the offered tools comes out as a tool call instead of text. A reply that made a call is over (`ended`), as a
structured tool call ends one: such models tend to go on writing calls for other arguments until their token limit.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

# What a written tool call can start with, once leading whitespace is skipped.
_OPENERS = ("<tool_call>", "```json", "```", "{", "[")
# A bare JSON call begins `{"` or `[{`; anything else after the brace is ordinary text.
_NOT_JSON_CALL = re.compile(r'^\{\s*[^\s"]|^\[\s*[^\s{]')
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class TextToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as in a structured tool call


@dataclass
class FilterOutput:
    text: str = ""
    calls: list[TextToolCall] | None = None


class TextToolCallFilter:
    """Feed it a reply's text deltas; it returns the text to pass on and any tool calls it recognised."""

    def __init__(self, tool_names: set[str]) -> None:
        self._tool_names = tool_names
        self._held = ""
        self._deciding = True  # still at the start of the reply, where a written call would be
        self.ended = False  # a call was recognised: what the model writes after it is dropped

    def feed(self, delta: str) -> FilterOutput:
        if self.ended:
            return FilterOutput()
        if not self._deciding:
            return FilterOutput(text=delta)
        self._held += delta
        start = self._held.lstrip()
        if not start:
            return FilterOutput()
        could_open = any(opener.startswith(start[: len(opener)]) or start.startswith(opener) for opener in _OPENERS)
        if not could_open or _NOT_JSON_CALL.match(start):
            return self._release()
        if start.startswith("<tool_call>"):
            return FilterOutput()  # tagged calls may follow one another: decided when the reply ends
        calls = _parse_calls(start, self._tool_names)
        if calls:
            return self._called(calls)
        if _complete(start):
            return self._release()  # a finished JSON object or fence that is not a call: it is the answer
        return FilterOutput()

    def finish(self) -> FilterOutput:
        """The reply ended: what is still held is a call if it parses as one, else text."""
        if self.ended or not self._deciding or not self._held:
            return FilterOutput()
        calls = _parse_calls(self._held.strip(), self._tool_names)
        if calls:
            return self._called(calls)
        return self._release()

    def _called(self, calls: list[TextToolCall]) -> FilterOutput:
        self._held = ""
        self._deciding = False
        self.ended = True
        return FilterOutput(calls=calls)

    def _release(self) -> FilterOutput:
        text, self._held = self._held, ""
        self._deciding = False
        return FilterOutput(text=text)


def _complete(text: str) -> bool:
    """Whether the held text is a whole JSON value or fence (so no longer a call in progress)."""
    if text.startswith("```"):
        return text.count("```") >= 2
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse_calls(text: str, tool_names: set[str]) -> list[TextToolCall] | None:
    candidates: list[str]
    if text.startswith("<tool_call>"):
        candidates = _TAGGED.findall(text)
        if not candidates or not text.rstrip().endswith("</tool_call>"):
            return None
    else:
        fence = _FENCE.match(text)
        candidates = [fence.group(1) if fence else text]
    calls: list[TextToolCall] = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            return None
        for entry in value if isinstance(value, list) else [value]:
            call = _as_call(entry, tool_names)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _as_call(entry: Any, tool_names: set[str]) -> TextToolCall | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("function"), dict):  # {"type": "function", "function": {"name", "arguments"}}
        entry = entry["function"]
    name = entry.get("name")
    if name not in tool_names:
        return None
    arguments = entry.get("arguments", entry.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except ValueError:
            return None
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return TextToolCall(call_id=f"call_{secrets.token_hex(12)}", name=name, arguments=arguments)
