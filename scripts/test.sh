#!/usr/bin/env bash
# Everything the tests need (packages, build, models, the openai client), then every
# test: the C unit tests, Lua specs and server specs through ctest, once in the Release build and once more built
# with AddressSanitizer/UBSan. Ends with ctest's summary line.
set -euo pipefail
case "${1:-}" in -h|--help) cat <<'EOF'
usage: scripts/test.sh
Runs scripts/setup.sh, fetches what the tests need (Gemma 3, MiniLM, the openai and ollama
clients and selenium in spec/.venv, Debian's chromium), then every test through ctest: once in the Release build and once more built with
AddressSanitizer and UBSan. Ends with ctest's summary line; exit status 0 when all passed.
EOF
  exit 0 ;; esac
cd "$(dirname "$0")/.."

LUMEN_CMAKE_ARGS="-DLUMEN_WERROR=ON" scripts/setup.sh
# the agreement test also checks Gemma 3 (the gemma3 architecture, a SentencePiece vocabulary)
PY=python3; $PY -c "import yaml" 2>/dev/null || PY=/usr/bin/python3
$PY scripts/fetch_model.py gemma3
# the embedding specs: all-MiniLM-L6-v2 as shipped and as a GGUF (bert_to_gguf.py needs gguf from PyPI)
bench/setup_embed_venv.sh
bench/.venv-embed/bin/python scripts/fetch_model.py minilm minilm-gguf
# the agreement test also checks random weights at Llama-3.2-1B's real shape (0.77 GB, written
# in ~10 s, not downloaded; the writer checks the sha256 its fixture was recorded from)
bench/.venv-embed/bin/python bench/make_shaped.py llama3-1b:Q4_0
# the vision specs: a tiny idefics3 mmproj (random weights, seeded), SmolLM2 with SmolVLM's
# image tokens, and photographs from Debian's python3-skimage data (model cache, not committed)
bench/.venv-embed/bin/python bench/vision/make_mmproj.py vision-tiny-mmproj.gguf
# ... and that SmolLM2 widened to f32, where greedy continuations compare free of Q8 rounding
M="${LUMEN_MODELS:-$HOME/.cache/lumen/models}"
[ -f "$M/SmolLM2-135M-vision.f32.gguf" ] || build/lumen quantize "$M/SmolLM2-135M-vision.Q4_1.gguf" "$M/SmolLM2-135M-vision.f32.gguf" f32
# the server specs talk to `lumen serve` through the official openai and ollama clients,
# and drive the web chat page in Debian's headless Chromium (spec/.venv has selenium)
for p in chromium chromium-driver; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
    break
  fi
done
scripts/test_venv.sh

jobs=$(nproc)
status=0
echo "== tests (Release build)"
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 1500 || status=1

echo "== tests (AddressSanitizer + UBSan build)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLUMEN_SANITIZE=ON -DLUMEN_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
ASAN_OPTIONS=detect_leaks=1 LUMEN_ASAN=1 ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 1500 -L asan || status=1
exit $status
