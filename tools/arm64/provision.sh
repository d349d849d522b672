#!/bin/bash
# Runs inside the arm64 chroot (tools/arm64/chroot.sh, once per dependency set): the dependencies of
# both installs the test then uses, so a cached root needs no download but the package itself.
#   /opt/digit-agent/venv  what tools/install.sh makes on a Pi: pip's newest versions for pyproject.toml
#   /opt/lowest            tools/lowest-deps.txt exactly (the versions pyproject.toml's floor allows)
# Both also get the unit suite's test tools (ARM64_TEST_PKGS), which a device would not have.
set -euo pipefail
say() { printf '\033[1m[arm64 provision %s]\033[0m %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
pip_() { "$1/bin/python" -m pip install -q --disable-pip-version-check --no-input "${@:2}"; }
cd /src
# shellcheck disable=SC2086  # ARM64_TEST_PKGS is a list of requirements
{
    say "current: a venv as tools/install.sh makes it, with pip's newest versions of the dependencies"
    python3 -m venv /opt/digit-agent/venv
    pip_ /opt/digit-agent/venv . $ARM64_TEST_PKGS
    /opt/digit-agent/venv/bin/python -m pip uninstall -q -y digit-agent  # each run installs this checkout
    # psutil publishes no aarch64 wheel before 6.0, so its floor (5.9.4) is built from source, as pip
    # would on a Pi: that needs a C compiler and Python's headers.
    say "lowest: gcc and python3-dev (psutil 5.9.4 has no aarch64 wheel), then tools/lowest-deps.txt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev python3-dev >/dev/null
    apt-get clean
    python3 -m venv /opt/lowest
    pip_ /opt/lowest -c tools/lowest-deps.txt -r tools/lowest-deps.txt
    pip_ /opt/lowest -c tools/lowest-deps.txt $ARM64_TEST_PKGS
}
for v in /opt/digit-agent/venv /opt/lowest; do
    say "$v: $("$v/bin/python" -c 'import onnxruntime, numpy, paho.mqtt, psutil, cryptography, sys
print(f"Python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, "
      f"paho-mqtt {paho.mqtt.__version__}, psutil {psutil.__version__}, cryptography {cryptography.__version__}")')"
done
