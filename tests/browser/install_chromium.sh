#!/bin/sh
# Installs Debian's `chromium` for the browser tests (tests/test_browser.py) when it is missing: `make test` runs this.
# Needs root or sudo for apt-get; without either it says so and the browser tests fail saying Chromium is missing.
set -eu
if command -v chromium >/dev/null 2>&1; then
	exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
	SUDO=""
elif command -v sudo >/dev/null 2>&1; then
	SUDO="sudo"
else
	echo "install_chromium.sh: chromium is missing and apt-get needs root; install it: apt-get install chromium" >&2
	exit 0
fi
echo "Installing chromium (apt-get) for the browser tests..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
