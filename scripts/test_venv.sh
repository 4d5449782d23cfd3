#!/bin/sh
# (Re)create spec/.venv with the Python client libraries the server tests
# (spec/serve/) and the load benchmark (bench/load.py) speak to `lumen serve` with:
# the official openai and ollama clients, httpx, and selenium (driving Debian's
# chromium through its chromedriver for the web chat page).
#
# usage: scripts/test_venv.sh
#
# Idempotent: does nothing when the venv exists and already has the pinned
# versions.  Pinned exactly so that a client upgrade never changes what the
# tests send.
set -eu

OPENAI_VERSION=3.57.0
HTTPX_VERSION=0.28.1
OLLAMA_VERSION=0.6.3
SELENIUM_VERSION=4.27.1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/spec/.venv"
PY="$VENV/bin/python"

have_ok() {
    [ -x "$PY" ] || return 1
    "$PY" - "$OPENAI_VERSION" "$HTTPX_VERSION" "$OLLAMA_VERSION" "$SELENIUM_VERSION" >/dev/null 2>&1 <<'PYEOF'
import sys
from importlib.metadata import version
import httpx
import openai
import ollama  # noqa: F401
import selenium
sys.exit(0 if (openai.__version__, httpx.__version__, version("ollama"), selenium.__version__) == tuple(sys.argv[1:5]) else 1)
PYEOF
}

if have_ok; then
    exit 0
fi

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "openai==$OPENAI_VERSION" "httpx==$HTTPX_VERSION" "ollama==$OLLAMA_VERSION" "selenium==$SELENIUM_VERSION"

if ! have_ok; then
    echo "test_venv: openai $OPENAI_VERSION, httpx $HTTPX_VERSION, ollama $OLLAMA_VERSION or selenium $SELENIUM_VERSION still not importable from $VENV" >&2
    exit 1
fi
