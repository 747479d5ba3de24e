"""The local LLM sends each conversation back to the llama.cpp slot that holds its cache, when that slot is free."""

from __future__ import annotations

from local_models import _SlotAffinity


def test_a_conversation_goes_back_to_its_slot_and_others_take_a_free_one() -> None:
    slots = _SlotAffinity(2)
    first = slots.acquire("sess_a")
    slots.release(first)
    other = slots.acquire("sess_b")
    assert slots.acquire("sess_a") != other  # its slot is busy: it takes the free one
    slots.release(0)
    slots.release(1)
    assert slots.acquire("sess_b") == other  # and each finds its own again
    assert slots.acquire(None) != other


def test_without_a_key_the_slot_freed_last_is_taken() -> None:
    slots = _SlotAffinity(3)
    taken = [slots.acquire(None) for _ in range(3)]
    assert sorted(taken) == [0, 1, 2]
    slots.release(taken[1])
    assert slots.acquire(None) == taken[1]
