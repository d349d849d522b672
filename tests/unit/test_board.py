"""agent.publish.board: the device block's board model, serial number and MAC, read from a directory
tree shaped like / (only the root path is substituted; the parsing is the real one)."""

from __future__ import annotations

from pathlib import Path

from agent.publish.board import board_info


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_raspberry_pi_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\x00",
        "proc/device-tree/serial-number": b"10000000abcdef01\x00",
        "sys/class/net/docker0/address": b"02:42:ac:11:00:01\n",
        "sys/class/net/wlan0/address": b"DC:A6:32:01:02:04\n",
        "sys/class/net/wlan0/device/uevent": b"",
        "sys/class/net/eth0/address": b"dc:a6:32:01:02:03\n",
        "sys/class/net/eth0/device/uevent": b"",
        "sys/class/net/lo/address": b"00:00:00:00:00:00\n",
    })
    assert board_info(root) == {"model": "Raspberry Pi 4 Model B Rev 1.4", "serial": "10000000abcdef01",
                                "mac": "dc:a6:32:01:02:03"}


def test_serial_from_cpuinfo_and_nothing_invented(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/cpuinfo": b"processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 00000000deadbeef\n",
                            "sys/class/net/eth0/address": b"00:00:00:00:00:00\n"})
    assert board_info(root) == {"serial": "00000000deadbeef"}
    assert board_info(tmp_path / "empty") == {}
