#!/bin/sh
# (Re)create spec/.venv with the Python client libraries the server tests
# (spec/serve/) and the load benchmark (bench/load.py) speak to `lumen serve` with:
# the official openai client and httpx.
#
# usage: scripts/test_venv.sh
#
# Idempotent: does nothing when the venv exists and already has the pinned
# versions.  Pinned exactly so that a client upgrade never changes what the
# tests send.
set -eu

OPENAI_VERSION=3.57.0
HTTPX_VERSION=0.28.1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/spec/.venv"
PY="$VENV/bin/python"

have_ok() {
    [ -x "$PY" ] || return 1
    "$PY" - "$OPENAI_VERSION" "$HTTPX_VERSION" >/dev/null 2>&1 <<'PYEOF'
import sys
import httpx
import openai
sys.exit(0 if (openai.__version__, httpx.__version__) == tuple(sys.argv[1:3]) else 1)
PYEOF
}

if have_ok; then
    exit 0
fi

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "openai==$OPENAI_VERSION" "httpx==$HTTPX_VERSION"

if ! have_ok; then
    echo "test_venv: openai $OPENAI_VERSION or httpx $HTTPX_VERSION still not importable from $VENV" >&2
    exit 1
fi
