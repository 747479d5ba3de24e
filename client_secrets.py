"""Ephemeral client secrets (`ek_…`): minted with an API key for a browser, short-lived, carrying a session
configuration. Pure: no I/O.

The real API mints them at `POST /v1/realtime/client_secrets` (GA) and `POST /v1/realtime/sessions` /
`transcription_sessions` (beta) so that a page never sees the server's key. The configuration a secret carries is
checked exactly as a `session.update` would be (same errors), and becomes the starting configuration of the sessions
opened with it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from protocol import Dialect, JsonDict, SessionKind, SessionUpdate
from session.configuration import SessionDefaults, new_session_config
from wire.parsing import parse_secret_request

DEFAULT_SECRET_TTL_S = 600
MAX_LIVE_SECRETS = 10_000  # minting is cheap: bound what a key holder can make the server remember

SecretEndpoint: TypeAlias = Literal["client_secrets", "sessions", "transcription_sessions"]


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: int
    kind: SessionKind
    session_patch: JsonDict = field(default_factory=dict)  # GA-shaped, as `session.update` takes it
    temperature: float | None = None  # beta only

    def initial_update(self) -> SessionUpdate:
        """The configuration the secret carries, as the update a session opened with it starts from."""
        return SessionUpdate(None, self.kind, self.session_patch, self.temperature)


class TooManySecrets(Exception):
    """More live secrets than `MAX_LIVE_SECRETS`: the client should wait for some to expire."""


class SecretStore:
    """The live secrets of this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._secrets: dict[str, ClientSecret] = {}

    def mint(
        self,
        kind: SessionKind,
        session_patch: JsonDict,
        ttl_s: int = DEFAULT_SECRET_TTL_S,
        temperature: float | None = None,
    ) -> ClientSecret:
        self._forget_expired()
        if len(self._secrets) >= MAX_LIVE_SECRETS:
            raise TooManySecrets("Too many live client secrets: wait for some to expire.")
        secret = ClientSecret(
            value=f"ek_{secrets.token_urlsafe(24)}",
            expires_at=int(self._clock()) + ttl_s,
            kind=kind,
            session_patch=session_patch,
            temperature=temperature,
        )
        self._secrets[secret.value] = secret
        return secret

    def find(self, value: str) -> ClientSecret | None:
        """The live secret `value`, or None (unknown, or expired: then it is forgotten)."""
        secret = self._secrets.get(value)
        if secret is not None and secret.expires_at > self._clock():
            return secret
        self._secrets.pop(value, None)
        return None

    def _forget_expired(self) -> None:
        now = self._clock()
        for value in [value for value, secret in self._secrets.items() if secret.expires_at <= now]:
            del self._secrets[value]

    @property
    def now(self) -> float:
        return self._clock()


def mint_for_request(body: Any, endpoint: SecretEndpoint, defaults: SessionDefaults, store: SecretStore) -> JsonDict:
    """The answer to a client-secret request body: the secret and the session it starts, shaped as the endpoint's
    dialect shapes them. Raises `ProtocolError` for a bad body or configuration, `TooManySecrets` when full."""
    parsed = parse_secret_request(body, endpoint)
    dialect: Dialect = "ga" if endpoint == "client_secrets" else "beta"
    update = SessionUpdate(None, parsed.kind, parsed.patch, parsed.temperature)
    config = new_session_config(defaults, parsed.kind, now=store.now).updated(update, defaults)
    secret = store.mint(parsed.kind, parsed.patch, parsed.ttl_s or DEFAULT_SECRET_TTL_S, parsed.temperature)
    described = config.render(dialect)
    described["expires_at"] = secret.expires_at
    if endpoint == "client_secrets":
        return {"value": secret.value, "expires_at": secret.expires_at, "session": described}
    return {**described, "client_secret": {"value": secret.value, "expires_at": secret.expires_at}}
