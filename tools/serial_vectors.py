"""Test vectors of the serial frame protocol as files, for firmware authors and other receivers.

    python -m tools.serial_vectors [--out docs/examples/serial]

Each ``<name>.bin`` is bytes exactly as on the wire; ``vectors.json`` says what each holds (the frames:
seq, size, pixels in hex, row-major) and what a receiver must count after reading it whole (the
counters of :class:`agent.source.codec.FrameDecoder`). tests/unit/test_serial_vectors.py checks that
the files are what this module produces and that the decoder reads them as described.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agent.source.codec import FrameDecoder, encode_frame

__all__ = ["build", "main", "write"]

OUT = Path(__file__).resolve().parents[1] / "docs" / "examples" / "serial"

_EXAMPLE = np.array([[0x00, 0x80, 0xFF, 0x00], [0x00, 0xFF, 0x80, 0x00], [0x00, 0x00, 0x00, 0x00]], np.uint8)


def _digit() -> np.ndarray:
    """A 28×28 ring ("0") on black: long zero runs and mixed grey levels."""
    y, x = np.mgrid[0:28, 0:28]
    r = np.hypot((x - 13.5) / 0.8, y - 13.5)
    ring: np.ndarray = np.clip(255 - np.abs(r - 8.0) * 90, 0, 255).astype(np.uint8)
    return ring


def _frames() -> dict[str, tuple[str, list[tuple[int, np.ndarray]], Optional[bytes]]]:
    """name -> (what it exercises, frames, wire bytes when not simply the frames back to back)."""
    nonzero = np.full((28, 28), 0x80, np.uint8)
    one = np.array([[7]], np.uint8)
    flipped = bytearray(encode_frame(2, _digit()))
    flipped[40] ^= 0x04  # one bit flipped inside frame 2: CRC error
    faults = [encode_frame(1, _digit()), bytes([0x13, 0x37, 0xFF, 0x00]),  # garbage burst, own delimiter
              bytes(flipped), encode_frame(3, _digit())[:300] + b"\0",  # cut short
              encode_frame(4, _digit())]
    return {
        "example-4x3": ("the worked example of docs/serial-protocol.md section 7", [(0x01020304, _EXAMPLE)], None),
        "digit-28x28": ("a 28×28 digit: zero runs and grey levels", [(0, _digit())], None),
        "zeros-28x28": ("all pixels 0: every COBS code is 0x01", [(5, np.zeros((28, 28), np.uint8))], None),
        "nonzero-28x28": ("784 non-zero pixels: COBS blocks of 254 bytes (code 0xFF)", [(6, nonzero)], None),
        "seq-wrap": ("seq 0xFFFFFFFF then 0: a wrap, not a gap", [(0xFFFFFFFF, one), (0, one)], None),
        "faults": ("frame 1; a garbage burst; frame 2 with one bit flipped (CRC error); frame 3 cut short; "
                   "frame 4: two frames delivered, 1 and 4", [(1, _digit()), (4, _digit())], b"".join(faults)),
    }


def build() -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files' contents: ``{name.bin: wire}`` and the manifest."""
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {"protocol": "digit-agent serial frame protocol, version 1 (docs/serial-protocol.md)",
                                "decoder": "agent.source.codec.FrameDecoder(max_side=64)", "vectors": []}
    for name, (about, frames, wire) in _frames().items():
        data = wire if wire is not None else b"".join(encode_frame(s, px) for s, px in frames)
        dec = FrameDecoder(64)
        dec.feed(data, lambda *_: None)
        files[f"{name}.bin"] = data
        manifest["vectors"].append({
            "file": f"{name}.bin", "about": about, "bytes": len(data),
            "frames": [{"seq": s, "width": int(px.shape[1]), "height": int(px.shape[0]),
                        "pixels_hex": px.tobytes().hex()} for s, px in frames],
            "counters": dec.stats(),
        })
    return files, manifest


def manifest_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=1) + "\n"


def write(out: Path) -> list[Path]:
    files, manifest = build()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    (out / "vectors.json").write_text(manifest_text(manifest), encoding="utf-8")
    return [*paths, out / "vectors.json"]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.serial_vectors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help="directory to write (default: %(default)s)")
    for path in write(p.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
