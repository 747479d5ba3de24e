"""Provider failures: our own small exception hierarchy, and the one mapping from an exception to what the client is
told.

Every provider translates the exceptions of the library it calls (the openai SDK, httpx, aiohttp, websockets, the
Deepgram SDK, edge-tts) into these where they enter, inside its own call, so that the rest of the server knows only
these four kinds of failure:

    ProviderError               anything else (the provider's own words, as the message)
    ├── ProviderStatusError     the provider answered an HTTP error status (`status`, `detail`)
    ├── ProviderTimeout         it did not answer in time, or stalled mid-answer
    └── ProviderUnavailable     it could not be reached, or dropped the connection

Their messages never hold a credential (Pipecat logs the exceptions of TTS services): whoever raises one redacts
what it quotes.
"""

from __future__ import annotations

import json
import re

from metrics import PROVIDER_FAILURES
from session.commands import ProviderFailure

# The `error` event's code when a reply's language has no voice (documented in the README's errors section).
VOICE_LANGUAGE_UNAVAILABLE = "tts_language_unsupported"


class ConfigurationError(RuntimeError):
    """The configuration cannot work (a provider without its key, an unknown provider): the server won't start."""


class ProviderError(Exception):
    """A provider failed; the message says how, with any credentials already removed."""


class ProviderStatusError(ProviderError):
    """The provider answered an HTTP error status; `detail` is its reason, as it worded it (possibly empty)."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status  # Pipecat's `extract_http_status_code` reads `status` too, to classify the error
        self.detail = detail


class ProviderTimeout(ProviderError):
    """The provider did not answer in time, or stopped sending in the middle of its answer."""


class ProviderUnavailable(ProviderError):
    """The provider could not be reached, or dropped the connection before the end of its answer."""


class VoiceLanguageUnavailable(ProviderError):
    """No configured voice speaks the language of a reply: the reply goes on as text and transcript, without audio,
    and the client is told once per response (not a failure of the response)."""


# --------------------------------------------------------------------------------------------------------------
# Credentials and error bodies
# --------------------------------------------------------------------------------------------------------------

_SECRET_PATTERN = re.compile(r"(sk|ek|key|Bearer)[-_ ]?[A-Za-z0-9_\-\.]{8,}", re.IGNORECASE)


def redact(text: str, secrets: list[str]) -> str:
    """`text` without the given secrets, nor anything that looks like a key or a bearer token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_PATTERN.sub("***", text)


def tidy_detail(detail: str, secrets: list[str]) -> str:
    """A provider's reason, fit to end our message: no credentials, at most 300 characters, no full stop of its own
    (the message adds one)."""
    return redact(detail, secrets).strip()[:300].rstrip(".")


def error_body_detail(body: bytes | str) -> str:
    """The human part of a provider's error body (JSON `message`/`detail`/`error`, or the text itself)."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text
    for key in ("detail", "error"):
        if isinstance(data, dict) and key in data:
            data = data[key]
    if isinstance(data, dict):
        for key in ("message", "msg", "status"):
            if isinstance(data.get(key), str):
                return data[key]
    if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("msg"), str):
        return data[0]["msg"]  # a validation error (422)
    return text if not isinstance(data, str) else data


# --------------------------------------------------------------------------------------------------------------
# Failures → what the client is told
# --------------------------------------------------------------------------------------------------------------


def provider_failure(stage: str, provider: str, exc: BaseException, secrets: list[str]) -> ProviderFailure:
    """A provider exception as the failure reported to the client, with any credentials removed.

    `stage` is "STT", "LLM" or "TTS"; `provider` the configured provider's name. Anything that is not one of our
    exceptions (a bug, a Pipecat-internal error) is a generic `provider_error` quoting its message."""
    failure = _failure(stage, provider, exc, secrets)
    PROVIDER_FAILURES.labels(stage, failure.code).inc()
    return failure


def _failure(stage: str, provider: str, exc: BaseException, secrets: list[str]) -> ProviderFailure:
    if isinstance(exc, ProviderStatusError):
        return _status_failure(stage, provider, exc.status, redact(exc.detail, secrets))
    # A bare `TimeoutError` is Python's own word for the same thing (asyncio.timeout raises it).
    if isinstance(exc, ProviderTimeout | TimeoutError):
        return ProviderFailure("provider_timeout", f"The {stage} provider '{provider}' timed out.")
    if isinstance(exc, ProviderUnavailable):
        return ProviderFailure(
            "provider_unavailable", f"The {stage} provider '{provider}' could not be reached or dropped the connection."
        )
    if isinstance(exc, VoiceLanguageUnavailable):
        return ProviderFailure(VOICE_LANGUAGE_UNAVAILABLE, str(exc))
    detail = redact(str(exc), secrets)[:300]
    return ProviderFailure("provider_error", f"The {stage} provider '{provider}' failed: {detail}")


def _status_failure(stage: str, provider: str, status: int, detail: str) -> ProviderFailure:
    if status in (401, 403):
        code, what = "provider_authentication_failed", "rejected the credentials"
    elif status == 429:
        code, what = "provider_rate_limited", "is rate limiting requests"
    elif 400 <= status < 500:
        code, what = "provider_rejected_request", "rejected the request"
    else:
        code, what = "provider_error", "had an internal error"
    message = f"The {stage} provider '{provider}' {what} (HTTP {status})"
    if detail and status not in (401, 403):  # an authentication error's reason may quote the key
        message += f": {detail[:300]}"
    return ProviderFailure(code=code, message=message + ".")
