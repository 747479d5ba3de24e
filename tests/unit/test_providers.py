"""The provider layer without a server: the registry's names, the one failure mapping, the translation of the openai
SDK's exceptions, what the OpenAI speech service sends, and the modules' import directions."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import get_args

import httpx2
import openai
import pytest

import config
import service_providers
from providers.errors import (
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    ProviderUnavailable,
    provider_failure,
)
from providers.openai_compatible import SpeechProvider, openai_errors
from providers.tts import StreamingTTS

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-fake-key-0123456789"


@pytest.mark.parametrize(
    ("literal", "stage"),
    [
        (config.SttProvider, service_providers.STT),
        (config.LlmProvider, service_providers.LLM),
        (config.TtsProvider, service_providers.TTS),
    ],
    ids=["stt", "llm", "tts"],
)
def test_the_configurable_names_are_the_registrys(literal: object, stage: service_providers.Stage[object]) -> None:
    assert set(get_args(literal)) == set(stage.factories)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (
            ProviderStatusError(401, f"bad key {KEY}"),
            "provider_authentication_failed",
            "rejected the credentials (HTTP 401).",
        ),
        (ProviderStatusError(403), "provider_authentication_failed", "rejected the credentials (HTTP 403)."),
        (
            ProviderStatusError(429, "slow down"),
            "provider_rate_limited",
            "is rate limiting requests (HTTP 429): slow down.",
        ),
        (
            ProviderStatusError(404, "no such model"),
            "provider_rejected_request",
            "rejected the request (HTTP 404): no such model.",
        ),
        (ProviderStatusError(503), "provider_error", "had an internal error (HTTP 503)."),
        (ProviderTimeout("no audio for 2 s"), "provider_timeout", "timed out."),
        (TimeoutError(), "provider_timeout", "timed out."),
        (ProviderUnavailable("refused"), "provider_unavailable", "could not be reached or dropped the connection."),
        (ProviderError(f"no audio {KEY}"), "provider_error", "failed: no audio ***"),  # a Pipecat ErrorFrame's text
        (RuntimeError(f"boom {KEY}"), "provider_error", "failed: boom ***"),
    ],
)
def test_one_mapping_from_exception_to_failure(exc: BaseException, code: str, message: str) -> None:
    failure = provider_failure("TTS", "openai_tts", exc, [KEY])
    assert failure.code == code
    assert failure.message == f"The TTS provider 'openai_tts' {message}"
    assert failure.error_type == "server_error"


def _status(status: int, body: object) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/audio/speech")
    response = httpx2.Response(status, json=body, request=request)
    return openai.APIStatusError(f"Error code: {status} - {body}", response=response, body=body)


_REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


@pytest.mark.parametrize(
    ("raise_it", "expected", "text"),
    [
        (
            lambda: _status(429, {"error": {"message": f"limit for {KEY}"}}),
            ProviderStatusError,
            "HTTP 429: limit for ***",
        ),
        (lambda: _status(500, {"message": "overloaded"}), ProviderStatusError, "HTTP 500: overloaded"),
        (lambda: openai.APITimeoutError(_REQUEST), ProviderTimeout, "timed out"),
        (lambda: openai.APIConnectionError(request=_REQUEST), ProviderUnavailable, "could not be reached"),
        (lambda: httpx2.ReadTimeout("read", request=_REQUEST), ProviderTimeout, "ReadTimeout"),
        (
            lambda: httpx2.RemoteProtocolError("peer closed", request=_REQUEST),
            ProviderUnavailable,
            "RemoteProtocolError",
        ),
        (lambda: openai.APIError(f"stream error {KEY}", _REQUEST, body=None), ProviderError, "stream error ***"),
    ],
)
def test_openai_sdk_errors_become_ours(
    raise_it: Callable[[], Exception], expected: type[ProviderError], text: str
) -> None:
    with pytest.raises(ProviderError) as caught, openai_errors([KEY]):
        raise raise_it()
    assert type(caught.value) is expected
    assert text in str(caught.value)
    assert KEY not in str(caught.value)


async def test_openai_speech_sends_what_pipecats_service_sent() -> None:
    endpoint = {"name": "openai_tts", "base_url": "http://127.0.0.1:9/v1", "api_key": KEY, "timeout_s": 2.0}
    provider = SpeechProvider(**endpoint, model="gpt-4o-mini-tts", voice="alloy")
    try:
        service = provider.create("sess_test")
        assert service.request("Hello.") == {  # type: ignore[attr-defined]
            "input": "Hello.",
            "model": "gpt-4o-mini-tts",
            "voice": "alloy",
            "response_format": "pcm",
            "speed": 1.0,
        }
        assert provider.voice_for("marin") == "marin" and provider.voice_for("nobody") == "alloy"
        unknown = SpeechProvider(**endpoint, model="gpt-4o-mini-tts", voice="nobody")
        with pytest.raises(ProviderError, match="OpenAI TTS voice 'nobody' is not supported"):
            unknown.create("sess_test").request("Hello.")  # type: ignore[attr-defined]
        await unknown.close()
    finally:
        await provider.close()


class _BrokenTTS(StreamingTTS):
    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        raise ValueError(f"boom {KEY}")
        yield b""


class _SilentTTS(StreamingTTS):
    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        await asyncio.sleep(10)
        yield b""


async def test_tts_services_fail_with_our_exceptions() -> None:
    """What `run_tts` raises is what Pipecat's `ErrorFrame` carries as its `exception`."""
    broken = _BrokenTTS(model=None, voice="v", timeout_s=1.0, secrets=[KEY])
    with pytest.raises(ProviderError, match=r"^boom \*\*\*$") as caught:
        async for _ in broken.run_tts("Hi.", "context"):
            pass
    assert isinstance(caught.value.__cause__, ValueError)  # kept for debugging
    silent = _SilentTTS(model=None, voice="v", timeout_s=0.1, secrets=[])
    with pytest.raises(ProviderTimeout):
        async for _ in silent.run_tts("Hi.", "context"):
            pass


def test_providers_import_neither_the_registry_nor_the_pipeline() -> None:
    """`service_providers` imports `providers`, never the other way round (no import cycle)."""
    forbidden = {"service_providers", "pipeline_stages", "transport", "pipeline_manager", "cloud_providers"}
    for path in (ROOT / "providers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not {name.split(".")[0] for name in names} & forbidden, f"{path.name} imports {names}"
