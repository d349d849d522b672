#!/usr/bin/env bash
# Instructions per inference and per daemon frame on the device's architecture, counted exactly:
# `make bench-arm64` -> bench/results/arm64-insns.{json,md} (see docs/benchmarks.md).
#
# The arm64 root of tools/test-arm64.sh (same cache, same install), then tools/arm64/insn_count.c, a
# QEMU TCG plugin built here with the host compiler, loaded by Debian's dynamic qemu-aarch64 (the
# static one used for the chroot cannot load plugins), copied into the chroot with its x86-64
# libraries. The x86-64 counts beside them come from valgrind's callgrind on this host.
# Arguments go to python -m tools.arm64.insn_bench (e.g. --cpus cortex-a72 --n 500 --no-x86).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/arm64/chroot.sh
. tools/arm64/chroot.sh
HOST_PY=${VENV:-.venv}/bin/python
[ -x "$HOST_PY" ] || a64_die "no $HOST_PY: run tools/bootstrap.sh dev first"
arm64_begin
arm64_host_setup
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v valgrind >/dev/null || need+=(valgrind)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    a64_say "installing ${need[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || a64_die "apt-get install ${need[*]} failed"
fi
mkdir -p build/arm64
gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Werror -o build/arm64/insn_count.so tools/arm64/insn_count.c
a64_say "built build/arm64/insn_count.so ($(qemu-aarch64 --version | head -1))"

arm64_rootfs "$ROOT"
arm64_copy_src "$ROOT"
arm64_mount "$ROOT" cortex-a72
arm64_install "$ROOT" "$HOST_PY"

# The dynamic qemu-aarch64 inside the chroot: its x86-64 loader and libraries beside it, a wrapper to run it.
q="$ROOT/opt/qemu-host"
mkdir -p "$q/lib"
cp -L "$(command -v qemu-aarch64)" build/arm64/insn_count.so "$q/"
ldd "$(command -v qemu-aarch64)" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | xargs -I{} cp -L {} "$q/lib/"
loader=$(ldd "$(command -v qemu-aarch64)" | awk '$1 ~ /ld-linux/ { print $1 }')
cp -L "$loader" "$q/ld.so"
printf '#!/bin/sh\nexec /opt/qemu-host/ld.so --library-path /opt/qemu-host/lib /opt/qemu-host/qemu-aarch64 "$@"\n' >"$q/run"
chmod +x "$q/run"

"$HOST_PY" -m tools.arm64.insn_bench --root "$ROOT" --qemu /opt/qemu-host/run --plugin /opt/qemu-host/insn_count.so "$@"
