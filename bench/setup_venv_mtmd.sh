#!/bin/sh
# (Re)create bench/.venv-mtmd: llama-cpp-python 0.3.36 (whose llama.cpp has the mtmd
# vision library and the tokenizer rules the fixtures' tokenizer records follow), with
# numpy, gguf and pillow, for bench/vision/reference.py, bench/vision/run.sh and
# bench/retokenize_fixture.py. Built from source by pip (a few minutes). On CPUs with
# AMX its extra buffer types must stay off (see shared/ARCHITECTURE.md): the scripts do.
#
# usage: bench/setup_venv_mtmd.sh
set -eu
VERSION=0.3.36
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/bench/.venv-mtmd"
PY="$VENV/bin/python"
if [ -x "$PY" ] && "$PY" -c "import sys, llama_cpp, llama_cpp.mtmd_cpp, numpy, gguf, PIL; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "llama-cpp-python==$VERSION" numpy gguf pillow
"$PY" -c "import llama_cpp.mtmd_cpp" || { echo "setup_venv_mtmd: llama_cpp.mtmd_cpp is not importable from $VENV" >&2; exit 1; }
