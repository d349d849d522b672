#!/usr/bin/env bash
# Prepare a fresh machine: system packages (when root), the local virtual environment, the package.
#   tools/bootstrap.sh runtime   - what the daemon needs (+ a broker for the demo)
#   tools/bootstrap.sh dev       - everything the test suite needs (train, bench, dev, operator, cluster extras)
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-dev}
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

T0=$SECONDS
say() { printf '\033[1m[bootstrap %4ds]\033[0m %s\n' $((SECONDS - T0)) "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

MISSING=()  # packages whose command is still missing after apt_install

apt_install() {
  # Arguments are package:command pairs; a package is installed only when its command is missing,
  # and only when we can (root with apt). Fails (MISSING names the packages) when a command is
  # still missing afterwards; the caller decides whether that is fatal.
  local missing=() pair
  MISSING=()
  for pair in "$@"; do have "${pair#*:}" || missing+=("${pair%%:*}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt)"
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
      say "apt-get failed for: ${missing[*]}"
  else
    say "not root or no apt: cannot install ${missing[*]}"
  fi
  for pair in "$@"; do have "${pair#*:}" || MISSING+=("${pair%%:*}"); done
  [ ${#MISSING[@]} -eq 0 ]
}

if [ "$want" = dev ]; then
  # The test suite needs every one of these (CI fails instead of skipping without systemd-analyze).
  if ! apt_install mosquitto:mosquitto mosquitto-clients:mosquitto_sub ffmpeg:ffmpeg systemd:systemd-analyze \
                   npm:npm openssl:openssl; then
    say "error: the dev setup needs system packages that are not installed: ${MISSING[*]}"
    say "install them (as root: apt-get install ${MISSING[*]}) and run tools/bootstrap.sh dev again"
    exit 1
  fi
else
  # The daemon needs none of these; the demo falls back to an embedded broker without mosquitto.
  apt_install mosquitto:mosquitto mosquitto-clients:mosquitto_sub ||
    say "continuing without ${MISSING[*]} (the demo uses its embedded broker instead of mosquitto)"
fi
# A distribution's mosquitto service would hold port 1883; tests use their own ports anyway.

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
. tools/pip-progress.sh
pip_() { pip_progress "$VENV" "$@"; }
if [ "$want" = dev ]; then
  # torch first, pinned: an unpinned torch may pull a multi-GB CUDA build.
  # find_spec, not import: importing torch reads ~1 GB of libraries (94 s once on a busy machine).
  if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; then
    say "installing torch 2.13.0 (the first time takes minutes)"
    pip_ "torch==2.13.0"
  fi
  say "installing the package with its dev, train, bench, operator and cluster extras"
  pip_ -e ".[dev,train,bench,operator,cluster]"
else
  say "installing the package"
  pip_ -e .
fi
say "ready: $VENV ($want)"
