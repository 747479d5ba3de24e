"""The composition root: settings → providers, access control, session defaults → the FastAPI app.

Routes: the Realtime WebSocket at `/v1/realtime`, `/health`, and the client-secret endpoints. Run with
`python main.py` (the settings in `.env`) or `uvicorn main:app`; the app is built when it is first asked for, so
importing this module builds nothing.

Models load in the background once the server listens: `/health` answers 503 `loading` until they are ready, and
sessions opened meanwhile get an `error` event saying so. Models that fail to load end the process with
`EXIT_MODELS_FAILED` and one line saying why.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, get_args

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from loguru import logger

# Until the settings are read only warnings reach stderr (Pipecat logs a banner when it is imported): a bad setting's
# line then stands alone.
logger.remove()
logger.add(sys.stderr, level="WARNING")
# ONNX Runtime (Silero, Smart Turn, Piper) uploads telemetry from C++ on Linux since 1.29 unless this is set before
# it is imported; nothing may dial out but the providers the user configured.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from access import AccessControl, Refusal, parse_handshake
from client_secrets import SecretEndpoint, SecretStore, TooManySecrets, mint_for_request
from config import Settings, SettingsError, get_settings
from connection import ConnectionLimits, RealtimeConnection
from launch import GracefulStop, Launch, UvicornProbe, startup_exit_code
from local_models import ModelError
from mcp_client import McpLimits
from process_memory import AllocatorTrim
from protocol import ProtocolError, SessionKind, error_event
from providers.errors import ConfigurationError
from realtime_session import RealtimeSession
from service_providers import Providers
from session.configuration import SessionDefaults
from transport import WebSocketChannel

EXIT_CONFIGURATION = 2
EXIT_MODELS_FAILED = 3


def openai_error(
    status: int, message: str, code: str, error_type: str = "invalid_request_error", param: str | None = None
) -> JSONResponse:
    """An HTTP error with the body OpenAI's API uses (what the SDKs parse into their exceptions)."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def refusal_response(refusal: Refusal) -> JSONResponse:
    return openai_error(refusal.status, refusal.message, refusal.code, refusal.type)


def session_defaults(settings: Settings) -> SessionDefaults:
    """What new sessions start with, from the server's settings."""
    return SessionDefaults(
        model=settings.model_name,
        instructions=settings.llm_system_prompt,
        temperature=settings.llm_temperature,
        llm_max_tokens=settings.llm_max_tokens,
        vad_threshold=settings.vad_threshold,
        vad_prefix_padding_ms=settings.vad_prefix_padding_ms,
        vad_silence_duration_ms=settings.vad_silence_duration_ms,
        lifetime_s=settings.session_max_duration_s,
        max_retained_audio_ms=settings.max_retained_audio_s * 1000,
        mcp_allowed_hosts=settings.mcp_hosts,
        preemptive_responses=settings.preemptive,
    )


def configure_logging(settings: Settings) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if settings.debug else settings.log_level.upper())


def exit_process(code: int) -> None:
    """Ends the process at once: nothing is running yet that could be saved (the models did not load)."""
    sys.stderr.flush()
    os._exit(startup_exit_code(code))


def refuse_configuration(problems: list[str]) -> NoReturn:
    """One line per bad setting and exit, before anything listens (the logger may not be set up yet)."""
    for problem in problems:
        print(f"Configuration error: {problem}", file=sys.stderr)
    raise SystemExit(startup_exit_code(EXIT_CONFIGURATION))


