# Raspberry Pi OS 64-bit (Debian bookworm arm64) in a chroot under qemu-user, for tools/test-arm64.sh
# and tools/bench-arm64.sh. Sourced, never run: it defines functions and the ARM64_* settings only.
#
#   arm64_begin                 ROOT := a fresh tmpfs under ARM64_WORK (/var/tmp), unmounted and removed
#                               at exit with every mount under it, even when the run fails
#   arm64_host_setup            qemu-user-static, binfmt-support, debootstrap (apt, as root); binfmt_misc
#   arm64_rootfs DIR            DIR := a provisioned root (cached tarballs under ~/.cache/digit-agent/arm64)
#   arm64_mount DIR CPU         proc, dev, sys and the CPU's /proc/cpuinfo; arm64_umount_all undoes them
#   arm64_copy_src DIR          this checkout (tracked and new files) -> DIR/src
#   arm64_run DIR CPU CMD...    CMD in the chroot with QEMU_CPU=CPU and a clean environment
#   arm64_install DIR PY        tools/install.sh inside the chroot (this checkout as a wheel built by PY);
#                               the same wheel into the lowest-versions venv
#
# The cache key is the dependency set: pyproject.toml's runtime dependencies, tools/lowest-deps.txt and
# the packages below. A new key builds a new root (~5-9 min on 2 cores); an old one unpacks in seconds.

ARM64_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARM64_SUITE=bookworm
# systemd: tools/install.sh runs systemd-sysusers/-tmpfiles and `systemctl enable`, as on Raspberry Pi OS.
ARM64_DEBS=python3,python3-venv,python3-pip,systemd,ca-certificates
# Test tools installed beside the daemon (not on a device): the unit suite needs them.
ARM64_TEST_PKGS="pytest>=8 pytest-timeout>=2.2 hypothesis>=6.90 onnx>=1.15"
ARM64_CACHE=${DIGIT_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/digit-agent}/arm64
ARM64_MOUNTS=()
ARM64_PIPENV=()

