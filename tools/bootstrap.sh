#!/usr/bin/env bash
# Prepare a fresh machine: system packages (when root), the local virtual environment, the package.
#   tools/bootstrap.sh runtime   - what the daemon needs (+ a broker for the demo)
#   tools/bootstrap.sh dev       - everything the test suite needs (train, bench, dev extras)
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-dev}
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

apt_install() {
  # Arguments are package:command pairs; a package is installed only when its command is missing,
  # and only when we can (root with apt). Otherwise say what is missing and carry on.
  local missing=()
  for pair in "$@"; do have "${pair#*:}" || missing+=("${pair%%:*}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "not root or no apt: cannot install ${missing[*]}"
    return 1
  fi
}

if [ "$want" = dev ]; then
  apt_install mosquitto:mosquitto mosquitto-clients:mosquitto_sub ffmpeg:ffmpeg systemd:systemd-analyze \
              npm:npm openssl:openssl || true
else
  apt_install mosquitto:mosquitto mosquitto-clients:mosquitto_sub || true
fi
# A distribution's mosquitto service would hold port 1883; tests use their own ports anyway.

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
pip_() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@"; }
if [ "$want" = dev ]; then
  # torch first, pinned: an unpinned torch may pull a multi-GB CUDA build.
  "$VENV/bin/python" -c "import torch" 2>/dev/null || pip_ "torch==2.13.0"
  pip_ -e ".[dev,train,bench]"
else
  pip_ -e .
fi
say "ready: $VENV ($want)"
