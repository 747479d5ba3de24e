"""Who may connect, decided without a server: the handshake's key and dialect, client secrets' expiry, and the one
decision (`AccessControl.admit`) each connection attempt gets."""

from __future__ import annotations

from access import AccessControl, Grant, Refusal, parse_handshake, session_limit
from client_secrets import SecretSigner

KEY = b"k" * 32


def test_parse_handshake_reads_key_from_header_or_subprotocol() -> None:
    handshake = parse_handshake({"authorization": "Bearer sk-header"}, ["realtime"])
    assert (handshake.api_key, handshake.dialect, handshake.subprotocol) == ("sk-header", "ga", "realtime")
    handshake = parse_handshake({}, ["openai-insecure-api-key.ek_123", "openai-beta.realtime-v1"])
    assert (handshake.api_key, handshake.dialect, handshake.subprotocol) == ("ek_123", "beta", None)


def test_client_secret_expiry_without_waiting() -> None:
    now = [1000.0]
    access = AccessControl({"k"}, set(), SecretSigner(KEY, clock=lambda: now[0]))
    secret = access.secrets.mint("realtime", {"type": "realtime"}, ttl_s=60)
    assert access.authorize(secret.value) is not None
    now[0] += 61
    assert access.authorize(secret.value) is None
    assert access.authorize("ek_unknown") is None and access.authorize("k") is not None


def test_one_decision_per_attempt_in_the_order_the_api_refuses() -> None:
    access = AccessControl({"sk-good"}, {"https://app.example.com"}, SecretSigner(KEY))

    def admit(origin: str | None, key: str | None, shutting_down: bool = False) -> object:
        return access.admit(origin, key, shutting_down=shutting_down)

    refused = admit("https://evil.example.com", "sk-good")
    assert isinstance(refused, Refusal) and (refused.status, refused.code) == (403, "origin_not_allowed")
    for key, words in ((None, "didn't provide"), ("sk-bad", "Incorrect"), ("ek_gone", "expired")):
        refused = admit(None, key)
        assert isinstance(refused, Refusal) and refused.status == 401 and words in refused.message
    refused = admit(None, "sk-good", shutting_down=True)
    assert isinstance(refused, Refusal) and (refused.status, refused.code) == (503, "server_shutting_down")
    refused = session_limit(2)
    assert (refused.status, refused.code, refused.type) == (503, "too_many_sessions", "server_error")
    assert admit("https://app.example.com/", "sk-good") == Grant(how="key")
    secret = access.secrets.mint("transcription", {"type": "transcription"})
    granted = admit(None, secret.value)
    assert isinstance(granted, Grant) and granted.secret == secret and granted.how == "client secret"
    assert access.may_mint("sk-good") and not access.may_mint(secret.value) and not access.may_mint(None)


def test_an_open_server_takes_anyone_but_an_unknown_secret_starts_plain() -> None:
    access = AccessControl(set(), set(), SecretSigner(KEY))
    assert access.open and access.may_mint("anything")
    assert access.admit(None, None, shutting_down=False) == Grant(how="open server")
    assert access.authorize("ek_unknown") == Grant(how="open server")
