"""FastAPI app: the Realtime WebSocket at `/v1/realtime`, `/health`, and the providers loaded once at startup.

Run with `python main.py` (uses the settings in `.env`) or `uvicorn main:app --reload`.

Models load in the background once the server listens: `/health` answers 503 `loading` until they are ready, and
sessions opened meanwhile get an `error` event saying so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from loguru import logger

from access import DEFAULT_SECRET_TTL_S, AccessControl
from config import Settings, get_settings
from local_models import ModelError
from protocol import Dialect, ProtocolError, SessionKind, error_event, parse_secret_request
from providers.errors import ConfigurationError
from realtime_session import RealtimeSession, SessionDefaults
from service_providers import Providers
from transport import ConnectionLimits, RealtimeConnection

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


@dataclass
class ServerState:
    settings: Settings
    access: AccessControl
    providers: Providers | None = None
    ready: bool = False
    shutting_down: bool = False
    loading_since: float = field(default_factory=time.monotonic)
    connections: set[RealtimeConnection] = field(default_factory=set)

    async def shut_down_sessions(self, timeout_s: float = 3.0) -> None:
        """Graceful stop: refuse new sessions, end the open ones (responses fail saying why, sockets close 1001)."""
        self.shutting_down = True
        connections = list(self.connections)
        if connections:
            logger.info(f"Shutting down: ending {len(connections)} session(s)")
            await asyncio.wait(
                [asyncio.create_task(connection.shutdown()) for connection in connections], timeout=timeout_s
            )


def openai_error(
    status: int, message: str, code: str, error_type: str = "invalid_request_error", param: str | None = None
) -> JSONResponse:
    """An HTTP error with the body OpenAI's API uses (what the SDKs parse into their exceptions)."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def configure_logging(settings: Settings) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if settings.debug else settings.log_level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    state = ServerState(settings=settings, access=AccessControl(settings.api_keys, settings.origins))
    limits = ConnectionLimits(settings.max_outgoing_events, settings.max_event_bytes, settings.session_max_duration_s)

    async def load_models(providers: Providers) -> None:
        started = time.monotonic()
        try:
            await providers.load()
        except Exception as exc:
            logger.error(f"Could not load the models: {exc}")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        state.ready = True
        logger.info(f"Models ready in {time.monotonic() - started:.1f}s")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        try:
            state.providers = Providers.from_settings(settings)
        except (ConfigurationError, ModelError) as exc:
            logger.error(f"Configuration error: {exc}")
            raise SystemExit(2) from None
        logger.info(f"Providers: {state.providers.description}")
        logger.info(f"Realtime WebSocket endpoint: {settings.websocket_url}")
        if state.access.open:
            logger.warning("REALTIME_API_KEYS is empty: anyone who can reach this port may use the server")
        state.loading_since = time.monotonic()
        loader = asyncio.create_task(load_models(state.providers), name="load-models")
        yield
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        await state.shut_down_sessions()
        for connection in list(state.connections):
            await connection.pipeline.stop()
        await state.providers.close()

    app = FastAPI(title="Realtime API server", lifespan=lifespan)
    app.state.server = state

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {
            "status": "healthy" if state.ready else "loading",
            "active_sessions": len(state.connections),
            "models_ready": state.ready,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket, model: str | None = None, intent: str | None = None) -> None:
        handshake = parse_handshake(websocket.headers, list(websocket.scope.get("subprotocols", [])))
        refusal = refuse(websocket.headers.get("origin"), handshake.api_key)
        if refusal is not None:
            await websocket.send_denial_response(refusal)
            return
        grant = state.access.authorize(handshake.api_key)
        assert grant is not None  # `refuse` checked it
        providers = state.providers
        await websocket.accept(subprotocol=handshake.subprotocol)
        if providers is None or not state.ready:
            waited = time.monotonic() - state.loading_since
            message = f"The server is still loading its models ({waited:.0f}s so far): try again in a few seconds."
            await websocket.send_json(error_event("server_error", "models_loading", message))
            await websocket.close(code=1013, reason="Models loading")
            return
        secret = grant.secret
        kind: SessionKind = "transcription" if intent == "transcription" else "realtime"
        session = RealtimeSession(
            SessionDefaults.from_settings(settings),
            handshake.dialect,
            kind=secret.kind if secret is not None else kind,
            model=model or None,
            initial_config=secret.session_patch if secret is not None else None,
        )
        if secret is not None and secret.temperature is not None:
            session.temperature = secret.temperature
        connection = RealtimeConnection(websocket, session, providers, limits)
        state.connections.add(connection)
        how = "client secret" if secret is not None else "key" if not state.access.open else "open server"
        logger.info(
            f"Session {session.id} opened ({handshake.dialect}, {session.kind}, model={session_model(session)}, {how})"
        )
        try:
            await connection.run()
        finally:
            state.connections.discard(connection)

    def refuse(origin: str | None, api_key: str | None) -> JSONResponse | None:
        """Why an upgrade is refused at the handshake (an HTTP response instead of a WebSocket), if it is."""
        if not state.access.origin_allowed(origin):
            return openai_error(403, f"Connections from origin {origin!r} are not allowed.", "origin_not_allowed")
        if state.access.authorize(api_key) is None:
            if api_key is None:
                message = "You didn't provide an API key: send it as 'Authorization: Bearer <key>'."
            elif api_key.startswith("ek_"):
                message = "The client secret is unknown or has expired: get a new one."
            else:
                message = "Incorrect API key provided."
            return openai_error(401, message, "invalid_api_key")
        if state.shutting_down:
            return openai_error(503, "The server is shutting down.", "server_shutting_down", "server_error")
        if len(state.connections) >= settings.max_sessions:
            return openai_error(
                503,
                f"The server is at its limit of {settings.max_sessions} concurrent sessions: try again later.",
                "too_many_sessions",
                "server_error",
            )
        return None

    async def mint_secret(
        request: Request, endpoint: Literal["client_secrets", "sessions", "transcription_sessions"]
    ) -> JSONResponse:
        """Ephemeral client secrets, as the real API mints them for browsers: made with a real key, short-lived,
        carrying the session configuration that the sessions opened with them start from."""
        key = parse_handshake(request.headers, []).api_key
        if key is None or key.startswith("ek_") or not state.access.is_api_key(key):
            return openai_error(401, "A client secret can only be made with an API key.", "invalid_api_key")
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "The request body is not valid JSON.", "invalid_json")
        try:
            parsed = parse_secret_request(body, endpoint)
            dialect: Dialect = "ga" if endpoint == "client_secrets" else "beta"
            # The configuration is checked as a session.update would be: errors are the same.
            session = RealtimeSession(
                SessionDefaults.from_settings(settings), dialect, kind=parsed.kind, initial_config=parsed.patch
            )
        except ProtocolError as error:
            return openai_error(400, error.message, error.code or "invalid_value", param=error.param)
        if parsed.temperature is not None:
            session.temperature = parsed.temperature
        try:
            secret = state.access.mint(
                parsed.kind, parsed.patch, parsed.ttl_s or DEFAULT_SECRET_TTL_S, parsed.temperature
            )
        except OverflowError as exc:
            return openai_error(429, str(exc), "rate_limit_exceeded", "rate_limit_error")
        described = session.session_object()
        described["expires_at"] = secret.expires_at
        if endpoint == "client_secrets":
            return JSONResponse({"value": secret.value, "expires_at": secret.expires_at, "session": described})
        return JSONResponse({**described, "client_secret": {"value": secret.value, "expires_at": secret.expires_at}})

    @app.post("/v1/realtime/client_secrets")
    async def client_secrets(request: Request) -> JSONResponse:
        return await mint_secret(request, "client_secrets")

    @app.post("/v1/realtime/sessions")
    async def beta_sessions(request: Request) -> JSONResponse:
        return await mint_secret(request, "sessions")

    @app.post("/v1/realtime/transcription_sessions")
    async def beta_transcription_sessions(request: Request) -> JSONResponse:
        return await mint_secret(request, "transcription_sessions")

    @app.websocket("/{path:path}")
    async def unknown_path(websocket: WebSocket, path: str) -> None:
        # Without this route Starlette refuses with 403, which a client cannot tell from a refused key.
        message = f"No WebSocket endpoint at /{path}: the Realtime API is at /v1/realtime."
        await websocket.send_denial_response(openai_error(404, message, "unknown_url"))

    return app


