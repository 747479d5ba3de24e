"""Who may open a session: API keys, ephemeral client secrets, browser origins. Pure: no I/O.

With no `REALTIME_API_KEYS` configured the server is open (meant for local use). With keys, a WebSocket must
present one of them, or an ephemeral client secret (`ek_…`) minted with one through `POST /v1/realtime/client_secrets`
(GA) or `POST /v1/realtime/sessions` / `transcription_sessions` (beta), the way browsers use the real API: the
server hands a short-lived secret to the page, never its key. A secret carries the session configuration it was minted
with, which becomes the starting configuration of the sessions opened with it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import JsonDict, SessionKind

DEFAULT_SECRET_TTL_S = 600
MIN_SECRET_TTL_S = 10
MAX_SECRET_TTL_S = 7200
MAX_LIVE_SECRETS = 10_000  # minting is cheap: bound what a key holder can make the server remember


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: int
    kind: SessionKind
    session_patch: JsonDict = field(default_factory=dict)  # GA-shaped, as `session.update` takes it
    temperature: float | None = None  # beta only


@dataclass(frozen=True)
class Grant:
    """What a presented key allows: a session, starting from the secret's configuration if it was one."""

    secret: ClientSecret | None = None


class AccessControl:
    def __init__(
        self,
        api_keys: set[str],
        allowed_origins: set[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_keys = {key for key in api_keys if key}
        self._allowed_origins = {origin.rstrip("/") for origin in allowed_origins if origin}
        self._clock = clock
        self._secrets: dict[str, ClientSecret] = {}

    @property
    def open(self) -> bool:
        return not self._api_keys

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers send `Origin`; other clients usually don't, and are not limited by this list."""
        if origin is None or not self._allowed_origins:
            return True
        return origin.rstrip("/") in self._allowed_origins

    def is_api_key(self, key: str | None) -> bool:
        """A configured key (compared in constant time). Always true on an open server."""
        if self.open:
            return True
        return key is not None and any(hmac.compare_digest(key, known) for known in self._api_keys)

    def authorize(self, key: str | None) -> Grant | None:
        """The grant for a WebSocket presenting `key`, or None when it must be refused."""
        if key is not None and key.startswith("ek_"):
            secret = self._secrets.get(key)
            if secret is not None and secret.expires_at > self._clock():
                return Grant(secret)
            self._secrets.pop(key, None)
            return None if not self.open else Grant()
        return Grant() if self.is_api_key(key) else None

    def mint(
        self,
        kind: SessionKind,
        session_patch: JsonDict,
        ttl_s: int = DEFAULT_SECRET_TTL_S,
        temperature: float | None = None,
    ) -> ClientSecret:
        self._forget_expired()
        if len(self._secrets) >= MAX_LIVE_SECRETS:
            raise OverflowError("Too many live client secrets: wait for some to expire.")
        secret = ClientSecret(
            value=f"ek_{secrets.token_urlsafe(24)}",
            expires_at=int(self._clock()) + ttl_s,
            kind=kind,
            session_patch=session_patch,
            temperature=temperature,
        )
        self._secrets[secret.value] = secret
        return secret

    def _forget_expired(self) -> None:
        now = self._clock()
        for value in [value for value, secret in self._secrets.items() if secret.expires_at <= now]:
            del self._secrets[value]
