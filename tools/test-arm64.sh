#!/usr/bin/env bash
# The device's architecture: Raspberry Pi OS 64-bit (Debian bookworm arm64, Python 3.11) in a chroot
# under qemu-user, as a Pi 4 (Cortex-A72) and a Pi 5 (Cortex-A76). `make test-arm64`; CI runs it after
# `make test`. Needs root (chroot, mount) and apt's Debian mirror (the root filesystem is cached).
#
#   1. root filesystem: bookworm arm64 minbase + python3 + systemd, and the dependencies of both installs
#      (pip's newest versions; tools/lowest-deps.txt), from ~/.cache/digit-agent/arm64 when the
#      dependency set is unchanged (tools/arm64/chroot.sh)
#   2. tools/install.sh inside the chroot, as on a Pi (systemd is not running: it enables the unit
#      offline and prints what it would start); the same checkout into the lowest-versions venv
#   3. per CPU model and dependency set: check-config, selftest, the unit suite, and the daemon
#      replaying ARM64_FRAMES (1,000) frames to a mosquitto on this host, every result checked
#
# Deadlines are raised to 500 ms here: emulation runs 10-100x slower than the Pi, and this run checks
# that the answers are right on arm64, not how fast they come (instruction counts: make bench-arm64).
#   ARM64_CPUS="cortex-a72 cortex-a76"  ARM64_FRAMES=1000  ARM64_WORK=/var/tmp  VENV=.venv (host side)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/arm64/chroot.sh
. tools/arm64/chroot.sh
HOST_PY=${VENV:-.venv}/bin/python
CPUS=${ARM64_CPUS:-cortex-a72 cortex-a76}
FRAMES=${ARM64_FRAMES:-1000}
DEADLINE_MS=500
# Unit tests under emulation: the ones that run onnxruntime on this CPU's kernels (engine: load,
# every batch size, signatures, deadline counting, swaps; the model card's golden accuracy and
# micro-batches) and the payload encoder's float formatting, on the current versions. The whole unit
# suite takes ~3 min natively here and well over 30 min under qemu on a shared 2-core host, which CI
# cannot afford; left out are the pure-Python tests (no architecture in them), hypothesis fuzzing,
# allocation counters and the watchdog's timing tests. ARM64_UNIT=tests/unit ARM64_UNIT_K= runs the
# whole suite; ARM64_UNIT_LOWEST=1 runs the selection on the lowest versions too.
UNIT=${ARM64_UNIT:-tests/unit/test_engine.py tests/unit/test_model_card.py tests/unit/test_payloads.py \
tests/unit/test_arm64_verify.py}
UNIT_K=${ARM64_UNIT_K-not watchdog and not stale and not rounding}
UNIT_DESC=${ARM64_UNIT:+ARM64_UNIT}; UNIT_DESC=${UNIT_DESC:-the arm64 selection}
TIMES=()

lap() { TIMES+=("$1: $(($SECONDS - $2)) s"); a64_say "$1 done in $(($SECONDS - $2)) s"; }

[ -x "$HOST_PY" ] || a64_die "no $HOST_PY: run tools/bootstrap.sh dev first (the result checker runs on this host)"
arm64_begin

t=$SECONDS
arm64_host_setup
arm64_rootfs "$ROOT"
lap "root filesystem" $t

t=$SECONDS
arm64_copy_src "$ROOT"
arm64_mount "$ROOT" cortex-a72
arm64_install "$ROOT" "$HOST_PY"
lap "install" $t

# shellcheck disable=SC2016
VERSIONS='import onnxruntime, numpy, sys; print(f"Python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")'
for cpu in $CPUS; do
    arm64_set_cpu "$ROOT" "$cpu"
    for venv in /opt/digit-agent/venv /opt/lowest; do
        t=$SECONDS
        a64_say "== $cpu, $venv: $(arm64_run "$ROOT" "$cpu" "$venv/bin/python" -c "$VERSIONS")"
        arm64_run "$ROOT" "$cpu" "$venv/bin/digit-agent" check-config --config /etc/digit-agent/config.toml
        arm64_run "$ROOT" "$cpu" "$venv/bin/digit-agent" selftest --config /etc/digit-agent/config.toml \
            --set inference.deadline_ms=$DEADLINE_MS
        if [ "$venv" = /opt/digit-agent/venv ] || [ -n "${ARM64_UNIT_LOWEST:-}" ]; then
            a64_say "$cpu $venv: unit tests ($UNIT_DESC)"
            # shellcheck disable=SC2086  # UNIT is a list of pytest arguments
            arm64_run "$ROOT" "$cpu" /bin/sh -c "cd /src && exec $venv/bin/python -m pytest -q -p no:cacheprovider \
                --timeout 900 $UNIT ${UNIT_K:+-k $(printf %q "$UNIT_K")}"
        fi
        a64_say "$cpu $venv: replay of $FRAMES frames to a mosquitto on this host"
        "$HOST_PY" -m tools.arm64.replay_check --root "$ROOT" --cpu "$cpu" --venv "$venv" --frames "$FRAMES"
        lap "$cpu $venv" $t
    done
done
a64_say "timings: $(printf '%s; ' "${TIMES[@]}")"
