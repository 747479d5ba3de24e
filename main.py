"""The composition root: settings → providers, access control, session defaults → the FastAPI app.

Routes: the Realtime WebSocket at `/v1/realtime`, `/health`, the client-secret endpoints, and `/metrics` when
METRICS=true. Run with `python main.py` (the settings in `.env`; WORKERS=N starts N worker processes on one port) or
`uvicorn main:app [--workers N]`; the app is built when it is first asked for, so importing this module builds
nothing. The workers of one server share its session limit, its client-secret key and its metrics (`instance.py`).

Models load in the background once the server listens: `/health` answers 503 `loading` until they are ready, and
sessions opened meanwhile get an `error` event saying so. Models that fail to load end the process with
`EXIT_MODELS_FAILED` and one line saying why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, get_args

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from loguru import logger

# Until the settings are read only warnings reach stderr (Pipecat logs a banner when it is imported): a bad setting's
# line then stands alone.
logger.remove()
logger.add(sys.stderr, level="WARNING")
# ONNX Runtime (Silero, Smart Turn, Piper) uploads telemetry from C++ on Linux since 1.29 unless this is set before
# it is imported; nothing may dial out but the providers the user configured.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import metrics
from access import AccessControl, Grant, Refusal, parse_handshake, session_limit
from client_secrets import SecretEndpoint, SecretSigner, SecretTooLarge, mint_for_request
from config import Settings, SettingsError, get_settings
from connection import ConnectionLimits, RealtimeConnection
from instance import Instance, forget_dead_instances, prepare_supervisor
from launch import WORKER_HEALTHCHECK_S, GracefulStop, Launch, UvicornProbe, startup_exit_code
from local_models import ModelError
from mcp_client import McpLimits
from model_server import MODEL_SERVER_VARIABLE, Endpoint, ModelServer, ModelServerFailed
from process_memory import AllocatorTrim
from protocol import Dialect, ProtocolError, SessionKind, SessionUpdate, error_event, new_id
from providers.errors import ConfigurationError
from realtime_session import RealtimeSession
from service_providers import LlmServer, Providers
from session.commands import AudioOutput
from session.configuration import SessionDefaults
from transport import Ending, WebSocketChannel
from webrtc import OfferError, PeerSettings, WebRtcCall
from wire.parsing import parse_secret_request

EXIT_CONFIGURATION = 2
EXIT_MODELS_FAILED = 3


def configured_secret_key(settings: Settings) -> bytes | None:
    """REALTIME_SECRET_KEY as the signing key (hashed: any length of passphrase gives a full-size key)."""
    value = settings.secret("realtime_secret_key")
    return hashlib.sha256(b"realtime-secret-key:" + value.encode()).digest() if value else None


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
        self._clock = clock
        # Until the lifespan knows the instance's boot key nothing is served; a throwaway key stands in.
        signing_key = configured_secret_key(settings) or secrets.token_bytes(32)
        self.access = AccessControl(settings.api_keys, settings.origins, SecretSigner(signing_key, clock))
        self.instance: Instance | None = None
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
        self.calls: dict[str, WebRtcCall] = {}
        self._call_tasks: set[asyncio.Task[None]] = set()
        self.peer_settings = PeerSettings(
            settings.webrtc_connect_timeout_s,
            settings.webrtc_peer_timeout_s,
            settings.webrtc_public_ip,
            settings.max_outgoing_events,
        )
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
            self.providers = Providers.from_settings(self.settings, shared_llm_server())
        except (ConfigurationError, ModelError) as exc:
            logger.error(f"Configuration error: {exc}")
            raise SystemExit(EXIT_CONFIGURATION) from None
        await asyncio.to_thread(forget_dead_instances)
        instance = self.instance = await asyncio.to_thread(
            Instance.for_this_process, self.settings.max_sessions, metrics.worker_gone
        )
        if configured_secret_key(self.settings) is None:
            self.access.secrets = SecretSigner(await asyncio.to_thread(instance.boot_key), self._clock)
            logger.info(
                "REALTIME_SECRET_KEY is not set: client secrets are signed with a key made at boot, so only this "
                "server's processes accept them (and none after a restart); set the same key on every replica"
            )
        logger.info(f"Providers: {self.providers.description}")
        logger.info(f"Realtime WebSocket endpoint: {self.launch.endpoint()}")
        for warning in self.launch.warnings(self.settings.max_event_bytes, self.settings.llm_provider == "local"):
            logger.warning(warning)
        launched_workers = self.launch.config.workers if self.launch.config is not None else 1
        if 1 < self.settings.workers != launched_workers and not os.environ.get(WORKERS_FROM_MAIN):
            logger.warning(
                f"WORKERS={self.settings.workers} is what `python main.py` starts; uvicorn was started with"
                f" {launched_workers}: pass --workers {self.settings.workers} to uvicorn"
            )
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
        await asyncio.gather(*self._call_tasks, return_exceptions=True)
        await self.allocator.close()
        await self.providers.close()
        instance.close()

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
        total, workers = await asyncio.to_thread(self.instance.total) if self.instance else (0, 0)
        # A stopping server is not ready either: a load balancer's readiness check takes it out of the rotation.
        state = "shutting_down" if self.shutting_down else "healthy" if self.ready else "loading"
        body = {
            "status": state,
            # The whole server's (every worker's): what MAX_SESSIONS limits.
            "active_sessions": total,
            "worker_sessions": len(self.connections),
            "workers": workers,
            "models_ready": self.ready,
            # What a soak test watches for leaks (bench/soak.py): it stays flat while sessions come and go.
            "asyncio_tasks": len(asyncio.all_tasks()),
        }
        return JSONResponse(body, status_code=200 if state == "healthy" else 503)

    async def realtime(
        self, websocket: WebSocket, model: str | None = None, intent: str | None = None, call_id: str | None = None
    ) -> None:
        handshake = parse_handshake(websocket.headers, list(websocket.scope.get("subprotocols", [])))
        if call_id is not None:
            await self.sideband(websocket, handshake.api_key, handshake.subprotocol, call_id)
            return
        decision = self.access.admit(
            websocket.headers.get("origin"), handshake.api_key, shutting_down=self.shutting_down
        )
        if isinstance(decision, Refusal):
            await websocket.send_denial_response(refusal_response(decision))
            return
        instance = self.instance
        if instance is None or not await asyncio.to_thread(instance.reserve):
            await websocket.send_denial_response(refusal_response(session_limit(self.settings.max_sessions)))
            return
        try:
            await self._serve(websocket, handshake.subprotocol, handshake.dialect, decision, model, intent)
        finally:
            instance.release()

    async def _serve(
        self,
        websocket: WebSocket,
        subprotocol: str | None,
        dialect: Dialect,
        grant: Grant,
        model: str | None,
        intent: str | None,
    ) -> None:
        await websocket.accept(subprotocol=subprotocol)
        secret = grant.secret
        providers = self.providers
        if providers is None or not self.ready:
            waited = time.monotonic() - self.loading_since
            message = f"The server is still loading its models ({waited:.0f}s so far): try again in a few seconds."
            await websocket.send_json(error_event("server_error", "models_loading", message))
            await websocket.close(code=1013, reason="Models loading")
            return
        kind: SessionKind = "transcription" if intent == "transcription" else "realtime"
        session = RealtimeSession(
            self.defaults,
            dialect,
            kind=secret.kind if secret is not None else kind,
            model=model or None,
            initial_update=secret.initial_update() if secret is not None else None,
        )
        channel = WebSocketChannel(websocket, self.settings.max_outgoing_events)
        connection = RealtimeConnection(channel, session, providers, self.limits)
        self.connections.add(connection)
        model_name = getattr(session.config, "model", "-")
        logger.info(
            f"Session {session.id} opened ({dialect}, {session.kind}, model={model_name}, {grant.how},"
            f" pid {os.getpid()})"
        )
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.allocator.session_closed(open_sessions=len(self.connections))

    # ---- WebRTC ----------------------------------------------------------------------------------------------

    async def create_call(self, request: Request, model: str | None = None) -> Response:
        """`POST /v1/realtime/calls`: the browser's SDP offer in, the SDP answer out (201, `Location` names the
        call). The body is the offer (`application/sdp`), or a form with an `sdp` part and a `session` part."""
        decision = self.access.admit(
            request.headers.get("origin"),
            parse_handshake(request.headers, []).api_key,
            shutting_down=self.shutting_down,
        )
        if isinstance(decision, Refusal):
            return refusal_response(decision)
        providers = self.providers
        if providers is None or not self.ready:
            waited = time.monotonic() - self.loading_since
            message = f"The server is still loading its models ({waited:.0f}s so far): try again in a few seconds."
            return openai_error(503, message, "models_loading", "server_error")
        instance = self.instance
        if instance is None or not await asyncio.to_thread(instance.reserve):
            return refusal_response(session_limit(self.settings.max_sessions))
        started = False
        try:
            response, started = await self._answer_call(request, decision, providers, model)
            return response
        finally:
            if not started:  # a call that does not start gives its session slot back; one that does, when it ends
                instance.release()

    async def _answer_call(
        self, request: Request, decision: Grant, providers: Providers, model: str | None
    ) -> tuple[Response, bool]:
        """The SDP answer (or the error) for an offer, and whether the call started."""
        try:
            offer, update = await read_offer(request)
            secret = decision.secret
            session = RealtimeSession(
                self.defaults,
                "ga",
                kind=update.kind if update is not None else secret.kind if secret is not None else "realtime",
                model=model or (update.patch.get("model") if update is not None else None),
                initial_update=secret.initial_update() if secret is not None else None,
                call_update=update,
                audio_output=AudioOutput.TRACK,
            )
        except ProtocolError as error:
            return openai_error(400, error.message, error.code or "invalid_value", param=error.param), False
        except OfferError as error:
            return openai_error(error.status, error.message, error.code, param=error.param), False
        call = WebRtcCall(session, providers, self.limits, self.peer_settings)
        try:
            answer = await call.answer(offer)
        except OfferError as error:
            return openai_error(error.status, error.message, error.code, param=error.param), False
        self.calls[call.id] = call
        self.connections.add(call.connection)
        logger.info(f"Call {call.id} answered: session {session.id} ({session.kind}, {decision.how})")
        task = asyncio.create_task(self._run_call(call), name=f"call-{call.id}")
        self._call_tasks.add(task)
        task.add_done_callback(self._call_tasks.discard)
        headers = {"Location": f"/v1/realtime/calls/{call.id}"}
        return Response(answer, status_code=201, media_type="application/sdp", headers=headers), True

    async def _run_call(self, call: WebRtcCall) -> None:
        try:
            await call.run()
        finally:
            self.calls.pop(call.id, None)
            self.connections.discard(call.connection)
            if self.instance is not None:
                self.instance.release()
            self.allocator.session_closed(open_sessions=len(self.connections))

    async def hangup(self, request: Request, call_id: str) -> Response:
        """`POST /v1/realtime/calls/{call_id}/hangup` ends the call."""
        key = parse_handshake(request.headers, []).api_key
        if self.access.authorize(key) is None:
            return openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        call = self.calls.get(call_id)
        if call is None:
            return openai_error(404, f"Call '{call_id}' not found.", "call_not_found", param="call_id")
        await call.hangup()
        return Response(status_code=200)

    async def sideband(self, websocket: WebSocket, key: str | None, subprotocol: str | None, call_id: str) -> None:
        """`/v1/realtime?call_id=rtc_…`: a server's WebSocket joined to a call's session (an API key, not a
        client secret: this is how a backend keeps tools and secrets off the browser)."""
        if not self.access.open and not self.access.may_mint(key):
            message = "A sideband connection needs an API key." if key is None else "Incorrect API key provided."
            await websocket.send_denial_response(openai_error(401, message, "invalid_api_key"))
            return
        call = self.calls.get(call_id)
        if call is None:
            message = f"Call '{call_id}' not found."
            await websocket.send_denial_response(openai_error(404, message, "call_not_found", param="call_id"))
            return
        await websocket.accept(subprotocol=subprotocol)
        channel = WebSocketChannel(websocket, self.settings.max_outgoing_events)
        await channel.start()
        # What a connection starts with: the session as it is now.
        channel.send(json.dumps(created_event(call.session), separators=(",", ":")))
        call.channel.sidebands.add(channel)
        logger.info(f"Call {call_id}: sideband connected")
        try:
            while (data := await channel.receive()) is not None:
                call.channel.inject(data)
        finally:
            call.channel.sidebands.discard(channel)
            await channel.close(Ending.CLIENT_LEFT)

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
        except SecretTooLarge as exc:
            return openai_error(400, str(exc), "invalid_value", param="session")

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format (METRICS=true); with keys configured only an API key may read it."""
        key = parse_handshake(request.headers, []).api_key
        if not self.access.open and not self.access.may_mint(key):
            return openai_error(
                401, "The metrics need an API key: send it as 'Authorization: Bearer <key>'.", "invalid_api_key"
            )
        if self.instance is not None:
            await asyncio.to_thread(self.instance.total)  # drops the live gauges of workers that died
        body, content_type = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=content_type)


