#!/usr/bin/env bash
# Image encode time and time to the first caption token, lumen vs llama.cpp's mtmd
# (llama-cpp-python 0.3.36 in bench/.venv-mtmd from bench/setup_venv_mtmd.sh, or $LCP_PY), alternating, on the same files
# and threads. Files from bench/vision/make_mmproj.py.
#   bench/vision/run.sh [MMPROJ] [IMAGE] [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${LUMEN_MODELS:-$HOME/.cache/lumen/models}
MMPROJ=${1:-$M/vision-smolvlm256m-mmproj.gguf}
IMAGE=${2:-$(dirname "$M")/vision/images/rocket.jpg}
T=${3:-2}
R=${4:-2}
PY=${LCP_PY:-bench/.venv-mtmd/bin/python}
for r in $(seq "$R"); do
  "$PY" bench/vision/reference.py --bench "$MMPROJ" "$IMAGE" "$T" 2>/dev/null | grep '^llama.cpp'
  build/lumen run bench/vision/bench.lua "$MMPROJ" "$IMAGE" "$T"
done
