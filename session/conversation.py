"""A session's conversation: ordered items, what the LLM sees of them, and what the user heard of the replies.

Pure data structures, no I/O: the session core (`realtime_session.py` and its parts) owns one `Conversation`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from audio_utils import AudioFormat, encode_base64
from protocol import JsonDict
from session.commands import ChatUnit

ROOT = "root"


@dataclass
class SpokenSegment:
    """A piece of an assistant reply's transcript and where its audio starts (ms into the item's audio)."""

    start_ms: float
    text: str


@dataclass
class StoredItem:
    """A conversation item plus what the server keeps beside it: the audio it carried, and for assistant audio,
    which text was spoken when (to cut the transcript to what the user heard on truncation)."""

    item: JsonDict
    audio: bytearray = field(default_factory=bytearray)
    audio_format: AudioFormat = AudioFormat.PCM16
    spoken: list[SpokenSegment] = field(default_factory=list)
    released_ms: float = 0.0  # audio dropped to bound memory: still counted in `audio_ms`

    @property
    def id(self) -> str:
        return self.item["id"]

    @property
    def audio_ms(self) -> float:
        return self.released_ms + self.audio_format.duration_ms(len(self.audio))

    @property
    def retained_ms(self) -> float:
        return self.audio_format.duration_ms(len(self.audio))

    def audio_part_index(self) -> int:
        """Where the item's audio is (a committed turn has only that; a client-made item may have text first)."""
        return next((i for i, part in enumerate(self.item.get("content", [])) if part["type"] == "input_audio"), 0)

    def release_audio(self) -> None:
        """Forgets the audio bytes (a retrieve no longer returns them); its length stays known for truncation."""
        self.released_ms = self.audio_ms
        self.audio = bytearray()

    def with_audio(self) -> JsonDict:
        """The item as `conversation.item.retrieved` shows it: audio included, base64 in its wire format."""
        if not self.audio:
            return self.item
        item = dict(self.item)
        content = [dict(part) for part in item.get("content", [])]
        for part in content:
            if part["type"] in ("input_audio", "output_audio"):
                part["audio"] = encode_base64(bytes(self.audio))
                break
        item["content"] = content
        return item


class Conversation:
    """Items in conversation order, with lookup by id."""

    def __init__(self) -> None:
        self._order: list[str] = []
        self._items: dict[str, StoredItem] = {}

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __len__(self) -> int:
        return len(self._order)

    def get(self, item_id: str) -> StoredItem | None:
        return self._items.get(item_id)

    def last_id(self) -> str | None:
        return self._order[-1] if self._order else None

    def previous_id(self, item_id: str) -> str | None:
        index = self._order.index(item_id)
        return self._order[index - 1] if index > 0 else None

    def ids(self) -> list[str]:
        return list(self._order)

    def items(self) -> list[JsonDict]:
        return [self._items[item_id].item for item_id in self._order]

    def add(self, stored: StoredItem, after: str | None = None) -> str | None:
        """Inserts an item after `after` (`ROOT`: first; `None`: last). Returns the id of the item before it."""
        if after is None:
            previous = self.last_id()
            self._order.append(stored.id)
        elif after == ROOT:
            previous = None
            self._order.insert(0, stored.id)
        else:
            index = self._order.index(after)
            previous = after
            self._order.insert(index + 1, stored.id)
        self._items[stored.id] = stored
        return previous

    def delete(self, item_id: str) -> None:
        self._order.remove(item_id)
        del self._items[item_id]

    def limit_audio(self, max_ms: float) -> None:
        """Keeps at most `max_ms` of item audio, the most recent: older items' audio is released."""
        total = sum(self._items[item_id].retained_ms for item_id in self._order)
        for item_id in self._order:
            if total <= max_ms:
                return
            stored = self._items[item_id]
            total -= stored.retained_ms
            stored.release_audio()


# --------------------------------------------------------------------------------------------------------------
# What the LLM sees
# --------------------------------------------------------------------------------------------------------------


def item_text(item: JsonDict) -> str:
    """The text of a message item: its text parts and audio transcripts, in order."""
    pieces = []
    for part in item.get("content", []):
        text = part.get("text") if part["type"] in ("input_text", "output_text") else part.get("transcript")
        if text:
            pieces.append(text)
    return "\n".join(pieces)


def chat_messages(items: list[JsonDict], instructions: str) -> list[JsonDict]:
    """The conversation as an OpenAI chat-completions message list, the instructions first."""
    system = [{"role": "system", "content": instructions}] if instructions else []
    return [*system, *(message for unit in chat_units(items) for message in unit.messages)]


