"""The session's `truncation` applied to a request, without a model: which units of the conversation a request keeps.

The token counts here are the window's own estimates (characters, calibrated by what the provider reported), and an
exact counter that counts characters the way a tokenizer counts tokens: one per four characters, a few per message.
The real tokenizer's counts are checked against the local model in `tests/test_context.py`."""

from __future__ import annotations

import pytest

from context_window import ContextOverflow, ContextWindow
from session.commands import ChatUnit, RunResponse, TruncationPolicy, Usage


def turn(index: int, words: int = 60) -> ChatUnit:
    text = " ".join(f"w{index}x{n}" for n in range(words))  # about 5 characters a word
    return ChatUnit((f"item_{index}",), [{"role": "user" if index % 2 == 0 else "assistant", "content": text}])


def run(units: list[ChatUnit], policy: TruncationPolicy, max_tokens: int = 100, in_band: bool = True) -> RunResponse:
    return RunResponse(
        response_id="resp_1",
        system=[{"role": "system", "content": "Be brief."}],
        units=units,
        tools=[],
        tool_choice="auto",
        max_tokens=max_tokens,
        temperature=0.8,
        modality="text",
        voice="alloy",
        speed=1.0,
        session_id="sess_1",
        truncation=policy,
        in_band=in_band,
    )


async def no_exact_count(_run: RunResponse) -> int | None:
    return None


async def four_chars_a_token(request: RunResponse) -> int:
    return sum(len(str(message["content"])) // 4 + 4 for message in request.messages)


async def calibrated(context: int) -> ContextWindow:
    """A window that has seen the provider count 4 characters a token (and 4 tokens a message) once."""
    window = ContextWindow(context, no_exact_count)
    probe = await window.fit(run([turn(0)], TruncationPolicy()))
    window.calibrate(probe, Usage(input_tokens=await four_chars_a_token(probe.run)))
    return window


async def test_auto_keeps_everything_that_fits_and_drops_the_oldest_when_it_does_not() -> None:
    window = await calibrated(1000)
    units = [turn(index) for index in range(4)]  # ~80 tokens each
    fitted = await window.fit(run(units, TruncationPolicy("auto")))
    assert fitted.run.units == units and fitted.dropped_items == 0
    units = [turn(index) for index in range(20)]  # ~1600 tokens: over the 900 the reply leaves
    fitted = await window.fit(run(units, TruncationPolicy("auto")))
    assert fitted.run.units == units[-len(fitted.run.units) :] and fitted.dropped_items > 0
    assert fitted.tokens_after <= 900 < fitted.tokens_after + 90  # it dropped just enough
    assert fitted.run.system == [{"role": "system", "content": "Be brief."}]  # the instructions always stay


async def test_disabled_fails_instead_of_dropping_and_names_the_setting() -> None:
    window = await calibrated(1000)
    with pytest.raises(ContextOverflow) as overflow:
        await window.fit(run([turn(index) for index in range(20)], TruncationPolicy("disabled")))
    assert "1000 tokens" in str(overflow.value) and "truncation" in str(overflow.value)
    fitted = await window.fit(run([turn(index) for index in range(4)], TruncationPolicy("disabled")))
    assert len(fitted.run.units) == 4


async def test_retention_ratio_cuts_once_and_then_keeps_the_prefix_stable() -> None:
    window = await calibrated(100_000)
    policy = TruncationPolicy("retention_ratio", 0.5, post_instructions_tokens=1000)
    units = [turn(index) for index in range(8)]  # ~800 tokens (~100 a turn): under the limit
    assert (await window.fit(run(units, policy))).dropped_items == 0
    units += [turn(8), turn(9), turn(10)]  # past 1000: one cut, down to half of it
    cut = await window.fit(run(units, policy))
    assert cut.dropped_items > 0 and cut.tokens_after <= 0.5 * 1000 + 20  # the instructions: a few tokens more
    first_kept = cut.run.units[0]
    for index in range(10, 14):  # the next turns keep the same beginning: the prompt cache stays warm
        units.append(turn(index))
        fitted = await window.fit(run(units, policy))
        assert fitted.run.units[0] == first_kept
    while (fitted := await window.fit(run(units, policy))).run.units[0] == first_kept:
        units.append(turn(len(units)))  # until the limit is passed again: then a new cut, further on
    assert units.index(fitted.run.units[0]) > units.index(first_kept)


async def test_an_out_of_band_response_leaves_the_cut_alone() -> None:
    window = await calibrated(100_000)
    policy = TruncationPolicy("retention_ratio", 0.5, post_instructions_tokens=1000)
    units = [turn(index) for index in range(12)]
    first = (await window.fit(run(units, policy))).run.units[0]
    out_of_band = await window.fit(run(units[-2:], policy, in_band=False))
    assert len(out_of_band.run.units) == 2
    assert (await window.fit(run(units, policy))).run.units[0] == first


async def test_a_tool_call_and_its_output_go_together() -> None:
    window = await calibrated(1000)
    call = ChatUnit(
        ("item_call", "item_output"),
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x " * 200},
        ],
    )
    units = [turn(0), call, *(turn(index) for index in range(1, 12))]
    fitted = await window.fit(run(units, TruncationPolicy("auto")))
    kept_ids = [item for unit in fitted.run.units for item in unit.item_ids]
    assert ("item_call" in kept_ids) == ("item_output" in kept_ids)


async def test_exact_counts_decide_near_the_limit() -> None:
    window = ContextWindow(1000, four_chars_a_token)  # uncalibrated: the estimate errs long (2.5 characters a token)
    units = [turn(index) for index in range(8)]  # ~800 tokens exactly, ~1300 estimated
    fitted = await window.fit(run(units, TruncationPolicy("auto")))
    assert fitted.dropped_items == 0 and fitted.tokens_after == await four_chars_a_token(run(units, TruncationPolicy()))


async def test_the_newest_turn_alone_too_long_fails() -> None:
    window = await calibrated(1000)
    with pytest.raises(ContextOverflow) as overflow:
        await window.fit(run([turn(0), turn(1, words=2000)], TruncationPolicy("auto")))
    assert "newest turn" in str(overflow.value)


async def test_images_count_by_their_token_cost() -> None:
    window = await calibrated(4000)
    picture = ChatUnit(
        ("item_image",),
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
    )
    text_only = await window.fit(run([turn(0)], TruncationPolicy()))
    with_image = await window.fit(run([picture, turn(0)], TruncationPolicy()))
    assert with_image.tokens_before - text_only.tokens_before >= 765
