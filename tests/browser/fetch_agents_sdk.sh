#!/bin/sh
# Fetches the OpenAI Agents SDK's browser bundle (@openai/agents-realtime, pinned) from npm into
# tests/browser/vendor/ for tests/test_browser.py, which serves it from a local origin: the page loads nothing from
# elsewhere. `make test` runs this; it does nothing once the bundle is there.
set -eu
VERSION=0.20.0
HERE=$(cd "$(dirname "$0")" && pwd)
DEST="$HERE/vendor/agents-realtime-$VERSION"
if [ -f "$DEST/openai-realtime-agents.mjs" ]; then
	exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
	echo "fetch_agents_sdk.sh: npm is missing (apt-get install npm); the Agents SDK browser test will fail" >&2
	exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "Fetching @openai/agents-realtime@$VERSION (npm) for the browser tests..."
(cd "$WORK" && npm pack --silent "@openai/agents-realtime@$VERSION" >/dev/null && tar -xzf openai-agents-realtime-$VERSION.tgz)
mkdir -p "$DEST"
cp "$WORK"/package/dist/bundle/*.mjs "$DEST"/
cp "$WORK"/package/LICENSE "$DEST"/ 2>/dev/null || true