def check_configuration(settings: Settings) -> None:
    """Raises `ConfigurationError` for a configuration that cannot work, before anything is loaded."""
    Providers.check(settings)


def session_model(session: RealtimeSession) -> str:
    return str(session.config.get("model", "-"))


app = create_app()


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    try:
        check_configuration(settings)
    except (ConfigurationError, ModelError) as exc:
        logger.error(f"Configuration error: {exc}")
        sys.exit(2)
    config = uvicorn.Config(
        app,
        host=settings.server_host,
        port=settings.server_port,
        # Events over MAX_EVENT_BYTES get an error event; only far larger messages make uvicorn drop the socket.
        ws_max_size=2 * settings.max_event_bytes,
        # Deflating base64 audio costs much CPU and saves little; OpenAI's Python SDK does not ask for it either.
        ws_per_message_deflate=False,
        log_level="debug" if settings.debug else settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    GracefulServer(config, app.state.server).run()


class GracefulServer(uvicorn.Server):
    """On SIGTERM or SIGINT uvicorn would fail every open WebSocket at once with 1012. This ends the sessions first:
    new ones are refused, responses in progress fail with an error saying why, and the sockets close with 1001."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._state.shut_down_sessions()
        await super().shutdown(sockets)


if __name__ == "__main__":
    main()
