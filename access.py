"""Who may open a session: API keys, ephemeral client secrets, browser origins, and the server's own limits.
Pure: no I/O.

What a client asks for is read off its upgrade request (`parse_handshake`: dialect, subprotocol, key). With no
`REALTIME_API_KEYS` configured the server is open (meant for local use). With keys, a connection must present one
of them, or an ephemeral client secret (`ek_…`, see `client_secrets.py`) minted with one. Each connection attempt is
decided once, by `admit`: a `Grant` (starting from the secret's configuration if it was one) or a `Refusal`, which
the handshake answers with an HTTP status and OpenAI's error body. A granted connection then needs one of the
instance's session slots (`MAX_SESSIONS`, counted across workers by the caller); `session_limit` is the refusal when
none is free.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from client_secrets import ClientSecret, SecretSigner
from protocol import Dialect

REALTIME_SUBPROTOCOL = "realtime"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
API_KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


@dataclass
class Handshake:
    """What the client asked for when it opened the socket."""

    dialect: Dialect
    subprotocol: str | None
    api_key: str | None


def parse_handshake(headers: Mapping[str, str], subprotocols: list[str]) -> Handshake:
    """Dialect, selected subprotocol and API key from the upgrade request, as OpenAI's clients send them.

    Browsers cannot set headers, so they send the key as the `openai-insecure-api-key.<key>` subprotocol (which is
    never echoed back) and ask for the beta dialect with `openai-beta.realtime-v1`.
    """
    api_key = None
    authorization = headers.get("authorization") or ""
    if authorization.lower().startswith("bearer "):
        api_key = authorization[7:].strip() or None
    for protocol in subprotocols:
        if protocol.startswith(API_KEY_SUBPROTOCOL_PREFIX) and api_key is None:
            api_key = protocol[len(API_KEY_SUBPROTOCOL_PREFIX) :] or None
    beta_header = "realtime=v1" in (headers.get("openai-beta") or "").replace(" ", "").lower()
    dialect: Dialect = "beta" if beta_header or BETA_SUBPROTOCOL in subprotocols else "ga"
    subprotocol = REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in subprotocols else None
    return Handshake(dialect=dialect, subprotocol=subprotocol, api_key=api_key)


@dataclass(frozen=True)
class Grant:
    """A session may open; it starts from `secret`'s configuration when the client presented one."""

    secret: ClientSecret | None = None
    how: str = "key"  # for the log: "key", "client secret" or "open server"


@dataclass(frozen=True)
class Refusal:
    """A connection refused before it opens, as the HTTP answer to its handshake."""

    status: int
    message: str
    code: str
    type: str = "invalid_request_error"


class AccessControl:
    def __init__(self, api_keys: set[str], allowed_origins: set[str], secrets: SecretSigner) -> None:
        self._api_keys = {key for key in api_keys if key}
        self._allowed_origins = {origin.rstrip("/") for origin in allowed_origins if origin}
        self.secrets = secrets

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

    def may_mint(self, key: str | None) -> bool:
        """Client secrets are made with an API key, never with another secret."""
        return key is not None and not key.startswith("ek_") and self.is_api_key(key)

    def authorize(self, key: str | None) -> Grant | None:
        """The grant for a connection presenting `key`, or None when it must be refused."""
        if key is not None and key.startswith("ek_"):
            secret = self.secrets.find(key)
            if secret is not None:
                return Grant(secret, "client secret")
            return Grant(how="open server") if self.open else None
        if not self.is_api_key(key):
            return None
        return Grant(how="open server" if self.open else "key")

    def admit(self, origin: str | None, key: str | None, *, shutting_down: bool) -> Grant | Refusal:
        """Decides a connection attempt: origin, then key, then whether the server is stopping."""
        if not self.origin_allowed(origin):
            return Refusal(403, f"Connections from origin {origin!r} are not allowed.", "origin_not_allowed")
        grant = self.authorize(key)
        if grant is None:
            if key is None:
                message = "You didn't provide an API key: send it as 'Authorization: Bearer <key>'."
            elif key.startswith("ek_"):
                message = "The client secret is unknown or has expired: get a new one."
            else:
                message = "Incorrect API key provided."
            return Refusal(401, message, "invalid_api_key")
        if shutting_down:
            return Refusal(503, "The server is shutting down.", "server_shutting_down", "server_error")
        return grant


def session_limit(max_sessions: int) -> Refusal:
    """A granted connection that finds every one of the server's `max_sessions` slots taken."""
    return Refusal(
        503,
        f"The server is at its limit of {max_sessions} concurrent sessions: try again later.",
        "too_many_sessions",
        "server_error",
    )
