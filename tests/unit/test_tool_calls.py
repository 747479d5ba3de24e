"""Tool calls written as text (by small local models) are recognised; everything else stays text."""

from __future__ import annotations

import json

import pytest

from tool_calls import TextToolCallFilter

TOOLS = {"get_weather", "set_timer"}


def run(deltas: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    filter_ = TextToolCallFilter(TOOLS)
    text, calls = "", []
    for output in [*(filter_.feed(delta) for delta in deltas), filter_.finish()]:
        text += output.text
        calls += [(call.name, json.loads(call.arguments)) for call in output.calls or []]
    return text, calls


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize(
    "written",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
    ],
)
def test_written_call_becomes_a_tool_call(written: str) -> None:
    assert run(pieces(written)) == ("", [("get_weather", {"city": "Paris"})])


def test_several_calls() -> None:
    written = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "set_timer", "arguments": {"minutes": 10}}</tool_call>'
    )
    assert run(pieces(written))[1] == [("get_weather", {"city": "Oslo"}), ("set_timer", {"minutes": 10})]
    listed = '[{"name": "get_weather", "arguments": {}}, {"name": "set_timer", "arguments": {"minutes": 1}}]'
    assert run(pieces(listed))[1] == [("get_weather", {}), ("set_timer", {"minutes": 1})]


@pytest.mark.parametrize(
    "answer",
    [
        "The weather in Paris is sunny.",
        '{"name": "unknown_tool", "arguments": {}}',  # not one of the offered tools: it is the answer
        '{"temperature": 21}',
        "{Paris} is lovely",
        "[1] First point",
        "```python\nprint('hi')\n```",
    ],
)
def test_other_text_passes_through_unchanged(answer: str) -> None:
    assert run(pieces(answer)) == (answer, [])


def test_plain_text_is_not_held_back() -> None:
    filter_ = TextToolCallFilter(TOOLS)
    assert filter_.feed("Sure").text == "Sure"
    assert filter_.feed(", {here}").text == ", {here}"


def test_a_reply_that_made_a_call_is_over() -> None:
    """Small models go on writing calls for other arguments after the first; those are not part of the reply."""
    filter_ = TextToolCallFilter(TOOLS)
    written = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    calls = [call for delta in pieces(written) for call in filter_.feed(delta).calls or []]
    assert [call.name for call in calls] == ["get_weather"] and filter_.ended
    later = filter_.feed('.json\n{"name": "get_weather", "arguments": {"city": "London"}}')
    assert later.text == "" and not later.calls
    assert filter_.finish().calls is None
