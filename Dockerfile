# The server with its offline default (local Whisper -> llama.cpp -> Piper) and every model inside the image: no key,
# no download at start. Build: `docker build -t realtime-server .` (or `podman build --format docker …`, which keeps
# the HEALTHCHECK). Any Debian-like image with python3 (3.11+) and its venv module can be the base.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# A venv, so that the same file works on a distribution's Python, whose system pip refuses installs (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# libgomp: the OpenMP runtime that xllamacpp's wheel (llama.cpp) links against and does not bundle.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# The dependencies first, on their own: a change to the code does not reinstall them.
COPY requirements.txt requirements-local.txt /tmp/requirements/
RUN pip install -r /tmp/requirements/requirements-local.txt && rm -rf /tmp/requirements

# The joined weights live outside the venv and outside any home. Both variables are set: a `.env` copied from
# .env.example passes an empty MODEL_CACHE_DIR, which falls back to REALTIME_CACHE_DIR.
ENV MODEL_CACHE_DIR=/opt/models \
    REALTIME_CACHE_DIR=/opt/models

# Join and verify (sha256) the weights with the server's own code, now rather than at first start. Only this file is
# copied, so changes elsewhere in the code keep this layer. The LLM's file gets a whole-second mtime and is verified
# a second time: its "verified" marker records size and mtime_ns, and a layer's tar may keep whole seconds only (the
# format allows either); a marker that no longer matched would make every start hash the file again and try to rewrite
# the marker in this read-only folder.
COPY local_models.py /tmp/build/
RUN cd /tmp/build && python -c "import os; from pathlib import Path; \
from local_models import llm_model_path, piper_voice_path, whisper_model_path; \
cache = Path(os.environ['MODEL_CACHE_DIR']); \
gguf = llm_model_path(None, cache, print); \
whole_second = int(gguf.stat().st_mtime) * 10**9; os.utime(gguf, ns=(whole_second, whole_second)); \
assert llm_model_path(None, cache, print) == gguf; \
print('LLM:', gguf); print('Whisper base:', whisper_model_path('base', cache)); \
print('Whisper tiny.en:', whisper_model_path('tiny.en', cache)); print('Piper voice:', piper_voice_path(None))" \
    && rm -rf /tmp/build

RUN useradd --user-group --uid 10001 --create-home --home-dir /home/realtime realtime
WORKDIR /app
COPY . .
RUN python -m compileall -q .

USER realtime
# The same lookups the server makes at start, as the server's user, who may not write to /opt/models: this fails the
# build if a start would have to join or re-verify anything.
RUN python -c "import os; from pathlib import Path; from local_models import llm_model_path, whisper_model_path; \
cache = Path(os.environ['MODEL_CACHE_DIR']); llm_model_path(None, cache); whisper_model_path('base', cache)"

ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8000
EXPOSE 8000
# 503 while the models load, 200 when ready (urlopen raises on a 503, so the check fails until then).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SERVER_PORT', '8000')}/health\", timeout=4)"]
# Exec form: the server is PID 1 and gets the SIGTERM of `docker stop` itself; it ends open sessions (an error event
# `server_shutting_down`, then close code 1001) before it exits.
CMD ["python", "main.py"]
