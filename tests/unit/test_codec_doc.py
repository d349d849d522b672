"""docs/serial-protocol.md's example frame is what the code produces today."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from agent.source.codec import FrameDecoder, cobs_decode, encode_frame

DOC = Path(__file__).resolve().parents[2] / "docs" / "serial-protocol.md"

EXAMPLE_SEQ = 0x01020304
EXAMPLE_PIXELS = np.array([[0x00, 0x80, 0xFF, 0x00],
                           [0x00, 0xFF, 0x80, 0x00],
                           [0x00, 0x00, 0x00, 0x00]], dtype=np.uint8)


def doc_block(marker: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {marker}[^>]*-->\s*```\w*\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
    assert m, f"marker {marker} not found in {DOC}"
    return m.group(1)


def test_doc_example_matches_encoder() -> None:
    wire = encode_frame(EXAMPLE_SEQ, EXAMPLE_PIXELS)
    body = cobs_decode(wire[:-1])
    expected = f"body: {body.hex(' ')}\nwire: {wire.hex(' ')}\n"
    assert doc_block("example-frame") == expected


def test_doc_example_decodes() -> None:
    lines = dict(line.split(": ", 1) for line in doc_block("example-frame").splitlines())
    wire = bytes.fromhex(lines["wire"])
    got: list[tuple[int, np.ndarray]] = []
    FrameDecoder(8).feed(wire, lambda s, h, w, px: got.append((s, px.copy())))
    assert len(got) == 1 and got[0][0] == EXAMPLE_SEQ
    np.testing.assert_array_equal(got[0][1], EXAMPLE_PIXELS)


def test_doc_states_crc_check_value() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert f"0x{zlib.crc32(b'123456789'):08X}" in text  # CRC-32/ISO-HDLC check value
