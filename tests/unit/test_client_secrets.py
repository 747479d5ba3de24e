"""Client secrets as signed tokens: what one key signs, only that key accepts, until it expires; nothing else
(tampered, truncated, foreign, garbage) passes."""

from __future__ import annotations

import base64
import os

import pytest

from client_secrets import MAX_SECRET_CHARS, SecretSigner, SecretTooLarge

KEY = b"k" * 32
PATCH = {"type": "realtime", "instructions": "Be a pirate.", "tools": [{"type": "function", "name": "f"}]}


def test_a_secret_carries_its_configuration_to_any_holder_of_the_key() -> None:
    now = [1000.0]
    minted = SecretSigner(KEY, clock=lambda: now[0]).mint("realtime", PATCH, ttl_s=60)
    elsewhere = SecretSigner(KEY, clock=lambda: now[0])  # another worker or replica
    found = elsewhere.find(minted.value)
    assert found == minted and found.session_patch == PATCH and found.expires_at == 1060
    beta = elsewhere.mint("transcription", {"type": "transcription"}, temperature=0.6)
    assert elsewhere.find(beta.value) == beta and beta.initial_update().temperature == 0.6
    now[0] = 1059.9
    assert elsewhere.find(minted.value) is not None
    now[0] = 1060
    assert elsewhere.find(minted.value) is None


def test_tampered_foreign_and_garbage_secrets_are_refused() -> None:
    signer = SecretSigner(KEY)
    value = signer.mint("realtime", PATCH).value
    payload, mac = value.removeprefix("ek_").split(".")
    forged_patch = base64.urlsafe_b64encode(b'{"exp":9999999999}').rstrip(b"=").decode()
    candidates = [
        f"ek_{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{mac}",
        f"ek_{payload}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"ek_{forged_patch}.{mac}",
        f"ek_{payload}",
        f"ek_{payload}.",
        "ek_",
        "ek_.",
        "ek_é.ü",
        value + "=",
        "sk_" + value[3:],
        "ek_" + "A" * (MAX_SECRET_CHARS + 1) + "." + mac,
    ]
    for candidate in candidates:
        assert signer.find(candidate) is None, candidate
    assert SecretSigner(b"another key of 32 bytes........").find(value) is None
    assert signer.find(value) is not None


def test_a_configuration_too_large_for_a_header_is_refused_and_short_keys_are_not_taken() -> None:
    signer = SecretSigner(KEY)
    with pytest.raises(SecretTooLarge, match=r"session\.update"):
        signer.mint("realtime", {"type": "realtime", "instructions": base64.b64encode(os.urandom(6000)).decode()})
    plain = signer.mint("realtime", {"type": "realtime", "instructions": "Speak slowly. " * 800})
    assert len(plain.value) < 600  # 11 kB of plain instructions deflate to almost nothing
    with pytest.raises(ValueError):
        SecretSigner(b"short")
