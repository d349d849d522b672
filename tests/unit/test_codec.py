"""The serial frame codec: COBS, frame round trips, recovery from corruption, exact counters."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.source.codec import (
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    encode_frame,
    max_encoded_size,
)
from tests.helpers.isolated import in_fork
from tools.frame_sender import synthetic_frames


class Collect:
    """A sink that keeps copies of delivered frames (the decoder's view is only valid in the call)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, np.ndarray]] = []

    def __call__(self, seq: int, height: int, width: int, pixels: np.ndarray) -> None:
        assert pixels.shape == (height, width)
        self.frames.append((seq, pixels.copy()))

    @property
    def seqs(self) -> list[int]:
        return [s for s, _ in self.frames]


def decode_all(stream: bytes, max_side: int = 64, chunk: int = 0) -> tuple[FrameDecoder, Collect]:
    dec, sink = FrameDecoder(max_side), Collect()
    step = chunk or len(stream) or 1
    for i in range(0, len(stream), step):
        dec.feed(stream[i:i + step], sink)
    return dec, sink


def frames_stream(frames: np.ndarray, start_seq: int = 0) -> bytes:
    return b"\0" + b"".join(encode_frame(start_seq + k, f) for k, f in enumerate(frames))


# Vectors from the COBS paper / Wikipedia's table, including the 254-byte block boundaries.
_R = bytes(range(1, 256))
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (_R[:254], b"\xff" + _R[:254]),
    (b"\x00" + _R[:254], b"\x01\xff" + _R[:254]),
    (_R, b"\xff" + _R[:254] + b"\x02\xff"),
    (_R[1:] + b"\x00", b"\xff" + _R[1:] + b"\x01\x01"),
    (_R[2:] + b"\x00\x01", b"\xfe" + _R[2:] + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), COBS_VECTORS)
def test_cobs_known_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_cobs_accepts_trailing_code_after_full_block() -> None:
    assert cobs_decode(b"\xff" + _R[:254] + b"\x01") == _R[:254]


@pytest.mark.parametrize("bad", [b"\x05\x11\x22", b"\x03\x11\x00", b"\x02", b""])
def test_cobs_rejects_invalid(bad: bytes) -> None:
    with pytest.raises(ValueError):
        cobs_decode(bad)


@given(st.binary(max_size=2000))
def test_cobs_round_trip_property(raw: bytes) -> None:
    enc = cobs_encode(raw)
    assert 0 not in enc
    assert len(enc) <= len(raw) + len(raw) // 254 + 1
    assert cobs_decode(enc) == raw


