#!/usr/bin/env bash
# `make test-container`: build the image as users do (the repository's Dockerfile), run it, and drive a real session
# against it with the official SDK from the host: a text turn and a spoken turn on the image's own offline models,
# then a graceful stop (SIGTERM to the container's PID 1) seen by a connected client; last, compose.yaml started with
# podman-compose until healthy. Everything it starts is removed on exit, failed or not.
#
# Engine: rootful podman with runc, as ../shared/reference/containers.md measured for machines without a registry.
# This machine's quirks are handled here, never in the Dockerfile:
#   1. root may not raise RLIMIT_NOFILE: a containers.conf whose default ulimits are the current hard limits;
#   2. crun refuses hybrid cgroups: runc, with the file events logger (no journald);
#   3. outbound TLS is intercepted by a local CA: the base image (built locally with mmdebstrap, since no registry is
#      reachable) carries the host's CA bundle. On a machine with a registry, set BASE_IMAGE=python:3.11-slim.
# The container's network is an internal podman network: no route out, reachable only from this host.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-localhost/realtime-server:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-base:local}
PYTHON=${PYTHON:-.venv/bin/python}
RUN_ID="realtime-test-$$"
NETWORK="$RUN_ID-net"
CONTAINER="$RUN_ID"
WORK=$(mktemp -d)

