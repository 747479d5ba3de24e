"""Test helpers: drive the server with the official `openai` SDK and check every frame against the SDK's models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from openai import AsyncOpenAI
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GaServerEvent
from pydantic import Field, TypeAdapter

GA_EVENTS: TypeAdapter[Any] = TypeAdapter(Annotated[GaServerEvent, Field(discriminator="type")])
BETA_EVENTS: TypeAdapter[Any] = TypeAdapter(Annotated[BetaServerEvent, Field(discriminator="type")])

Dialect = Literal["ga", "beta"]


def validate_server_event(event: dict[str, Any], dialect: Dialect) -> None:
    """Raises if the event is not valid under the SDK's models of its dialect."""
    (GA_EVENTS if dialect == "ga" else BETA_EVENTS).validate_python(event)


class RealtimeTestClient:
    """An SDK connection that records and validates every server event it receives."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self.events: list[dict[str, Any]] = []
        self.session_id = ""  # from `session.created`: what the tests script the provider fakes for

    async def send(self, event: dict[str, Any]) -> None:
        await self.connection.send(event)

    async def send_raw(self, data: str | bytes) -> None:
        """Sends a frame as is (the beta connection has no `send_raw`; its websocket does the same)."""
        send_raw = getattr(self.connection, "send_raw", None)
        if send_raw is not None:
            await send_raw(data)
        else:
            await self.connection._connection.send(data)  # the beta SDK keeps its websocket private

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv_bytes(), timeout)
        event = json.loads(raw)
        validate_server_event(event, self.dialect)
        self.events.append(event)
        if event["type"] in ("session.created", "transcription_session.created"):
            self.session_id = event["session"]["id"]
        return event

    async def until(self, event_type: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Receives events up to and including the first of `event_type`; returns them all."""
        received = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(timeout=max(0.01, deadline - loop.time()))
            received.append(event)
            if event["type"] == event_type:
                return received

    async def expect(self, event_type: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event, which must be of `event_type`."""
        event = await self.recv(timeout)
        assert event["type"] == event_type, f"expected {event_type}, got {event}"
        return event

    async def no_event(self, within: float = 0.3) -> None:
        try:
            event = await self.recv(timeout=within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")


@asynccontextmanager
async def connect(
    base_url: str, dialect: Dialect = "ga", model: str = "gpt-realtime", api_key: str = "dummy", **options: Any
) -> AsyncIterator[RealtimeTestClient]:
    """Opens a Realtime connection with the official SDK, GA or beta, the way users do."""
    http_base = f"{base_url}/v1"
    if dialect == "ga":
        client = AsyncOpenAI(base_url=http_base, api_key=api_key)
        manager = client.realtime.connect(model=model, **options)
    else:
        ws_base = http_base.replace("http://", "ws://")
        client = AsyncOpenAI(base_url=http_base, api_key=api_key, websocket_base_url=ws_base)
        manager = client.beta.realtime.connect(model=model, **options)
    async with manager as connection:
        yield RealtimeTestClient(connection, dialect)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def without_deltas(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of deltas collapsed, for comparing sequences."""
    result: list[str] = []
    for event in events:
        name = event["type"]
        if name.endswith(".delta") and result and result[-1] == name:
            continue
        result.append(name)
    return result
