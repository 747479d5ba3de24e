"""What the server says about how uvicorn runs it (`launch.Launch`), from uvicorn's own configuration objects."""

from __future__ import annotations

import uvicorn

from launch import WORKER_HEALTHCHECK_S, Launch

MAX_EVENT_BYTES = 24 * 1024 * 1024


def app() -> None: ...


def test_the_endpoint_is_the_address_uvicorn_serves() -> None:
    assert Launch(uvicorn.Config(app, host="0.0.0.0", port=8123)).endpoint() == "ws://localhost:8123/v1/realtime"
    assert Launch(uvicorn.Config(app, host="10.0.0.5", port=9000)).endpoint() == "ws://10.0.0.5:9000/v1/realtime"
    assert Launch(uvicorn.Config(app, uds="/run/rt.sock")).endpoint() == "ws+unix:///run/rt.sock:/v1/realtime"
    assert "other than uvicorn" in Launch(None).endpoint()


def test_uvicorns_default_websocket_limit_gets_a_warning_naming_the_flag() -> None:
    (warning,) = Launch(uvicorn.Config(app)).warnings(MAX_EVENT_BYTES, loads_local_llm=False)
    assert "16777216 bytes" in warning and f"--ws-max-size {2 * MAX_EVENT_BYTES}" in warning
    assert Launch(uvicorn.Config(app, ws_max_size=2 * MAX_EVENT_BYTES)).warnings(MAX_EVENT_BYTES, False) == []


def test_workers_loading_the_local_llm_need_a_longer_health_check() -> None:
    workers = uvicorn.Config(app, workers=2, ws_max_size=2 * MAX_EVENT_BYTES)
    (warning,) = Launch(workers).warnings(MAX_EVENT_BYTES, loads_local_llm=True)
    assert f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}" in warning
    assert Launch(workers).warnings(MAX_EVENT_BYTES, loads_local_llm=False) == []
    patient = uvicorn.Config(app, workers=2, ws_max_size=2 * MAX_EVENT_BYTES, timeout_worker_healthcheck=60)
    assert Launch(patient).warnings(MAX_EVENT_BYTES, loads_local_llm=True) == []
