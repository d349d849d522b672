"""docs/examples/serial: the protocol's test vectors are what the encoder produces today, and the decoder
reads each file into exactly the frames and counters vectors.json states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.source.codec import FrameDecoder, encode_frame
from tests.unit.test_codec_doc import doc_block
from tools.serial_vectors import OUT, build, manifest_text

_MANIFEST = json.loads((OUT / "vectors.json").read_text(encoding="utf-8"))


def test_files_are_the_generated_ones() -> None:
    files, manifest = build()
    on_disk = {p.name for p in OUT.iterdir()}
    assert on_disk == {*files, "vectors.json"}, "regenerate: python -m tools.serial_vectors"
    for name, data in files.items():
        assert (OUT / name).read_bytes() == data, f"{name} differs: python -m tools.serial_vectors"
    assert (OUT / "vectors.json").read_text(encoding="utf-8") == manifest_text(manifest)


@pytest.mark.parametrize("vector", _MANIFEST["vectors"], ids=lambda v: v["file"])
def test_decoder_reads_what_the_manifest_says(vector: dict) -> None:  # type: ignore[type-arg]
    data = (OUT / vector["file"]).read_bytes()
    assert len(data) == vector["bytes"]
    got: list[tuple[int, np.ndarray]] = []
    dec = FrameDecoder(64)
    for i in range(0, len(data), 61):  # in pieces, as a UART delivers them
        dec.feed(data[i:i + 61], lambda s, h, w, px: got.append((s, px.copy())))
    want = [(f["seq"], np.frombuffer(bytes.fromhex(f["pixels_hex"]), np.uint8).reshape(f["height"], f["width"]))
            for f in vector["frames"]]
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert dec.stats() == vector["counters"]
    if not dec.stats()["dropped_bytes"]:  # a clean stream is its frames encoded back to back
        assert data == b"".join(encode_frame(s, px) for s, px in want)


def test_worked_example_file_is_the_documented_one() -> None:
    wire = dict(line.split(": ", 1) for line in doc_block("example-frame").splitlines())["wire"]
    assert (OUT / "example-4x3.bin").read_bytes() == bytes.fromhex(wire)
