"""FastAPI app: the Realtime WebSocket at `/v1/realtime`, `/health`, and the providers loaded once at startup.

Run with `python main.py` (uses the settings in `.env`) or `uvicorn main:app --reload`.

Models load in the background once the server listens: `/health` answers 503 `loading` until they are ready, and
sessions opened meanwhile get an `error` event saying so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from loguru import logger

from config import Settings, get_settings
from local_models import ModelError
from protocol import Dialect, SessionKind, error_event
from realtime_session import RealtimeSession, SessionDefaults
from service_providers import ConfigurationError, Providers
from transport import RealtimeConnection

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
    providers: Providers | None = None
    ready: bool = False
    loading_since: float = field(default_factory=time.monotonic)
    connections: set[RealtimeConnection] = field(default_factory=set)


def configure_logging(settings: Settings) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if settings.debug else settings.log_level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    state = ServerState(settings=settings)

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
        state.loading_since = time.monotonic()
        loader = asyncio.create_task(load_models(state.providers), name="load-models")
        yield
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        for connection in list(state.connections):
            connection.close_reason = "server shutting down"
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
        providers = state.providers
        await websocket.accept(subprotocol=handshake.subprotocol)
        if providers is None or not state.ready:
            waited = time.monotonic() - state.loading_since
            message = f"The server is still loading its models ({waited:.0f}s so far): try again in a few seconds."
            await websocket.send_json(error_event("server_error", "models_loading", message))
            await websocket.close(code=1013, reason="Models loading")
            return
        kind: SessionKind = "transcription" if intent == "transcription" else "realtime"
        session = RealtimeSession(
            SessionDefaults.from_settings(settings), handshake.dialect, kind=kind, model=model or None
        )
        connection = RealtimeConnection(websocket, session, providers)
        state.connections.add(connection)
        logger.info(f"Session {session.id} opened ({handshake.dialect}, {kind}, model={session_model(session)})")
        try:
            await connection.run()
        finally:
            state.connections.discard(connection)

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
    uvicorn.run(
        app,
        host=settings.server_host,
        port=settings.server_port,
        ws_max_size=settings.ws_max_message_bytes,
        # Deflating base64 audio costs much CPU and saves little; OpenAI's Python SDK does not ask for it either.
        ws_per_message_deflate=False,
        log_level="debug" if settings.debug else settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
