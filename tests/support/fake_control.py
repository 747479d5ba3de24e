"""Steering the OpenAI-compatible loopback fake (`tests.fakes.openai_fake`) from a test, through its `/_fake/*` API.

Every step is scripted for a key: the id of a session the test opened (`RealtimeTestClient.session_id`), or the
`provider_key` of a server the test started for itself. Requests of other sessions never take it.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.fakes.openai_fake import FakeOpenAI


def script(
    fake: FakeOpenAI,
    key: str,
    chat: list[dict[str, Any]] | None = None,
    speech: list[dict[str, Any]] | None = None,
    transcription: list[dict[str, Any]] | None = None,
) -> None:
    steps = {"key": key, "chat": chat or [], "speech": speech or [], "transcription": transcription or []}
    httpx.post(f"http://127.0.0.1:{fake.port}/_fake/script", json=steps).raise_for_status()


def fake_requests(fake: FakeOpenAI, path: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
    """The requests the fake received for `key` (every one without it), those to `path` only if given."""
    params = {"key": key} if key is not None else {}
    requests = httpx.get(f"http://127.0.0.1:{fake.port}/_fake/requests", params=params).json()
    return [request for request in requests if path is None or request["path"] == path]
