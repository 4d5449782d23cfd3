#!/usr/bin/env bash
# lumen vs llama.cpp side by side (see bench/run.py); sets up bench/.venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup_venv.sh
bench/.venv/bin/python -c 'import matplotlib' 2>/dev/null || bench/.venv/bin/pip install -q matplotlib
exec bench/.venv/bin/python bench/run.py "$@"