class RealtimeServer:
    """What the routes share: the settings, the providers, who may connect, and the open connections."""

    def __init__(
        self, settings: Settings, on_fatal: Callable[[int], None] = exit_process, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.access = AccessControl(settings.api_keys, settings.origins, SecretStore(clock))
        self.defaults = session_defaults(settings)
        self.limits = ConnectionLimits(
            settings.max_event_bytes,
            settings.session_max_duration_s,
            McpLimits(settings.mcp_list_timeout_s, settings.mcp_call_timeout_s, settings.mcp_max_output_bytes),
        )
        self.providers: Providers | None = None
        self.ready = False
        self.shutting_down = False
        self.loading_since = time.monotonic()
        self.connections: set[RealtimeConnection] = set()
        self.launch = Launch(None)
        self.allocator = AllocatorTrim()
        self._on_fatal = on_fatal

    def launched(self, launch: Launch) -> None:
        self.launch = launch

    # ---- lifecycle -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        configure_logging(self.settings)
        try:
            self.providers = Providers.from_settings(self.settings)
        except (ConfigurationError, ModelError) as exc:
            logger.error(f"Configuration error: {exc}")
            raise SystemExit(EXIT_CONFIGURATION) from None
        logger.info(f"Providers: {self.providers.description}")
        logger.info(f"Realtime WebSocket endpoint: {self.launch.endpoint()}")
        for warning in self.launch.warnings(self.settings.max_event_bytes, self.settings.llm_provider == "local"):
            logger.warning(warning)
        if self.launch.config is not None:
            GracefulStop(asyncio.get_running_loop(), self.shut_down_sessions).install()
        if self.access.open:
            logger.warning("REALTIME_API_KEYS is empty: anyone who can reach this port may use the server")
        self.loading_since = time.monotonic()
        loader = asyncio.create_task(self._load_models(self.providers), name="load-models")
        yield
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        await self.shut_down_sessions()
        for connection in list(self.connections):
            await connection.pipeline.stop()
        await self.allocator.close()
        await self.providers.close()

    async def _load_models(self, providers: Providers) -> None:
        started = time.monotonic()
        try:
            await providers.load()
        except Exception as exc:
            logger.error(f"Could not load the models: {exc}")
            self._on_fatal(EXIT_MODELS_FAILED)
            return
        self.ready = True
        logger.info(f"Models ready in {time.monotonic() - started:.1f}s")

    async def shut_down_sessions(self, timeout_s: float = 3.0) -> None:
        """Graceful stop: refuse new sessions, end the open ones (responses fail saying why, channels close)."""
        self.shutting_down = True
        connections = list(self.connections)
        if connections:
            logger.info(f"Shutting down: ending {len(connections)} session(s)")
            await asyncio.wait(
                [asyncio.create_task(connection.shutdown()) for connection in connections], timeout=timeout_s
            )

    # ---- routes ----------------------------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        body = {
            "status": "healthy" if self.ready else "loading",
            "active_sessions": len(self.connections),
            "models_ready": self.ready,
            # What a soak test watches for leaks (bench/soak.py): it stays flat while sessions come and go.
            "asyncio_tasks": len(asyncio.all_tasks()),
        }
        return JSONResponse(body, status_code=200 if self.ready else 503)

    async def realtime(self, websocket: WebSocket, model: str | None = None, intent: str | None = None) -> None:
        handshake = parse_handshake(websocket.headers, list(websocket.scope.get("subprotocols", [])))
        decision = self.access.admit(
            websocket.headers.get("origin"),
            handshake.api_key,
            open_sessions=len(self.connections),
            max_sessions=self.settings.max_sessions,
            shutting_down=self.shutting_down,
        )
        if isinstance(decision, Refusal):
            await websocket.send_denial_response(refusal_response(decision))
            return
        await websocket.accept(subprotocol=handshake.subprotocol)
        providers = self.providers
        if providers is None or not self.ready:
            waited = time.monotonic() - self.loading_since
            message = f"The server is still loading its models ({waited:.0f}s so far): try again in a few seconds."
            await websocket.send_json(error_event("server_error", "models_loading", message))
            await websocket.close(code=1013, reason="Models loading")
            return
        secret = decision.secret
        kind: SessionKind = "transcription" if intent == "transcription" else "realtime"
        session = RealtimeSession(
            self.defaults,
            handshake.dialect,
            kind=secret.kind if secret is not None else kind,
            model=model or None,
            initial_update=secret.initial_update() if secret is not None else None,
        )
        channel = WebSocketChannel(websocket, self.settings.max_outgoing_events)
        connection = RealtimeConnection(channel, session, providers, self.limits)
        self.connections.add(connection)
        model_name = getattr(session.config, "model", "-")
        logger.info(
            f"Session {session.id} opened ({handshake.dialect}, {session.kind}, model={model_name}, {decision.how})"
        )
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.allocator.session_closed(open_sessions=len(self.connections))

    async def mint_secret(self, request: Request, endpoint: SecretEndpoint) -> JSONResponse:
        """Ephemeral client secrets, as the real API mints them for browsers (see `client_secrets.py`)."""
        if not self.access.may_mint(parse_handshake(request.headers, []).api_key):
            return openai_error(401, "A client secret can only be made with an API key.", "invalid_api_key")
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "The request body is not valid JSON.", "invalid_json")
        try:
            return JSONResponse(mint_for_request(body, endpoint, self.defaults, self.access.secrets))
        except ProtocolError as error:
            return openai_error(400, error.message, error.code or "invalid_value", param=error.param)
        except TooManySecrets as exc:
            return openai_error(429, str(exc), "rate_limit_exceeded", "rate_limit_error")


