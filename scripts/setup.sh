#!/usr/bin/env bash
# Installs what lumen needs from Debian, builds it into build/, fetches the default
# model into the cache (linked as models/) and checks its sha256. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config luajit libluajit-5.1-dev libdnnl-dev libyaml-dev
      libmicrohttpd-dev libsqlite3-dev lua-cjson lua-busted python3 python3-pip python3-venv python3-yaml unzip)
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
