#!/usr/bin/env bash
# Install digit-agent as a systemd service (Raspberry Pi OS / Debian), or remove it.
#
#   tools/install.sh [install] [--prefix DIR] [--from PATH] [--models DIR] [--no-start]
#                    [--python PY] [--pip-args "ARGS"]
#   tools/install.sh uninstall [--prefix DIR] [--purge]
#
# --prefix DIR   install into DIR instead of / (an image root, or a throw-away root for tests).
#                systemd-sysusers/-tmpfiles and `systemctl enable` then work on DIR offline (--root);
#                commands that need the running system (start, daemon-reload, udevadm) are printed only.
# --from PATH    what pip installs: this source tree (default) or a built wheel.
# --models DIR   model files (*.onnx, *.json, *.npz) for /opt/digit-agent/models; default PATH/models.
# --no-start     enable the service for the next boot but do not start it now. A service that is
#                already running is restarted either way, so it runs the code just installed.
# --python PY    interpreter that creates the virtual environment (default python3, >= 3.9).
# --pip-args S   extra pip arguments, e.g. "--no-index --find-links /media/wheels" for an offline device.
# uninstall      removes the program, unit and companions; keeps config, keys, credentials and
#                state (/etc/digit-agent, /var/lib/digit-agent) unless --purge.
# Running it again is safe: an existing config.toml and credentials are never overwritten.
set -euo pipefail

UNIT=digit-agent.service
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/
FROM="$SRC"
MODELS=""
START=1
PURGE=0
PYTHON=python3
PIP_ARGS=""
ACTION=install

die() { echo "install.sh: $*" >&2; exit 2; }
run() { echo "+ $*"; "$@"; }
would() { echo "would run: $*"; }

parse_args() {
    if [[ $# -gt 0 && ( $1 == install || $1 == uninstall ) ]]; then ACTION=$1; shift; fi
    while [[ $# -gt 0 ]]; do
        case $1 in
            --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
            --from) FROM=${2:?--from needs a path}; shift 2 ;;
            --models) MODELS=${2:?--models needs a directory}; shift 2 ;;
            --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
            --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift 2 ;;
            --no-start) START=0; shift ;;
            --purge) PURGE=1; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
    [[ $PURGE == 0 || $ACTION == uninstall ]] || die "--purge is for uninstall"
    mkdir -p "$PREFIX"
    PREFIX="$(cd "$PREFIX" && pwd)"
    R="${PREFIX%/}"  # "" for /, so "$R/etc" is always a clean absolute path
    if [[ -z $R && $(id -u) != 0 ]]; then die "installing into / needs root (use sudo)"; fi
}

# Live system: prefix / and systemd is PID 1. Otherwise we act on files only.
live() { [[ -z $R && -d /run/systemd/system ]]; }
root_opt() { if [[ -n $R ]]; then echo "--root=$R"; fi; }

install_files() {
    local sd="$SRC/systemd"
    install -d -m 0755 "$R/etc/systemd/system" "$R/etc/sysusers.d" "$R/etc/tmpfiles.d" \
        "$R/etc/udev/rules.d" "$R/opt/digit-agent/docs" "$R/opt/digit-agent/models" "$R/etc/digit-agent"
    install -m 0644 "$sd/$UNIT" "$R/etc/systemd/system/$UNIT"
    install -m 0644 "$sd/sysusers.d/digit-agent.conf" "$R/etc/sysusers.d/digit-agent.conf"
    install -m 0644 "$sd/tmpfiles.d/digit-agent.conf" "$R/etc/tmpfiles.d/digit-agent.conf"
    install -m 0644 "$sd/udev/99-digit-agent-serial.rules" "$R/etc/udev/rules.d/99-digit-agent-serial.rules"
    install -m 0644 "$SRC/docs/systemd.md" "$R/opt/digit-agent/docs/systemd.md"
    install -m 0644 "$sd/config.example.toml" "$R/etc/digit-agent/config.example.toml"
    if [[ -e $R/etc/digit-agent/config.toml ]]; then
        echo "keeping existing $R/etc/digit-agent/config.toml"
    else
        install -m 0644 "$sd/config.example.toml" "$R/etc/digit-agent/config.toml"
        echo "installed $R/etc/digit-agent/config.toml: set device.id and mqtt.host before starting"
    fi
}