@pytest.mark.parametrize(("h", "w"), [(28, 28), (1, 1), (1, 255), (64, 64), (17, 3)])
def test_frame_round_trip(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    frames = rng.integers(0, 256, (5, h, w), dtype=np.uint8)
    frames[1] = 0  # all background
    frames[2] = 255
    dec, sink = decode_all(frames_stream(frames, start_seq=7), max_side=max(h, w, 8))
    assert sink.seqs == [7, 8, 9, 10, 11]
    for (_, got), want in zip(sink.frames, frames):
        np.testing.assert_array_equal(got, want)
    assert dec.frames_ok == 5
    assert dec.crc_errors == dec.malformed == dec.oversize == dec.resyncs == dec.seq_gaps == 0


def test_frame_layout_and_crc() -> None:
    px = np.arange(6, dtype=np.uint8).reshape(2, 3) + 1
    body = cobs_decode(encode_frame(0x11223344, px)[:-1])
    assert body[:8] == bytes([1, 1, 0x44, 0x33, 0x22, 0x11, 3, 2])
    assert body[8:14] == bytes(range(1, 7))
    assert body[14:] == zlib.crc32(body[:14]).to_bytes(4, "little")
    assert max_encoded_size(28) >= len(encode_frame(0, np.full((28, 28), 7, np.uint8))) - 1


@pytest.mark.parametrize("chunk", [1, 7, 800, 100_000])
def test_chunking_does_not_matter(chunk: int) -> None:
    frames = synthetic_frames(20, seed=3)
    dec, sink = decode_all(frames_stream(frames), chunk=chunk)
    assert sink.seqs == list(range(20))
    assert all(np.array_equal(g, f) for (_, g), f in zip(sink.frames, frames))
    assert dec.bytes_in == len(frames_stream(frames))


def test_memoryview_and_bytearray_input() -> None:
    stream = frames_stream(synthetic_frames(3))
    dec, sink = FrameDecoder(32), Collect()
    dec.feed(memoryview(stream)[:100], sink)
    dec.feed(bytearray(stream[100:]), sink)
    assert sink.seqs == [0, 1, 2]


@pytest.mark.parametrize(("seq", "shape"), [(-1, (2, 2)), (1 << 32, (2, 2)), (0, (0, 3)), (0, (256, 1))])
def test_encode_rejects_bad_input(seq: int, shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        encode_frame(seq, np.zeros(shape, np.uint8))


def test_encode_rejects_wrong_dtype_and_rank() -> None:
    with pytest.raises(ValueError):
        encode_frame(0, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        encode_frame(0, np.zeros((2, 4, 4), np.uint8))


def test_every_single_byte_corruption_is_caught() -> None:
    """Each byte of a stream replaced by 0x00, or any of its 8 bits flipped: never a wrong frame,
    at most 2 frames lost, and every loss is counted."""
    frames = synthetic_frames(4, side=9, seed=5)
    frames[2, 0, :] = np.arange(1, 10)  # some non-zero runs as well as background
    stream = frames_stream(frames, start_seq=100)
    sent = {100 + k: f for k, f in enumerate(frames)}
    variants = 0
    for pos in range(len(stream)):
        for new in {0, *(stream[pos] ^ (1 << b) for b in range(8))}:
            if new == stream[pos]:
                continue
            bad = bytearray(stream)
            bad[pos] = new
            # The trailing 0x00 (the next packet's delimiter) flushes a packet whose own was hit.
            dec, sink = decode_all(bytes(bad) + b"\0", max_side=16, chunk=1 + pos % 13)
            for seq, px in sink.frames:
                np.testing.assert_array_equal(px, sent[seq])
            lost = len(frames) - len(sink.frames)
            assert 1 <= lost <= 2, (pos, new, lost)
            assert dec.crc_errors + dec.malformed + dec.oversize >= 1
            variants += 1
    assert variants >= len(stream) * 8  # 8 bit flips per byte (+ 0x00 where no flip gives it)


def test_truncated_frames() -> None:
    frames = synthetic_frames(6, seed=11)
    wires = [encode_frame(k, f) for k, f in enumerate(frames)]
    stream = b"\0" + wires[0] + wires[1][:300] + b"\0" + wires[2] + wires[3][:5] + wires[4] + wires[5]
    dec, sink = decode_all(stream)
    # frame 1 is cut and closed by a delimiter; frame 3's stub merges with frame 4 (both lost).
    assert sink.seqs == [0, 2, 5]
    assert dec.crc_errors + dec.malformed == 2
    assert dec.seq_gaps == 3
    assert dec.resyncs == 2


def test_oversize_without_delimiter_is_bounded() -> None:
    dec, sink = FrameDecoder(28), Collect()
    dec.feed(b"\0" + encode_frame(0, synthetic_frames(1)[0]), sink)
    junk = bytes(range(1, 256)) * 4112  # ~1 MB without a 0x00
    tracemalloc.start()
    try:
        for i in range(0, len(junk), 4096):
            dec.feed(junk[i:i + 4096], sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # the 1 MB never accumulates
    assert dec.oversize == 1
    dec.feed(b"\0" + encode_frame(1, synthetic_frames(2)[1]), sink)
    assert sink.seqs == [0, 1]
    assert dec.resyncs == 1
    assert dec.dropped_bytes == len(junk)


def test_oversize_in_one_feed_and_by_header() -> None:
    dec, sink = FrameDecoder(16), Collect()
    big = encode_frame(0, np.ones((40, 40), np.uint8))  # longer than a 16x16 receiver buffers
    wide = encode_frame(1, np.ones((2, 20), np.uint8))  # short, but 20 > max_side
    ok = encode_frame(2, np.ones((16, 16), np.uint8))
    dec.feed(b"\0" + big + wide + ok, sink)
    assert dec.oversize == 2
    assert sink.seqs == [2]
    assert dec.crc_errors == dec.malformed == 0


def test_garbage_between_frames() -> None:
    frames = synthetic_frames(3, seed=2)
    w = [encode_frame(k, f) for k, f in enumerate(frames)]
    stream = (b"boot v1.2\r\n\0" + w[0] + b"\0\0\0" + b"\xff" * 40 + b"\0" + w[1]
              + b"\x01\x02\x03\0" + w[2])
    dec, sink = decode_all(stream)
    assert sink.seqs == [0, 1, 2]
    assert dec.malformed == 3  # banner, 0xFF run (block past its end), 3 bytes (too short)
    assert dec.crc_errors == 0
    assert dec.resyncs == 3
    assert dec.seq_gaps == 0


def test_valid_crc_but_bad_header_is_malformed() -> None:
    def packet(body: bytes) -> bytes:
        return cobs_encode(body + zlib.crc32(body).to_bytes(4, "little")) + b"\0"

    hdr = bytes([1, 1, 0, 0, 0, 0, 2, 2])
    dec, sink = decode_all(b"\0" + packet(b"\x02" + hdr[1:] + b"abcd") + packet(hdr[:1] + b"\x07" + hdr[2:]
                                                                             + b"abcd")
                           + packet(hdr + b"abc") + packet(hdr + b"abcd"))
    assert dec.malformed == 3
    assert sink.seqs == [0]
    assert bytes(sink.frames[0][1].ravel()) == b"abcd"


def test_seq_gaps_wraparound_and_resets() -> None:
    px = np.ones((4, 4), np.uint8)
    seqs = [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1, 4, 5, 9, 3, 4]
    dec, sink = decode_all(b"".join(encode_frame(s, px) for s in seqs))
    assert sink.seqs == seqs
    assert dec.seq_gaps == 2 + 3  # 2,3 missing; 6,7,8 missing; wrap 0xFFFFFFFF -> 0 is no gap
    assert dec.seq_resets == 1  # 9 -> 3: the sender restarted
    assert dec.frames_ok == len(seqs)


def test_reset_drops_partial_frame() -> None:
    w = [encode_frame(k, f) for k, f in enumerate(synthetic_frames(2))]
    dec, sink = FrameDecoder(28), Collect()
    dec.feed(w[0][:200], sink)
    dec.reset()  # port reopened: the tail of frame 0 will never come
    dec.feed(w[1], sink)
    assert sink.seqs == [1]
    assert dec.dropped_bytes == 200
    assert dec.resyncs == 1 and dec.seq_gaps == 0  # the first frame seen sets the expectation


def _codec_allocation() -> tuple[int, int, int]:
    frames = synthetic_frames(50, seed=9)
    stream = frames_stream(frames)[1:]
    chunks = [stream[i:i + 1000] for i in range(0, len(stream), 1000)]
    dec = FrameDecoder(28)
    slot = np.zeros((28, 28), np.uint8)

    def sink(seq: int, h: int, w: int, px: np.ndarray) -> None:
        slot[:h, :w] = px

    for c in chunks:  # warm-up: caches, the pixel view
        dec.feed(c, sink)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(200):  # 10 000 frames
            for c in chunks:
                dec.feed(c, sink)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return dec.frames_ok, after - before, peak - before


def test_no_allocation_per_frame() -> None:
    frames_ok, growth, peak = in_fork(_codec_allocation)
    assert frames_ok == 50 * 201
    assert growth < 4096, growth
    # ~2 KB of transient views and ints. A copy of a whole read chunk would cross this; a per-frame
    # copy smaller than that scratch does not move the peak (peaks do not add up over time).
    assert peak < 2560, f"transient peak {peak} B"


_OPS = st.lists(st.tuples(st.sampled_from(["frame", "frame", "garbage", "flip", "cut"]),
                          st.integers(0, 10_000), st.integers(0, 7), st.binary(min_size=1, max_size=60)),
                max_size=25)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, chunk=st.integers(1, 2000))
def test_random_streams_never_deliver_a_corrupt_frame(ops: list[tuple[str, int, int, bytes]],
                                                      chunk: int) -> None:
    pool = synthetic_frames(4, side=12, seed=1)
    sent: dict[int, np.ndarray] = {}
    stream = bytearray()
    for kind, a, b, data in ops:
        if kind == "frame":
            sent[len(sent)] = pool[a % len(pool)]
            stream += encode_frame(len(sent) - 1, pool[a % len(pool)])
        elif kind == "garbage":
            stream += data
        elif kind == "flip" and stream:
            stream[a % len(stream)] ^= 1 << b
        elif kind == "cut" and stream:
            del stream[a % len(stream):]
    dec, sink = decode_all(bytes(stream) + b"\0", max_side=16, chunk=chunk)
    for s, px in sink.frames:
        np.testing.assert_array_equal(px, sent[s])
    assert len(set(sink.seqs)) == len(sink.seqs)
    assert dec.frames_ok == len(sink.frames)
    if all(kind == "frame" for kind, *_ in ops):
        assert sink.seqs == list(sent)  # nothing injected: nothing lost


@settings(max_examples=500)
@given(st.lists(st.sampled_from([1, 1, 1, 2, 3, 7, 0x80, 0xFE, 0xFF]) | st.integers(1, 255), max_size=600))
def test_fast_and_general_cobs_decoders_agree(codes: list[int]) -> None:
    """The fast path (no 0xFF codes) must decide exactly like the block-by-block decoder."""
    from agent.source.codec import _cobs_decode_fast, _cobs_decode_general

    src = memoryview(bytes(codes))
    a, b = bytearray(1000), bytearray(1000)
    fast = _cobs_decode_fast(src, 0, len(src), a)
    general = _cobs_decode_general(src, 0, len(src), b)
    if fast != -3:
        assert fast == general
        if fast >= 0:
            assert a[:fast] == b[:general]
    else:
        assert 0xFF in codes
