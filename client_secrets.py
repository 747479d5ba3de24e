"""Ephemeral client secrets (`ek_…`): minted with an API key for a browser, short-lived, carrying a session
configuration. Pure: no I/O; the signing key is handed in.

The real API mints them at `POST /v1/realtime/client_secrets` (GA) and `POST /v1/realtime/sessions` /
`transcription_sessions` (beta) so that a page never sees the server's key. The configuration a secret carries is
checked exactly as a `session.update` would be (same errors), and becomes the starting configuration of the sessions
opened with it.

A secret is a signed token, not an entry in a table: `ek_<payload>.<mac>`, where the payload is the expiry and the
configuration (JSON, deflated, base64url) and the mac is HMAC-SHA256 over it with the server's key. Any worker and
any replica that holds the same key accepts it, with nothing shared between them; a secret whose mac does not match
(tampered with, or signed with another key) is refused like an unknown one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from protocol import Dialect, JsonDict, SessionKind, SessionUpdate
from session.configuration import SessionDefaults, new_session_config
from wire.parsing import parse_secret_request

DEFAULT_SECRET_TTL_S = 600
SECRET_PREFIX = "ek_"
# A browser sends the secret in the `Sec-WebSocket-Protocol` header: nginx's default header buffer is 8 KiB and
# h11 (uvicorn) takes 16 KiB of headers in all, so a secret stays well inside both.
MAX_SECRET_CHARS = 6144
_MAC_DOMAIN = b"realtime-client-secret/1:"  # a mac made for something else with the same key never passes here
_MAX_PAYLOAD_BYTES = 1 << 20  # what a genuine payload inflates to at most (it was deflated from under 6 KiB)

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


class SecretTooLarge(Exception):
    """The configuration does not fit in a client secret a browser can send (`MAX_SECRET_CHARS`)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SecretSigner:
    """Mints and checks client secrets with one key (`REALTIME_SECRET_KEY`, or the instance's boot key)."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("a client-secret key needs at least 16 bytes")
        self._key = key
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, _MAC_DOMAIN + payload.encode("ascii"), hashlib.sha256).digest())

    def mint(
        self,
        kind: SessionKind,
        session_patch: JsonDict,
        ttl_s: int = DEFAULT_SECRET_TTL_S,
        temperature: float | None = None,
    ) -> ClientSecret:
        """Raises `SecretTooLarge` when the configuration makes the secret longer than `MAX_SECRET_CHARS`."""
        expires_at = int(self._clock()) + ttl_s
        carried: JsonDict = {"exp": expires_at, "kind": kind, "patch": session_patch}
        if temperature is not None:
            carried["temperature"] = temperature
        raw = json.dumps(carried, ensure_ascii=False, separators=(",", ":")).encode()
        payload = _b64(zlib.compress(raw, 9))
        value = f"{SECRET_PREFIX}{payload}.{self._mac(payload)}"
        if len(value) > MAX_SECRET_CHARS:
            raise SecretTooLarge(
                f"The session configuration makes a client secret of {len(value)} characters; at most "
                f"{MAX_SECRET_CHARS} fit where a browser sends it. Mint the secret with less (long instructions, "
                "many tools) and send the rest with session.update once connected."
            )
        return ClientSecret(value, expires_at, kind, session_patch, temperature)

    def find(self, value: str) -> ClientSecret | None:
        """The secret `value` if this key signed it and it has not expired, else None."""
        payload, dot, mac = value.removeprefix(SECRET_PREFIX).partition(".")
        if not value.startswith(SECRET_PREFIX) or not dot or len(value) > MAX_SECRET_CHARS:
            return None
        try:
            if not hmac.compare_digest(mac.encode("ascii"), self._mac(payload).encode("ascii")):
                return None
            inflater = zlib.decompressobj()
            carried: Any = json.loads(inflater.decompress(_unb64(payload), _MAX_PAYLOAD_BYTES))
        except (UnicodeEncodeError, binascii.Error, ValueError, zlib.error):
            return None
        if not isinstance(carried, dict) or not isinstance(carried.get("exp"), int):
            return None
        if carried["exp"] <= self._clock():
            return None
        return ClientSecret(value, carried["exp"], carried["kind"], carried["patch"], carried.get("temperature"))

    @property
    def now(self) -> float:
        return self._clock()


def mint_for_request(body: Any, endpoint: SecretEndpoint, defaults: SessionDefaults, signer: SecretSigner) -> JsonDict:
    """The answer to a client-secret request body: the secret and the session it starts, shaped as the endpoint's
    dialect shapes them. Raises `ProtocolError` for a bad body or configuration, `SecretTooLarge` when it does not
    fit in a secret."""
    parsed = parse_secret_request(body, endpoint)
    dialect: Dialect = "ga" if endpoint == "client_secrets" else "beta"
    update = SessionUpdate(None, parsed.kind, parsed.patch, parsed.temperature)
    config = new_session_config(defaults, parsed.kind, now=signer.now).updated(update, defaults)
    secret = signer.mint(parsed.kind, parsed.patch, parsed.ttl_s or DEFAULT_SECRET_TTL_S, parsed.temperature)
    described = config.render(dialect)
    described["expires_at"] = secret.expires_at
    if endpoint == "client_secrets":
        return {"value": secret.value, "expires_at": secret.expires_at, "session": described}
    return {**described, "client_secret": {"value": secret.value, "expires_at": secret.expires_at}}
