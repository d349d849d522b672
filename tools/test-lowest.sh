#!/usr/bin/env bash
# The daemon against the lowest dependency versions pyproject.toml allows (tools/lowest-deps.txt),
# on the oldest supported Python when the machine has one: the unit suite (less the train-extra
# tests) and the integration tests that exercise onnxruntime, paho-mqtt and cryptography for real.
#   tools/test-lowest.sh            (make test-lowest; part of make test)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_LOWEST:-.venv-lowest}
PY=${PYTHON_LOWEST:-}
if [ -z "$PY" ]; then
  PY=python3
  # A pyenv shim exists for every installed version but only runs the selected ones: try each.
  for cand in python3.9 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python; do
    if "$cand" -c "" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
say() { printf '\033[1m[test-lowest]\033[0m %s\n' "$*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY ($("$PY" -V 2>&1))"
  "$PY" -m venv "$VENV"
fi
pip_() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@"; }
# Runtime dependencies pinned to their floors; test tools unpinned (onnx only builds test models).
pip_ -c tools/lowest-deps.txt -r tools/lowest-deps.txt
pip_ -c tools/lowest-deps.txt pytest pytest-timeout hypothesis onnx
pip_ --no-deps -e .
say "$("$VENV/bin/python" -V) with $("$VENV/bin/python" -c 'import onnxruntime, numpy, paho.mqtt, psutil, cryptography
print(f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, paho-mqtt {paho.mqtt.__version__}, "
      f"psutil {psutil.__version__}, cryptography {cryptography.__version__}")')"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit \
  tests/integration/test_daemon.py tests/integration/test_publisher.py tests/integration/test_ota_update.py