async def read_offer(request: Request) -> tuple[str, SessionUpdate | None]:
    """The SDP offer and the session configuration of a `POST /v1/realtime/calls` body."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form()
        except Exception:  # python-multipart's errors: the body is not the form it says it is
            raise OfferError("The multipart body could not be parsed.", "invalid_request_body") from None
        sdp_part = form.get("sdp")
        if sdp_part is None:
            raise OfferError("The form has no 'sdp' part.", "missing_required_parameter", param="sdp")
        offer = sdp_part if isinstance(sdp_part, str) else (await sdp_part.read()).decode("utf-8", "replace")
        session_part = form.get("session")
        if session_part is None:
            return offer, None
        raw = session_part if isinstance(session_part, str) else (await session_part.read()).decode("utf-8", "replace")
        try:
            session = json.loads(raw)
        except ValueError:
            raise ProtocolError("The 'session' part is not valid JSON.", code="invalid_json", param="session") from None
        parsed = parse_secret_request({"session": session}, "client_secrets")
        return offer, SessionUpdate(None, parsed.kind, parsed.patch)
    if content_type not in ("application/sdp", "text/plain", ""):
        raise OfferError(
            f"Unsupported content type '{content_type}': send the offer as application/sdp, or multipart/form-data "
            "with 'sdp' and 'session' parts.",
            "unsupported_content_type",
            status=415,
        )
    return (await request.body()).decode("utf-8", "replace"), None


def created_event(session: RealtimeSession) -> dict[str, Any]:
    return {"type": "session.created", "event_id": new_id("event"), "session": session.session_object()}


CONSOLE_PAGE = Path(__file__).resolve().parent / "console" / "index.html"


async def console_page() -> FileResponse:
    """The browser console: a voice call over WebRTC with this server (see console/index.html)."""
    return FileResponse(CONSOLE_PAGE, media_type="text/html")


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
    app.add_api_route("/", console_page, methods=["GET"], include_in_schema=False)
    if server.settings.metrics:
        app.add_api_route("/metrics", server.metrics, methods=["GET"])
    app.add_api_websocket_route("/v1/realtime", server.realtime)
    app.add_api_route("/v1/realtime/calls", server.create_call, methods=["POST"])
    app.add_api_route("/v1/realtime/calls/{call_id}/hangup", server.hangup, methods=["POST"])
    # Browser pages call the calls endpoint from their own origin; the WebSocket is not subject to CORS.
    origins = sorted(server.settings.origins)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins or ["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Location"],
        max_age=600,
    )
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


WORKERS_FROM_MAIN = "REALTIME_WORKERS_FROM_MAIN"  # tells the workers `python main.py` started them with WORKERS


def shared_llm_server() -> LlmServer | None:
    """The model server this worker's supervisor started for all its workers, if it did."""
    announced = os.environ.get(MODEL_SERVER_VARIABLE)
    if not announced:
        return None
    endpoint = Endpoint.from_json(announced)
    return LlmServer(endpoint.base_url, endpoint.api_key, endpoint.model)


