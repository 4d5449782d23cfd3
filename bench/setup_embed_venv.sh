#!/bin/sh
# (Re)create bench/.venv-embed: what the embedding tools need from PyPI, no torch.
#   scripts/bert_to_gguf.py        numpy, gguf, safetensors (and PyYAML for scripts/fetch_model.py)
#   bench/embed/reference.py       tokenizers, numpy, safetensors (the fixture's reference)
# usage: bench/setup_embed_venv.sh   (idempotent: nothing to do when everything imports)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/bench/.venv-embed"
PY="$VENV/bin/python"
if [ -x "$PY" ] && "$PY" -c "import numpy, gguf, safetensors, tokenizers, yaml" 2>/dev/null; then
    exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check numpy gguf safetensors tokenizers pyyaml
"$PY" -c "import numpy, gguf, safetensors, tokenizers, yaml"
