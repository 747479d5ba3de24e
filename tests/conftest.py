"""Fixtures: the OpenAI-compatible fake in a thread, and servers started the way users start them.

Helpers live in `tests/support`; the fakes in `tests/fakes`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

# As main.py does for the server: the tests run models in this process too, and ONNX Runtime must not dial out.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import httpx
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.servers import RunningServer, provider_env, start_server

if TYPE_CHECKING:
    from tests.support.in_process import InProcessServer


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture
def fake(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """The shared fake with its scripts and request log cleared (for the log's sake: scripts are per session)."""
    httpx.post(f"http://127.0.0.1:{fake_openai.port}/_fake/reset").raise_for_status()
    return fake_openai


@pytest.fixture(scope="session")
def server(fake_openai: FakeOpenAI) -> Iterator[RunningServer]:
    """The server, on the OpenAI providers pointed at the fake."""
    running = start_server(provider_env(fake_openai))
    yield running
    running.stop()


@pytest.fixture
def server_factory(fake_openai: FakeOpenAI) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def factory(**env: str) -> RunningServer:
        running = start_server({**provider_env(fake_openai), **env})
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def in_process(fake: FakeOpenAI) -> Iterator[InProcessServer]:
    """The app served in this process (a thread with its own loop), to count its tasks and measure its memory."""
    from tests.support.in_process import InProcessServer, in_process_settings

    with InProcessServer(in_process_settings(fake)) as running:
        yield running
