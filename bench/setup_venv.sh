#!/bin/sh
# (Re)create bench/.venv with the reference implementation used by the fixture
# and speed scripts: llama-cpp-python (which bundles llama.cpp) plus numpy.
#
# usage: bench/setup_venv.sh
#
# Idempotent: does nothing when the venv exists and already has the pinned
# llama-cpp-python version and numpy.  llama-cpp-python is built from source
# by pip (needs a C/C++ compiler and cmake; takes a few minutes).
set -eu

LLAMA_CPP_PYTHON_VERSION=0.3.16

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/bench/.venv"
PY="$VENV/bin/python"

have_ok() {
    [ -x "$PY" ] || return 1
    "$PY" - "$LLAMA_CPP_PYTHON_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
import numpy  # noqa: F401
import llama_cpp
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
EOF
}

if have_ok; then
    exit 0
fi

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy

if ! have_ok; then
    echo "setup_venv: llama-cpp-python $LLAMA_CPP_PYTHON_VERSION or numpy still not importable from $VENV" >&2
    exit 1
fi