def chat_units(items: list[JsonDict]) -> list[ChatUnit]:
    """The conversation as the chat messages the LLM sees, in units that truncation keeps whole.

    Chat APIs require every assistant tool call to be answered by a tool message right after it, so a call's
    output is moved next to its call; calls not answered yet are left out, and an output whose call is not in
    the conversation is given to the model as a plain note.
    """
    outputs = {item["call_id"]: item for item in items if item["type"] == "function_call_output"}
    rejections = {
        item["approval_request_id"]: item
        for item in items
        if item["type"] == "mcp_approval_response" and not item.get("approve")
    }
    calls = {item["call_id"] for item in items if item["type"] == "function_call"}
    units: list[ChatUnit] = []
    pending: JsonDict | None = None  # the assistant message being built: text and tool calls
    pending_outputs: list[JsonDict] = []
    pending_ids: list[str] = []

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            units.append(ChatUnit(tuple(pending_ids), [pending, *pending_outputs]))
        pending = None
        pending_outputs.clear()
        pending_ids.clear()

    for item in items:
        kind = item["type"]
        if kind == "message":
            role = item["role"]
            flush()
            if role == "assistant":
                text = item_text(item)
                if text:
                    pending = {"role": "assistant", "content": text}
                    pending_ids.append(item.get("id", ""))
                continue
            content = _user_or_system_content(item) if role == "user" else item_text(item)
            if content:
                units.append(ChatUnit((item.get("id", ""),), [{"role": role, "content": content}]))
        elif kind == "function_call":
            call_id = item["call_id"]
            if call_id not in outputs:
                continue
            if pending is None:
                pending = {"role": "assistant", "content": None}
            pending.setdefault("tool_calls", []).append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"] or "{}"},
                }
            )
            pending_outputs.append({"role": "tool", "tool_call_id": call_id, "content": outputs[call_id]["output"]})
            pending_ids.extend((item.get("id", ""), outputs[call_id].get("id", "")))
        elif kind in ("mcp_call", "mcp_approval_request"):
            answer = _mcp_answer(item, rejections)
            if answer is None:
                continue  # not run yet, or waiting for the client's approval: nothing the model can use
            if pending is None:
                pending = {"role": "assistant", "content": None}
            name = mcp_chat_name(item["server_label"], item["name"])
            pending.setdefault("tool_calls", []).append(
                {
                    "id": item["id"],
                    "type": "function",
                    "function": {"name": name, "arguments": item["arguments"] or "{}"},
                }
            )
            pending_outputs.append({"role": "tool", "tool_call_id": item["id"], "content": answer})
            pending_ids.append(item.get("id", ""))
        elif kind == "function_call_output":
            if item["call_id"] in calls:
                continue  # placed right after its call
            flush()
            note = {"role": "system", "content": f"Result of tool call {item['call_id']}: {item['output']}"}
            units.append(ChatUnit((item.get("id", ""),), [note]))
    flush()
    return units


def _mcp_answer(item: JsonDict, rejections: dict[str, JsonDict]) -> str | None:
    """What the model is told an MCP call returned: its output, its error, or the client's refusal."""
    if item["type"] == "mcp_approval_request":
        rejection = rejections.get(item["id"])
        if rejection is None:
            return None
        reason = rejection.get("reason")
        return "Error: the user did not approve this call" + (f": {reason}" if reason else ".")
    if item.get("output") is not None:
        return str(item["output"])
    error = item.get("error")
    return f"Error: {error.get('message', '')}" if error else None


_CHAT_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def mcp_chat_name(server_label: str, tool: str) -> str:
    """The name the LLM calls an MCP tool by: unique per server label, in the characters chat APIs allow."""
    name = _CHAT_NAME_UNSAFE.sub("_", f"{server_label}__{tool}")
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:55]}_{digest}"


def _user_or_system_content(item: JsonDict) -> str | list[JsonDict]:
    parts: list[JsonDict] = []
    for part in item.get("content", []):
        if part["type"] == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}})
            continue
        text = part.get("text") if part["type"] == "input_text" else part.get("transcript")
        if text:
            parts.append({"type": "text", "text": text})
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def has_image(item: JsonDict) -> bool:
    return any(part["type"] == "input_image" for part in item.get("content", []))


def tools_for_chat(tools: list[JsonDict]) -> list[JsonDict]:
    """Realtime function tools (`{type, name, description, parameters}`) in chat-completions shape."""
    result = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        result.append({"type": "function", "function": function})
    return result


def tool_choice_for_chat(choice: str | JsonDict) -> str | JsonDict:
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        return choice  # in chat terms once the server's tools are listed (`ResponseStream._mcp_choice`)
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


# --------------------------------------------------------------------------------------------------------------
# What the user heard
# --------------------------------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")


def heard_text(segments: list[SpokenSegment], total_ms: float, cut_ms: float) -> str:
    """The transcript the user heard when playback stopped at `cut_ms`.

    Whole segments that ended before the cut are kept; the segment playing at the cut is kept in proportion to the
    time played, rounded down to a whole word (or character, for CJK text, which has no spaces).
    """
    heard = []
    for index, segment in enumerate(segments):
        end_ms = segments[index + 1].start_ms if index + 1 < len(segments) else total_ms
        if end_ms <= cut_ms:
            heard.append(segment.text)
            continue
        if segment.start_ms < cut_ms and end_ms > segment.start_ms:
            fraction = (cut_ms - segment.start_ms) / (end_ms - segment.start_ms)
            heard.append(_prefix(segment.text, fraction))
        break
    return "".join(heard)


def _prefix(text: str, fraction: float) -> str:
    keep = int(len(text) * fraction)
    if keep <= 0:
        return ""
    if _CJK.search(text):
        return text[:keep]
    # Cut at the end of the last word that was fully spoken.
    cut = text.rfind(" ", 0, keep + 1)
    return text[:cut] if cut > 0 else ""
