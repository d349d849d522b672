#!/usr/bin/env bash
# The daemon against the lowest dependency versions pyproject.toml allows (tools/lowest-deps.txt),
# on the oldest supported Python when the machine has one: the unit suite (less the train-extra
# tests) and the integration tests that exercise onnxruntime, paho-mqtt and cryptography for real.
#   tools/test-lowest.sh            (make test-lowest; part of make test)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_LOWEST:-.venv-lowest}
T0=$SECONDS
say() { printf '\033[1m[test-lowest %4ds]\033[0m %s\n' $((SECONDS - T0)) "$*" >&2; }
# numpy 1.24.2 and onnxruntime 1.17.0 have wheels for Python 3.9-3.11 only: take the oldest of those
# (a pyenv shim exists for every installed version but runs only the selected ones: try each).
usable() { "$1" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] < (3, 12))' >/dev/null 2>&1; }
PY=${PYTHON_LOWEST:-}
if [ -z "$PY" ]; then
  pyenv_root=${PYENV_ROOT:-${HOME:-/root}/.pyenv}
  for cand in python3.9 "$pyenv_root"/versions/3.9*/bin/python python3.10 "$pyenv_root"/versions/3.10*/bin/python \
              python3.11 "$pyenv_root"/versions/3.11*/bin/python python3; do
    if usable "$cand"; then PY=$cand; break; fi
  done
  if [ -z "$PY" ]; then
    say "error: no Python 3.9-3.11 here; the lowest versions have no wheels for newer ones (set PYTHON_LOWEST)"
    exit 1
  fi
fi
want=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$want" ]; then
  rm -rf "$VENV"  # built with another interpreter
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY (Python $want)"
  "$PY" -m venv "$VENV"
fi
. tools/pip-progress.sh
pip_() { pip_progress "$VENV" "$@"; }
say "installing the lowest versions (tools/lowest-deps.txt) and the test tools"
pip_ --upgrade pip  # an old distribution pip cannot install a pyproject-only package in editable mode
pip_ -c tools/lowest-deps.txt -r tools/lowest-deps.txt
# Test tools. onnx at the lowest the project allows: onnxruntime 1.17's quantizer needs onnx.mapping,
# gone from onnx 1.19. setuptools >= 77 (pyproject's build requirement): the packaging tests build
# the wheel without build isolation.
pip_ -c tools/lowest-deps.txt pytest pytest-timeout hypothesis "onnx==1.15.0" tomli-w "setuptools>=77"
pip_ --no-deps -e .
say "$("$VENV/bin/python" -V) with $("$VENV/bin/python" -c 'import onnxruntime, numpy, paho.mqtt, psutil, cryptography
print(f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, paho-mqtt {paho.mqtt.__version__}, "
      f"psutil {psutil.__version__}, cryptography {cryptography.__version__}")')"
say "pytest (progress per file)"
"$VENV/bin/python" -u -m pytest -p no:cacheprovider --durations=10 tests/unit \
  tests/integration/test_daemon.py tests/integration/test_publisher.py tests/integration/test_ota_update.py