async def unknown_path(websocket: WebSocket, path: str) -> None:
    # Without this route Starlette refuses with 403, which a client cannot tell from a refused key.
    message = f"No WebSocket endpoint at /{path}: the Realtime API is at /v1/realtime."
    await websocket.send_denial_response(openai_error(404, message, "unknown_url"))


def create_app(
    settings: Settings | None = None,
    on_fatal: Callable[[int], None] = exit_process,
    clock: Callable[[], float] = time.time,
) -> UvicornProbe:
    """The app; `on_fatal` ends the process when the models fail to load, `clock` tells client secrets' expiry.

    Outermost is the probe that tells the server how uvicorn runs it (FastAPI wraps what it passes on)."""
    server = RealtimeServer(settings or get_settings(), on_fatal, clock)
    app = FastAPI(title="Realtime API server", lifespan=server.lifespan)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_websocket_route("/v1/realtime", server.realtime)
    for endpoint in get_args(SecretEndpoint):
        app.add_api_route(f"/v1/realtime/{endpoint}", _minting(server, endpoint), methods=["POST"])
    app.add_api_websocket_route("/{path:path}", unknown_path)
    return UvicornProbe(app, on_launch=server.launched)


def _minting(server: RealtimeServer, endpoint: SecretEndpoint) -> Callable[[Request], Any]:
    async def mint(request: Request) -> JSONResponse:
        return await server.mint_secret(request, endpoint)

    return mint


def check_configuration(settings: Settings) -> None:
    """Raises `ConfigurationError` for a configuration that cannot work, before anything is loaded."""
    Providers.check(settings)


def __getattr__(name: str) -> UvicornProbe:
    """`uvicorn main:app` asks for `app`: it is built then, from the settings, once."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = create_app(checked_settings())
    globals()["app"] = app
    return app


def checked_settings() -> Settings:
    """The settings, checked before anything is loaded or listens; bad ones end the process with one line each."""
    try:
        settings = get_settings()
        check_configuration(settings)
    except SettingsError as exc:
        refuse_configuration(exc.problems)
    except (ConfigurationError, ModelError) as exc:
        refuse_configuration([str(exc)])
    return settings


def main() -> None:
    settings = checked_settings()
    configure_logging(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server_host,
        port=settings.server_port,
        # Events over MAX_EVENT_BYTES get an error event; only far larger messages make uvicorn drop the socket.
        ws_max_size=2 * settings.max_event_bytes,
        # Deflating base64 audio costs much CPU and saves little; OpenAI's Python SDK does not ask for it either.
        ws_per_message_deflate=False,
        log_level="debug" if settings.debug else settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