def main() -> None:
    settings = checked_settings()
    configure_logging(settings)
    workers = settings.workers
    if workers > 1:
        # The instance's folder and boot key exist before any worker starts; the workers find them by this pid.
        folder = prepare_supervisor()
        os.environ[WORKERS_FROM_MAIN] = "1"
        model_server: ModelServer | None = None
        try:
            if settings.llm_provider == "local":
                # One copy of the largest model for all the workers, loaded before they start.
                logger.info(f"Loading the local LLM once, in a model server for {workers} workers")
                try:
                    model_server = ModelServer.start()
                except ModelServerFailed as exc:
                    print(f"Could not load the models: {exc}", file=sys.stderr)
                    raise SystemExit(EXIT_MODELS_FAILED) from None
                os.environ[MODEL_SERVER_VARIABLE] = model_server.endpoint.to_json()
            serve(settings, "main:app", workers)
        finally:
            if model_server is not None:
                model_server.stop()
            shutil.rmtree(folder, ignore_errors=True)
        return
    serve(settings, create_app(settings), 1)


def serve(settings: Settings, app: Any, workers: int) -> None:
    """Uvicorn as `python main.py` runs it: one process serving `app`, or `workers` processes importing it."""
    config = uvicorn.Config(
        app,
        workers=workers,
        # llama.cpp holds a worker's interpreter while it loads: uvicorn must not take that for a hung worker.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        host=settings.server_host,
        port=settings.server_port,
        # Events over MAX_EVENT_BYTES get an error event; only far larger messages make uvicorn drop the socket.
        ws_max_size=2 * settings.max_event_bytes,
        # Deflating base64 audio costs much CPU and saves little; OpenAI's Python SDK does not ask for it either.
        ws_per_message_deflate=False,
        log_level="debug" if settings.debug else settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    if workers == 1:
        uvicorn.Server(config).run()
        return
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    main()
