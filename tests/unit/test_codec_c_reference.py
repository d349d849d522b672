"""The C reference sender in docs/serial-protocol.md compiles and matches encode_frame byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.source.codec import encode_frame
from tests.unit.test_codec_doc import doc_block
from tools.frame_sender import synthetic_frames

# Reads records (seq u32 LE, width, height, pixels) from stdin, writes the encoded stream.
_MAIN = r"""
#include <stdio.h>
static void out(const uint8_t *d, size_t n, void *ctx) { fwrite(d, 1, n, (FILE *)ctx); }
int main(void) {
    static uint8_t px[255 * 255];
    uint8_t hdr[6];
    digit_tx tx;
    digit_tx_init(&tx, out, stdout);
    while (fread(hdr, 1, 6, stdin) == 6) {
        uint32_t seq = hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
        size_t n = (size_t)hdr[4] * hdr[5];
        if (fread(px, 1, n, stdin) != n) return 1;
        digit_frame_begin(&tx, seq, hdr[4], hdr[5]);
        digit_frame_pixels(&tx, px, n / 2);  /* in two pieces, as a row-by-row sender would */
        digit_frame_pixels(&tx, px + n / 2, n - n / 2);
        digit_frame_end(&tx);
    }
    return 0;
}
"""


def _cases() -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(4)
    cases: list[tuple[int, np.ndarray]] = [(k, f) for k, f in enumerate(synthetic_frames(5))]
    cases.append((0xFFFFFFFF, rng.integers(1, 256, (255, 255), dtype=np.uint8)))  # 0xFF blocks
    cases.append((0x80000000, rng.integers(0, 256, (64, 64), dtype=np.uint8)))
    cases.append((7, np.zeros((1, 1), np.uint8)))
    for n in range(240, 262):  # bodies whose last COBS block is full (canonical: no trailing code)
        cases.append((0x01010101, np.full((1, n - 12), 9, np.uint8)))
    return cases


def test_c_reference_matches_python(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    src = tmp_path / "sender.c"
    src.write_text(doc_block("c-reference") + _MAIN)
    exe = tmp_path / "sender"
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(src)],
                   check=True, timeout=120)
    cases = _cases()
    stdin = b"".join(s.to_bytes(4, "little") + bytes([f.shape[1], f.shape[0]]) + f.tobytes() for s, f in cases)
    got = subprocess.run([str(exe)], input=stdin, capture_output=True, check=True, timeout=60).stdout
    assert got == b"\0" + b"".join(encode_frame(s, f) for s, f in cases)
