#!/usr/bin/env bash
# Installs what lumen needs from Debian, builds it into build/, fetches the default
# model into the cache (linked as models/) and checks its sha256. Safe to run again.
set -euo pipefail
case "${1:-}" in -h|--help) cat <<'EOF'
usage: scripts/setup.sh [ALIAS...]
Installs the Debian packages lumen needs (apt-get, as root or with sudo), builds it into build/
(LUMEN_BUILD_TYPE, default Release; LUMEN_CMAKE_ARGS for more cmake flags), and fetches the
models named (default: the registry's default) into the model cache, checking their sha256.
Safe to run again.
EOF
  exit 0 ;; esac
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config luajit libluajit-5.1-dev libdnnl-dev libyaml-dev
      libmicrohttpd-dev libcjson-dev libutf8proc-dev libxml2-dev libcurl4-openssl-dev libsqlite3-dev poppler-utils lua-cjson lua-busted
      libjpeg62-turbo-dev libpng-dev libwebp-dev
      python3 python3-pip python3-venv python3-yaml unzip)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

BUILD_TYPE=${LUMEN_BUILD_TYPE:-Release}
cmake -S . -B build -DCMAKE_BUILD_TYPE="$BUILD_TYPE" ${LUMEN_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc)"

# The fetch script needs PyYAML: use whichever python3 has it.
PY=python3
$PY -c 'import yaml' 2>/dev/null || PY=/usr/bin/python3
$PY scripts/fetch_model.py "$@"