install_models() {
    local dir="$MODELS" n=0 f
    if [[ -z $dir && -d $FROM/models ]]; then dir="$FROM/models"; fi
    if [[ -z $dir && -d $SRC/models ]]; then dir="$SRC/models"; fi
    if [[ -n $dir ]]; then
        for f in "$dir"/*.onnx "$dir"/*.json "$dir"/*.npz; do
            [[ -f $f ]] || continue
            install -m 0644 "$f" "$R/opt/digit-agent/models/"; n=$((n + 1))
        done
    fi
    if [[ $n == 0 ]]; then
        echo "warning: no model files found (use --models DIR); the service's self-test will fail" >&2
    else
        echo "installed $n model file(s) into $R/opt/digit-agent/models"
    fi
}

install_venv() {
    local venv="$R/opt/digit-agent/venv"
    if [[ ! -x $venv/bin/python ]]; then
        run "$PYTHON" -m venv "$venv"
    fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    run "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q $PIP_ARGS "$FROM"
    # The same version rebuilt (a fresh tree or wheel) must still replace the installed code.
    # shellcheck disable=SC2086
    run "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps \
        --force-reinstall $PIP_ARGS "$FROM"
    [[ -x $venv/bin/digit-agent ]] || die "$venv/bin/digit-agent is missing after pip install"
}

system_setup() {
    # sysusers and tmpfiles work on a root directory without a running systemd (image builds, tests).
    if command -v systemd-sysusers >/dev/null; then
        run systemd-sysusers $(root_opt) "$R/etc/sysusers.d/digit-agent.conf"
    else
        would "systemd-sysusers /etc/sysusers.d/digit-agent.conf"
    fi
    if command -v systemd-tmpfiles >/dev/null; then
        run systemd-tmpfiles $(root_opt) --create "$R/etc/tmpfiles.d/digit-agent.conf"
    else
        would "systemd-tmpfiles --create /etc/tmpfiles.d/digit-agent.conf"
    fi
    if live && command -v udevadm >/dev/null; then
        run udevadm control --reload
        run udevadm trigger --subsystem-match=tty --action=change
    else
        would "udevadm control --reload && udevadm trigger --subsystem-match=tty --action=change"
    fi
    if live; then
        run systemctl daemon-reload
        start_service
    else
        run systemctl $(root_opt) enable "$UNIT" 2>&1 | grep -v "non-existent unit" || true
        would "systemctl daemon-reload && systemctl start $UNIT"
    fi
}

# Live system only. `enable --now` alone would leave a running service on the code pip just replaced
# under it (and on the old unit), so a running (or starting) service is restarted; a stopped one is
# started unless --no-start. Running the installer again restarts it again: same end state.
start_service() {
    local state
    state=$(systemctl show --property=ActiveState --value "$UNIT" 2>/dev/null || true)
    run systemctl enable "$UNIT"
    case $state in
        active|activating|reloading)
            run systemctl try-restart "$UNIT" ;;
        *)
            # A unit that hit its start limit refuses `start` until reset.
            if [[ $state == failed ]]; then run systemctl reset-failed "$UNIT"; fi
            if [[ $START == 1 ]]; then
                run systemctl start "$UNIT"
            else
                echo "not started (--no-start): systemctl start $UNIT"
            fi ;;
    esac
}

do_install() {
    [[ -e $FROM ]] || die "--from $FROM does not exist"
    local parent
    parent="$(cd "$(dirname "$FROM")" && pwd)"
    FROM="${parent%/}/$(basename "$FROM")"  # not "//src" for a top-level tree: pip reads that as a URL
    install_files
    install_models
    install_venv
    system_setup
    echo "digit-agent installed under ${R:-/}; status: systemctl status $UNIT; logs: journalctl -u $UNIT"
}

do_uninstall() {
    if live; then
        run systemctl disable --now "$UNIT" || true
    elif [[ -e $R/etc/systemd/system/$UNIT ]]; then
        run systemctl $(root_opt) disable "$UNIT" || true
        would "systemctl stop $UNIT"
    fi
    run rm -rf "$R/opt/digit-agent"
    run rm -f "$R/etc/systemd/system/$UNIT" "$R/etc/sysusers.d/digit-agent.conf" \
        "$R/etc/tmpfiles.d/digit-agent.conf" "$R/etc/udev/rules.d/99-digit-agent-serial.rules" \
        "$R/etc/digit-agent/config.example.toml"
    if live; then
        run systemctl daemon-reload
        if command -v udevadm >/dev/null; then run udevadm control --reload; fi
    else
        would "systemctl daemon-reload && udevadm control --reload"
    fi
    if [[ $PURGE == 1 ]]; then
        run rm -rf "$R/etc/digit-agent" "$R/var/lib/digit-agent"
        # The user stays: its uid may still own files elsewhere (sysusers.d(5) advises the same).
        echo "purged config, keys, credentials and state; user digit-agent kept (userdel digit-agent)"
    else
        echo "kept $R/etc/digit-agent and $R/var/lib/digit-agent (uninstall --purge removes them)"
    fi
}

# Sourced (tests call the functions one by one): define only.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    parse_args "$@"
    if [[ $ACTION == install ]]; then do_install; else do_uninstall; fi
fi