a64_say() { printf '\033[1m[arm64 %s]\033[0m %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
a64_die() { a64_say "error: $*"; exit 1; }

arm64_host_setup() {
    local pkgs=()
    command -v qemu-aarch64-static >/dev/null || pkgs+=(qemu-user-static)
    command -v update-binfmts >/dev/null || pkgs+=(binfmt-support)
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)
    command -v zstd >/dev/null || pkgs+=(zstd)
    [ "$(id -u)" = 0 ] || a64_die "needs root (chroot, mount, debootstrap)"
    if [ ${#pkgs[@]} -gt 0 ]; then
        a64_say "installing ${pkgs[*]} (apt)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
            a64_die "apt-get install ${pkgs[*]} failed"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || a64_die "cannot mount binfmt_misc"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 ||
        a64_die "cannot register qemu-aarch64 with binfmt_misc"
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        a64_die "qemu-aarch64 binfmt entry lacks the F flag: a chroot cannot find its interpreter"
}

# The Debian mirror apt uses on this machine (never a name written into the repository).
arm64_mirror() {
    local m
    m=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk -v s="$ARM64_SUITE" '$2 == s { print $1; exit }')
    [ -n "$m" ] || a64_die "no '$ARM64_SUITE' source in apt's configuration (/etc/apt/sources.list*); cannot debootstrap"
    echo "$m"
}

arm64_key() {  # $1 = base|full
    {
        echo "$ARM64_SUITE arm64 minbase $ARM64_DEBS"
        if [ "$1" = full ]; then
            python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"])' \
                "$ARM64_SRC/pyproject.toml"
            grep -v '^#' "$ARM64_SRC/tools/lowest-deps.txt"
            echo "$ARM64_TEST_PKGS"
            sha256sum "$ARM64_SRC/tools/arm64/provision.sh" | cut -c1-64
        fi
    } | sha256sum | cut -c1-16
}

arm64_unpack() {  # tarball dir
    mkdir -p "$2"
    zstd -dc -T0 "$1" | tar -xpf - -C "$2" --numeric-owner
}

arm64_pack() {  # dir tarball: written beside, renamed into place, so a killed run leaves no half file
    tar -cpf - -C "$1" --numeric-owner --exclude=./src --exclude=./tmp/* --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* . |
        zstd -q -1 -T0 -o "$2.part" -f && mv -f "$2.part" "$2"
}

# DIR := bookworm arm64 minbase + python3 + the dependency set (both venvs), from the cache when it can.
arm64_rootfs() {
    local dir=$1 base full t0
    base="$ARM64_CACHE/base-$(arm64_key base).tar.zst"
    full="$ARM64_CACHE/full-$(arm64_key full).tar.zst"
    mkdir -p "$ARM64_CACHE" "$dir"
    [ -z "$(ls -A "$dir")" ] || a64_die "$dir is not empty"
    if [ -f "$full" ]; then
        t0=$SECONDS; arm64_unpack "$full" "$dir"
        a64_say "provisioned root from cache $(basename "$full") in $((SECONDS - t0)) s"
        return
    fi
    if [ -f "$base" ]; then
        t0=$SECONDS; arm64_unpack "$base" "$dir"
        a64_say "bare root from cache $(basename "$base") in $((SECONDS - t0)) s (provisioning it next)"
    else
        local mirror; mirror=$(arm64_mirror)
        a64_say "debootstrap $ARM64_SUITE arm64 minbase (+$ARM64_DEBS) from apt's mirror; ~5 min on 2 cores"
        t0=$SECONDS
        local dlog=$dir.debootstrap.log
        mkdir -p "$dir"
        debootstrap --arch=arm64 --variant=minbase --include="$ARM64_DEBS" "$ARM64_SUITE" "$dir" "$mirror" \
            >"$dlog" 2>&1 &
        local pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            sleep 20
            a64_say "debootstrap: $(grep -E '^I: ' "$dlog" | tail -1 | cut -c1-80)"
        done
        wait "$pid" || { tail -20 "$dlog" >&2; a64_die "debootstrap failed (log above)"; }
        rm -f "$dlog"
        chroot "$dir" apt-get clean
        a64_say "debootstrap done in $((SECONDS - t0)) s; caching $(basename "$base")"
        arm64_pack "$dir" "$base"
    fi
    t0=$SECONDS
    a64_say "provisioning: both virtual environments (current and lowest dependency versions), under emulation"
    local kept=${#ARM64_MOUNTS[@]}
    arm64_mount "$dir" cortex-a72
    arm64_copy_src "$dir"
    arm64_run "$dir" cortex-a72 /bin/bash /src/tools/arm64/provision.sh
    arm64_umount_all "$kept"
    a64_say "provisioned in $((SECONDS - t0)) s; caching $(basename "$full")"
    arm64_pack "$dir" "$full"
    # Old keys are dead weight (~0.4 GB each).
    find "$ARM64_CACHE" -maxdepth 1 -name 'full-*.tar.zst' ! -name "$(basename "$full")" -delete
}

a64_mount() {  # mount args... ; the last argument is the mount point
    mount "$@" || a64_die "mount $* failed"
    ARM64_MOUNTS+=("${!#}")
}

# /proc/cpuinfo of the CPU (a Pi 4's or a Pi 5's): without it onnxruntime sees the host's x86 cpuinfo
# under qemu 7.2 and crashes on import (SIGSEGV).
arm64_mount() {  # dir cpu
    local dir=$1 cpu=$2
    a64_mount -t proc proc "$dir/proc"
    arm64_set_cpu "$dir" "$cpu"
    a64_mount --rbind /dev "$dir/dev"; mount --make-rslave "$dir/dev"
    a64_mount -t sysfs -o ro sysfs "$dir/sys"
    cp -L /etc/resolv.conf "$dir/etc/resolv.conf"  # the chroot shares the host's network (and broker)
    # pip inside uses this machine's CA bundle when pip here is told to (a TLS-inspecting proxy).
    ARM64_PIPENV=()
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
        cp -L "$PIP_CERT" "$dir/tmp/pip-cert.pem"; ARM64_PIPENV+=(PIP_CERT=/tmp/pip-cert.pem)
    fi
    local v
    for v in PIP_INDEX_URL PIP_DEFAULT_TIMEOUT http_proxy https_proxy no_proxy; do
        if [ -n "${!v:-}" ]; then ARM64_PIPENV+=("$v=${!v}"); fi
    done
}

arm64_set_cpu() {  # dir cpu: bind that CPU's cpuinfo over the chroot's /proc/cpuinfo (again)
    local info="$ARM64_SRC/tools/arm64/cpuinfo-$2"
    [ -f "$info" ] || a64_die "no cpuinfo for CPU model '$2' ($info)"
    while mountpoint -q "$1/proc/cpuinfo" 2>/dev/null; do umount "$1/proc/cpuinfo"; done
    mount --bind "$info" "$1/proc/cpuinfo" || a64_die "cannot bind $info over $1/proc/cpuinfo"
}

arm64_umount_all() {  # [N]: keep the first N mounts (the tmpfs root), undo the rest, newest first
    local i keep=${1:-0}
    for ((i = ${#ARM64_MOUNTS[@]} - 1; i >= keep; i--)); do
        umount -R "${ARM64_MOUNTS[i]}" 2>/dev/null || umount -R -l "${ARM64_MOUNTS[i]}" 2>/dev/null || true
    done
    ARM64_MOUNTS=("${ARM64_MOUNTS[@]:0:keep}")
}

arm64_copy_src() {  # this checkout as a Pi would get it: tracked and new (not ignored) files
    local dir=$1
    rm -rf "$dir/src"; mkdir -p "$dir/src"
    (cd "$ARM64_SRC" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$dir/src"
}

arm64_run() {  # dir cpu cmd...
    local dir=$1 cpu=$2; shift 2
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        QEMU_CPU="$cpu" ARM64_TEST_PKGS="$ARM64_TEST_PKGS" "${ARM64_PIPENV[@]}" chroot "$dir" "$@"
}

# As on a Pi: tools/install.sh, given this checkout built into a wheel here (pure Python, so the same
# wheel a Pi would build; building it under emulation costs ~1 min per pip run). systemd is not PID 1
# in the chroot, so the script takes its offline branch (what an image build gets): sysusers/tmpfiles
# on the root, `systemctl enable` by symlink; daemon-reload/start and the udev reload are printed only.
arm64_install() {  # dir host-python
    local dir=$1 whl
    rm -rf "$dir/wheels"; mkdir -p "$dir/wheels"
    "$2" -m pip wheel -q --disable-pip-version-check --no-deps -w "$dir/wheels" "$ARM64_SRC" >"$dir/wheel.log" 2>&1 ||
        { cat "$dir/wheel.log" >&2; a64_die "pip wheel of this checkout failed"; }
    whl=$(cd "$dir/wheels" && ls digit_agent-*.whl)
    a64_say "tools/install.sh --no-start --from /wheels/$whl inside the chroot (current versions)"
    arm64_run "$dir" cortex-a72 /bin/bash /src/tools/install.sh --no-start --from "/wheels/$whl" --models /src/models \
        2>&1 | sed 's/^/    /'
    a64_say "the same wheel into the lowest-versions venv (/opt/lowest)"
    arm64_run "$dir" cortex-a72 /opt/lowest/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        "/wheels/$whl"
}

arm64_begin() {
    ARM64_T0=$SECONDS
    mkdir -p "${ARM64_WORK:-/var/tmp}"
    ROOT=$(mktemp -d "${ARM64_WORK:-/var/tmp}/digit-agent-arm64.XXXXXX")
    trap a64_cleanup EXIT
    # In memory (~1.3 GB used): unpacking is faster, and removing ~40,000 files from a disk took
    # minutes on a loaded host where an unmount takes none.
    a64_mount -t tmpfs -o size=6g,mode=0755 tmpfs "$ROOT"
    trap 'exit 130' INT TERM
}

a64_cleanup() {
    local rc=$?
    arm64_umount_all
    if grep -q -e " $ROOT/" -e " $ROOT " /proc/mounts; then
        a64_say "error: mounts left under $ROOT; not deleting it"; rc=1
    else
        rm -rf "$ROOT"
    fi
    a64_say "total $((SECONDS - ARM64_T0)) s; $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)")"
    exit $rc
}
