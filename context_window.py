"""What of a session's conversation its next LLM request holds: the session's `truncation`, applied.

The conversation the client sees never changes; only the request does. `ContextWindow` (one per session, in its LLM
stage) fits a `RunResponse` into the model's context, leaving room for the reply (`max_tokens`, at most half the
context): the instructions and tools always stay, the oldest `ChatUnit`s go first, and a unit — a message, or a
tool call with its output — goes whole.

* `auto`: drop the oldest units until the request fits.
* `disabled`: never drop; a request that does not fit fails with `context_length_exceeded`.
* `retention_ratio`: once the conversation passes its limit (`post_instructions_tokens`, default all the context
  allows after the instructions), drop the oldest units until `retention_ratio` of the limit is left, in one cut,
  and keep that cut on the turns after: the request's beginning stays the same, so the provider's prompt cache
  keeps working, until the limit is passed again.

Token counts are estimates from the characters of each message, calibrated on what the provider reported for the
previous request (`usage.prompt_tokens`); when the estimate comes near the limit and the provider can count exactly
(the local model, by its own tokenizer), the decision is checked on exact counts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protocol import JsonDict
from session.commands import RunResponse, Usage

# Until the provider has reported a prompt's tokens: about 2.5 characters a token, so that the first estimate errs
# on the long side (English runs about 4, Chinese about 1.5).
INITIAL_TOKENS_PER_CHAR = 0.4
MESSAGE_OVERHEAD_TOKENS = 4  # a chat template's role markers and separators, per message
EXACT_CHECK_FRACTION = 0.8  # estimates above this share of the limit are checked by an exact count, where possible
ESTIMATE_MARGIN = 0.95  # the share of the limit a request aims for when only estimates are known

ExactCounter = Callable[[RunResponse], Awaitable[int | None]]  # the request's tokens, when the provider can count


class ContextOverflow(Exception):
    """The request cannot fit the context: truncation is disabled, or even the newest turn alone is too long."""

    def __init__(self, needed: int, limit: int, context: int, reserve: int, disabled: bool) -> None:
        self.needed, self.limit = needed, limit
        why = (
            "and the session's truncation is 'disabled': delete items (conversation.item.delete) or set "
            "session.truncation to 'auto'"
            if disabled
            else "even with only the newest turn: send a shorter message"
        )
        super().__init__(
            f"The conversation needs about {needed} tokens but the model's context ({context} tokens, {reserve} of "
            f"them kept for the reply) holds {limit}, {why}."
        )


@dataclass(frozen=True)
class Fitted:
    """The request as it goes to the provider, and what truncation did to it."""

    run: RunResponse
    dropped_items: int
    tokens_before: int
    tokens_after: int
    sent_chars: int  # what the calibration on the provider's answer compares its count with


class ContextWindow:
    def __init__(self, context_tokens: int, count_exactly: ExactCounter) -> None:
        self.context_tokens = context_tokens
        self._count_exactly = count_exactly
        self._tokens_per_char = INITIAL_TOKENS_PER_CHAR
        self._kept_from: str | None = None  # retention_ratio: the first item of the units the last cut kept

    async def fit(self, run: RunResponse) -> Fitted:
        """`run` with the units the request can hold; raises `ContextOverflow` when it cannot be made to fit."""
        policy = run.truncation
        reserve = min(run.max_tokens, self.context_tokens // 2)
        limit = self.context_tokens - reserve
        fixed = self._estimate(run.system, run.tools)
        sizes = [self._estimate(unit.messages) for unit in run.units]
        before = fixed + sum(sizes)
        exact = await self._count_exactly(run) if before > EXACT_CHECK_FRACTION * limit else None
        if exact is not None:
            # Near the limit the model's own count decides: the estimates are scaled to agree with it.
            scale = exact / before
            fixed, sizes, before = round(fixed * scale), [round(size * scale) for size in sizes], exact
        # On estimates alone, aim a little lower: the provider's tokenizer is not ours.
        budget = limit if exact is not None else int(ESTIMATE_MARGIN * limit)
        start = 0
        if policy.kind == "retention_ratio":
            start = self._remembered_start(run) if run.in_band else 0
            allowed = min(policy.post_instructions_tokens or budget - fixed, budget - fixed)
            if sum(sizes[start:]) > allowed:
                start = _cut(sizes, start, policy.retention_ratio * allowed)
        if policy.kind != "disabled":
            start = _cut(sizes, start, budget - fixed)
        needed = fixed + sum(sizes[start:])
        if needed > EXACT_CHECK_FRACTION * limit:
            start, needed = await self._check_exactly(run, start, needed, limit, policy.kind == "disabled")
        if needed > limit:
            raise ContextOverflow(needed, limit, self.context_tokens, reserve, policy.kind == "disabled")
        if policy.kind == "retention_ratio" and run.in_band:
            self._kept_from = run.units[start].item_ids[0] if start else None
        fitted = dataclasses.replace(run, units=run.units[start:])
        dropped = sum(len(unit.item_ids) for unit in run.units[:start])
        return Fitted(fitted, dropped, before, needed, _chars(fitted.messages, run.tools))

    def calibrate(self, fitted: Fitted, usage: Usage | None) -> None:
        """The provider counted the prompt: later estimates use its tokens per character."""
        if usage is None or usage.input_tokens <= 0 or fitted.sent_chars <= 0:
            return
        overhead = MESSAGE_OVERHEAD_TOKENS * len(fitted.run.messages)
        self._tokens_per_char = max(0.05, (usage.input_tokens - overhead) / fitted.sent_chars)

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _estimate(self, messages: list[JsonDict], tools: list[JsonDict] | None = None) -> int:
        chars = _chars(messages, tools or [])
        images = sum(_image_tokens(message) for message in messages)
        return int(chars * self._tokens_per_char) + images + MESSAGE_OVERHEAD_TOKENS * len(messages)

    def _remembered_start(self, run: RunResponse) -> int:
        """Where the last cut left the conversation (0 when it kept everything, or that item is gone)."""
        if self._kept_from is None:
            return 0
        return next((index for index, unit in enumerate(run.units) if self._kept_from in unit.item_ids), 0)

    async def _check_exactly(
        self, run: RunResponse, start: int, estimate: int, limit: int, disabled: bool
    ) -> tuple[int, int]:
        """The decision on exact counts, where the provider can count: drops more units while the request is still
        too long (never with truncation disabled). Returns the first unit kept and the request's tokens."""
        while True:
            exact = await self._count_exactly(dataclasses.replace(run, units=run.units[start:]))
            if exact is None:
                return start, estimate
            if exact <= limit or disabled or start >= len(run.units) - 1:
                return start, exact
            start += 1


def _cut(sizes: list[int], start: int, budget: float) -> int:
    """The first unit to keep, from `start` on, so that the units kept fit `budget` (the newest one always stays:
    a request needs something to answer)."""
    kept = sum(sizes[start:])
    while start < len(sizes) - 1 and kept > budget:
        kept -= sizes[start]
        start += 1
    return start


def _image_tokens(message: JsonDict) -> int:
    """What the images of a message cost, as OpenAI counts them: 85 tokens at low detail, about 765 for a picture
    of 512 by 1024 pixels at high (the provider's own count, in the calibration, corrects the rest)."""
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    images = [part for part in content if isinstance(part, dict) and part.get("type") == "image_url"]
    return sum(85 if (image.get("image_url") or {}).get("detail") == "low" else 765 for image in images)


def _chars(messages: list[JsonDict], tools: list[JsonDict]) -> int:
    """The characters a request spends on its messages and tools (the text, and the JSON of the tool calls)."""
    total = sum(len(json.dumps(tool, ensure_ascii=False)) for tool in tools)
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):  # text and image parts: an image's URL is not its cost, its text is
            total += sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
        if message.get("tool_calls"):
            total += len(json.dumps(message["tool_calls"], ensure_ascii=False))
    return total
