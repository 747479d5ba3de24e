"""The TTS text splitter: a reply's first clause goes to the TTS as soon as it is complete, then whole sentences."""

from __future__ import annotations

import pytest

from providers.tts import FirstClauseAggregator


async def split(chunks: list[str]) -> list[str]:
    aggregator = FirstClauseAggregator()
    pieces = []
    for chunk in chunks:
        pieces += [aggregation.text async for aggregation in aggregator.aggregate(chunk)]
    rest = await aggregator.flush()
    return [*pieces, *([rest.text] if rest else [])]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (
            ["The weather in Paris today", " is sunny, with a high", " of 20 degrees. Enjoy", " it! Bye"],
            ["The weather in Paris today is sunny,", "with a high of 20 degrees.", "Enjoy it!", "Bye"],
        ),
        (["It costs 1,000 euros, roughly. ", "Yes."], ["It costs 1,000 euros,", "roughly.", "Yes."]),
        (["Hi, there. How are you?"], ["Hi, there.", "How are you?"]),  # a clause too short to split off
        (
            ["今天天气很好，", "阳光明媚。", "我们去公园吧！", "好"],
            ["今天天气很好，", "阳光明媚。", "我们去公园吧！", "好"],
        ),
        (["你好，世界"], ["你好，世界"]),  # 2 characters: too short to speak alone
    ],
)
async def test_first_clause_then_sentences(chunks: list[str], expected: list[str]) -> None:
    assert await split(chunks) == expected


async def test_each_reply_starts_afresh() -> None:
    aggregator = FirstClauseAggregator()
    for _ in range(2):
        pieces = [a.text async for a in aggregator.aggregate("Well, that depends on the day, I think. Yes.")]
        await aggregator.flush()
        assert pieces[0] == "Well, that depends on the day,"
