"""What the OS says about the board, for Home Assistant's device block: model, serial number, MAC.

Each comes from a file the kernel exposes (a Raspberry Pi has all three); whatever is missing is
left out, never guessed. ``root`` exists for tests, which point it at a directory tree shaped
like the real one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["board_info"]

_NO_MAC = "00:00:00:00:00:00"
_PREFERRED_IFACES = ("eth0", "end0", "wlan0")


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _cpuinfo_serial(root: Path) -> str:
    for line in _read(root / "proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "serial":
            return value.strip()
    return ""


def _mac(root: Path) -> str:
    net = root / "sys/class/net"
    try:
        names = sorted(p.name for p in net.iterdir() if p.name != "lo")
    except OSError:
        return ""
    # Physical interfaces (they have a ``device`` link) before virtual ones, wired before wireless.
    names.sort(key=lambda n: (not (net / n / "device").exists(),
                              _PREFERRED_IFACES.index(n) if n in _PREFERRED_IFACES else len(_PREFERRED_IFACES), n))
    for name in names:
        mac = _read(net / name / "address").lower()
        if len(mac) == 17 and mac != _NO_MAC:
            return mac
    return ""


def board_info(root: Path = Path("/")) -> dict[str, str]:
    """``model`` (/proc/device-tree/model), ``serial`` (device tree or /proc/cpuinfo), ``mac``
    (first network interface with an address, wired first); absent keys = unknown."""
    info = {
        "model": _read(root / "proc/device-tree/model"),
        "serial": _read(root / "proc/device-tree/serial-number") or _cpuinfo_serial(root),
        "mac": _mac(root),
    }
    return {k: v for k, v in info.items() if v}