log() { printf '[test-container %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
seconds_since() { python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

cleanup() {
	local status=$?
	if [ "$status" -ne 0 ] && podman container exists "$CONTAINER" 2>/dev/null; then
		log "the container's log:"
		podman logs "$CONTAINER" 2>&1 | tail -n 60 || true
	fi
	if [ "$status" -ne 0 ] && podman container exists "${RUN_ID}_server_1" 2>/dev/null; then
		log "the compose server's log:"
		podman logs "${RUN_ID}_server_1" 2>&1 | tail -n 40 || true
	fi
	podman rm --force --time 0 "$CONTAINER" >/dev/null 2>&1 || true
	podman network rm --force "$NETWORK" >/dev/null 2>&1 || true
	podman ps --all --quiet --filter "label=com.docker.compose.project=$RUN_ID" |
		xargs --no-run-if-empty podman rm --force --time 0 >/dev/null 2>&1 || true
	podman network rm --force "${RUN_ID}_default" >/dev/null 2>&1 || true
	rm -rf "$WORK"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_podman() {
	if command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null; then
		return
	fi
	log "installing podman, runc and mmdebstrap"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq podman runc mmdebstrap >/dev/null
}

configure_podman() {
	local nofile
	nofile=$(ulimit -Hn)
	cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
events_logger = "file"
CONF
	export CONTAINERS_CONF="$WORK/containers.conf"
}

build_base_image() {
	if [ "$BASE_IMAGE" != localhost/debian-base:local ] || podman image exists "$BASE_IMAGE"; then
		return
	fi
	log "building $BASE_IMAGE with mmdebstrap (no registry needed)"
	local started
	started=$(date +%s.%N)
	mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates,curl \
		--customize-hook='copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs' \
		bookworm - | podman import - "$BASE_IMAGE" >/dev/null
	log "base image built in $(seconds_since "$started") s"
}

free_port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

wait_until_healthy() {
	local container=$1 url=$2 deadline=$((SECONDS + 300))
	until [ "$(curl --silent --max-time 3 --output /dev/null --write-out '%{http_code}' "$url/health")" = 200 ]; do
		if [ "$(podman inspect --format '{{.State.Running}}' "$container")" != true ]; then
			log "the container exited"
			return 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "not healthy after 300 s"
			return 1
		fi
		sleep 0.2
	done
}

install_podman
configure_podman
build_base_image
if [ "${1:-}" = --setup-only ]; then
	exit 0
fi
[ -x "$PYTHON" ] || { log "$PYTHON is missing: run \`make install-dev\`"; exit 1; }

log "building $IMAGE from the Dockerfile on $BASE_IMAGE"
started=$(date +%s.%N)
podman build --format docker --layers --build-arg BASE_IMAGE="$BASE_IMAGE" --tag "$IMAGE" . | sed 's/^/    /'
build_s=$(seconds_since "$started")
size_mb=$(($(podman image inspect --format '{{.Size}}' "$IMAGE") / 1000000))
log "built in $build_s s; image size $size_mb MB"

# An internal network without DNS: no route out of this host and no name resolved (podman's DNS would forward
# queries), so the server reaches nothing but its loopback and the bridge it answers on. Podman 4.3 (netavark) does
# not forward published ports into an internal network, and gives the host no address on the bridge unless a gateway
# is named (both measured), so the test names one and connects to the container's address on that bridge.
create_network() {
	local attempt octet
	for attempt in 0 1 2 3 4 5 6 7; do
		octet=$((100 + ($$ + attempt * 17) % 150))
		if podman network create --internal --disable-dns --subnet "10.89.$octet.0/24" --gateway "10.89.$octet.1" \
			"$NETWORK" >/dev/null 2>&1; then
			return
		fi
	done
	log "could not create an internal network (every subnet tried is in use)"
	return 1
}
create_network
# Run as hardened as a user may: read-only root filesystem (a start that wrote anywhere, a home or the model cache,
# would fail), no capabilities, and the settings of a `.env` copied from .env.example (as compose.yaml passes them);
# a temperature of 0 keeps the small model's answers to the test's questions the same from run to run.
started=$(date +%s.%N)
podman run --detach --name "$CONTAINER" --network "$NETWORK" \
	--read-only --cap-drop=all --security-opt=no-new-privileges --env-file .env.example --env LLM_TEMPERATURE=0 \
	"$IMAGE" >/dev/null
address=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CONTAINER")
BASE_URL="http://$address:8000"
wait_until_healthy "$CONTAINER" "$BASE_URL"
healthy_s=$(seconds_since "$started")
log "healthy on $BASE_URL $healthy_s s after podman run"
podman healthcheck run "$CONTAINER" 2>/dev/null || { log "the image's HEALTHCHECK failed on a healthy server"; exit 1; }

container_log=$(podman logs "$CONTAINER" 2>&1)
grep -qF "Providers: {'stt': 'local_whisper', 'llm': 'local', 'tts': 'piper'}" <<<"$container_log" ||
	{ log "the server did not start on the offline default"; exit 1; }
if grep -qiE 'joining|verifying' <<<"$container_log"; then
	log "the server joined or verified weights at start: the build should have done it"
	exit 1
fi
pid1=$(podman exec "$CONTAINER" sh -c 'tr "\0" " " </proc/1/cmdline; echo "as $(id -un)"')
[ "$pid1" = "python main.py as realtime" ] || { log "PID 1 is $pid1, not the server as its own user"; exit 1; }
log "PID 1: $pid1"

# The network is really cut: no name resolves and no address outside answers.
if podman exec "$CONTAINER" python -c "
import socket
try:
    socket.getaddrinfo('pypi.org', 443)
except socket.gaierror as exc:
    print('pypi.org does not resolve:', exc)
else:
    raise SystemExit('pypi.org resolves in the container')
for address in ('151.101.0.223', '1.1.1.1'):
    try:
        socket.create_connection((address, 443), timeout=3).close()
    except OSError as exc:
        print(address, 'is unreachable:', exc)
    else:
        raise SystemExit(f'{address} is reachable from the container')
"; then
	log "no way out of the container's network"
else
	log "the container's network is not cut"
	exit 1
fi

log "a text turn and a spoken turn through the official SDK"
"$PYTHON" -m tests.container.session_check turns "$BASE_URL"

log "a graceful stop with a session open"
ready="$WORK/streaming"
"$PYTHON" -m tests.container.session_check shutdown "$BASE_URL" "$ready" &
client=$!
deadline=$((SECONDS + 120))
until [ -e "$ready" ]; do
	kill -0 "$client" 2>/dev/null || { wait "$client"; exit 1; }
	[ "$SECONDS" -lt "$deadline" ] || { log "the answer did not start streaming"; exit 1; }
	sleep 0.1
done
started=$(date +%s.%N)
podman stop --time 20 "$CONTAINER" >/dev/null
stop_s=$(seconds_since "$started")
wait "$client"
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
# 143: uvicorn re-raises SIGTERM once it is done; 137 would mean podman had to kill it.
case "$exit_code" in 0 | 143) ;; *) log "the server exited with $exit_code"; exit 1 ;; esac
podman logs "$CONTAINER" 2>&1 | grep -qF "Shutting down: ending 1 session(s)" ||
	{ log "the server did not end the open session"; exit 1; }
log "stopped in $stop_s s (exit code $exit_code)"

# compose.yaml as users run it: its .env (here .env.example with another SERVER_PORT) picks the host port, and the
# gpu profile's model server stays off unless asked for. Its network is podman's default one: this part checks the
# file, the sessions above checked the server.
log "compose.yaml with podman-compose"
compose_dir="$WORK/compose"
mkdir "$compose_dir"
cp compose.yaml "$compose_dir/"
compose_port=$(free_port)
sed "s/^SERVER_PORT=.*/SERVER_PORT=$compose_port/" .env.example >"$compose_dir/.env"
compose=("$(dirname "$PYTHON")/podman-compose" --project-name "$RUN_ID" --file "$compose_dir/compose.yaml")
export REALTIME_IMAGE=$IMAGE
gpu_config=$("${compose[@]}" --profile gpu config)
grep -qF 'docker.io/ollama/ollama' <<<"$gpu_config" || { log "the gpu profile does not name the model server"; exit 1; }
"${compose[@]}" up --detach --no-build >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log"; exit 1; }
services=$(podman ps --all --filter "label=com.docker.compose.project=$RUN_ID" --format '{{.Names}}')
[ "$services" = "${RUN_ID}_server_1" ] || { log "compose started: $services (the server alone expected)"; exit 1; }
started=$(date +%s.%N)
wait_until_healthy "${RUN_ID}_server_1" "http://127.0.0.1:$compose_port"
log "compose: healthy on port $compose_port from .env, $(seconds_since "$started") s after up"
"${compose[@]}" down >>"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log"; exit 1; }

log "passed: build $build_s s, image $size_mb MB, podman run to healthy $healthy_s s, stop $stop_s s"
