"""The serial codec's fuzz oracle, shared by the atheris target and the hypothesis tests.

An input *describes* a stream instead of being one: frames are generated from it, the encoded
stream is corrupted at input-chosen places, and it is fed to :class:`FrameDecoder` in input-chosen
pieces. :func:`check_corrupted` then demands: every delivered frame equals a frame that was sent
(seq, size and pixels — the CRC-consistent reference), none is delivered twice, at most 2 frames
are lost per corrupted byte, and the decoder's counters add up. :func:`check_raw` feeds arbitrary
bytes and demands that every delivered frame is a delimited segment of the input whose CRC-32
(computed here with zlib, independently of the decoder) is correct.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from agent.source.codec import HEADER_SIZE, FrameDecoder, cobs_decode, encode_frame

__all__ = ["Draw", "Outcome", "RandomDraw", "Violation", "build_stream", "check_corrupted", "check_raw", "feed"]

_HEADER = struct.Struct("<BBIBB")
_CRC = struct.Struct("<I")


class Draw(Protocol):
    """Where the choices come from (atheris' FuzzedDataProvider or hypothesis' ``data``)."""

    def number(self, lo: int, hi: int) -> int: ...

    def blob(self, n: int) -> bytes: ...


class Violation(AssertionError):
    """The decoder broke a property: a finding, not an expected rejection."""


@dataclass
class Outcome:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    corrupted_bytes: int = 0
    worst_ratio: float = 0.0  # lost / corrupted bytes, for the inputs that corrupted anything
    frames: dict[int, tuple[int, int, bytes]] = field(default_factory=dict)


def _pixels(d: Draw, h: int, w: int) -> bytes:
    kind = d.number(0, 3)
    n = h * w
    if kind == 0:  # background with a few strokes: long zero runs (the COBS 0x01-run fast path)
        px = bytearray(n)
        for _ in range(d.number(0, 3)):
            at, ln, v = d.number(0, n - 1), d.number(1, 16), d.number(1, 255)
            px[at:at + ln] = bytes([v]) * len(px[at:at + ln])
        return bytes(px)
    if kind == 1:  # no zeros at all: full 254-byte COBS blocks
        return bytes([d.number(1, 255)]) * n
    seed = d.blob(min(n, 32)) or b"\x00"
    return (seed * (n // len(seed) + 1))[:n] if kind == 2 else bytes(n)


def build_stream(d: Draw, max_side: int) -> tuple[bytearray, dict[int, tuple[int, int, bytes]]]:
    """1-8 frames (sides 1..max_side, consecutive seqs from an input-chosen start) and the stream."""
    frames: dict[int, tuple[int, int, bytes]] = {}
    stream = bytearray()
    seq0 = d.number(0, 2**32 - 1)
    for k in range(d.number(1, 8)):
        h, w = d.number(1, max_side), d.number(1, max_side)
        px = _pixels(d, h, w)
        seq = (seq0 + k) % 2**32
        frames[seq] = (h, w, px)
        stream += encode_frame(seq, np.frombuffer(px, np.uint8).reshape(h, w))
    return stream, frames


def _corrupt(d: Draw, stream: bytearray) -> int:
    """Apply 0-4 corruptions; returns how many bytes were touched (flipped/zeroed/dropped/inserted)."""
    touched = 0
    for _ in range(d.number(0, 4)):
        if not stream:
            break
        at, kind = d.number(0, len(stream) - 1), d.number(0, 4)
        if kind == 0:
            stream[at] ^= d.number(1, 255)
        elif kind == 1:
            stream[at] = 0 if stream[at] else d.number(1, 255)  # add or remove a delimiter
        elif kind == 2:
            del stream[at]
        elif kind == 3:
            stream.insert(at, d.number(0, 255))
        else:
            n = d.number(1, 8)
            burst = d.blob(n).ljust(n, b"\x55")
            stream[at:at + n] = burst
            touched += n - 1
        touched += 1
    return touched


def feed(d: Draw, dec: FrameDecoder, stream: bytes,
         out: list[tuple[int, int, int, bytes]]) -> None:
    """Feed ``stream`` in input-chosen pieces; copies of delivered frames go to ``out``."""

    def sink(seq: int, h: int, w: int, px: np.ndarray) -> None:
        if px.shape != (h, w) or px.dtype != np.uint8:
            raise Violation(f"sink got a {px.dtype} {px.shape} view for {h}x{w}")
        out.append((seq, h, w, px.tobytes()))

    pos, n = 0, len(stream)
    mode = d.number(0, 2)
    while pos < n:
        step = n if mode == 0 else d.number(1, 256 if mode == 1 else n)
        got = dec.feed(memoryview(stream)[pos:pos + step] if step % 2 else stream[pos:pos + step], sink)
        if got < 0:
            raise Violation("feed returned a negative count")
        pos += step


def check_corrupted(d: Draw, make_decoder: Callable[[int], FrameDecoder] = FrameDecoder) -> Outcome:
    """One described stream, checked; ``make_decoder`` lets the tests prove the oracle can fail."""
    max_side = d.number(1, 40)
    stream, frames = build_stream(d, max_side)
    touched = _corrupt(d, stream)
    dec = make_decoder(max_side)
    got: list[tuple[int, int, int, bytes]] = []
    feed(d, dec, bytes(stream), got)
    seen: set[int] = set()
    for seq, h, w, px in got:
        if frames.get(seq) != (h, w, px):
            raise Violation(f"delivered frame seq={seq} {h}x{w} was never sent like that (corrupt frame)")
        if seq in seen:
            raise Violation(f"frame seq={seq} delivered twice")
        seen.add(seq)
    lost = len(frames) - len(seen)
    if lost > 2 * touched:
        raise Violation(f"{lost} frames lost for {touched} corrupted byte(s)")
    if dec.frames_ok != len(got) or dec.bytes_in != len(stream):
        raise Violation(f"counters: frames_ok={dec.frames_ok} for {len(got)}, bytes_in={dec.bytes_in}")
    ratio = lost / touched if touched else 0.0
    return Outcome(len(frames), len(got), lost, touched, ratio, frames)


def _valid_bodies(raw: bytes) -> set[bytes]:
    """Decoded bodies of the delimited segments of ``raw`` whose CRC-32 is right (zlib, not the decoder)."""
    good = set()
    for seg in raw.split(b"\0"):
        try:
            body = cobs_decode(seg)
        except ValueError:
            continue
        if len(body) > HEADER_SIZE + 4 and zlib.crc32(body[:-4]) == _CRC.unpack_from(body, len(body) - 4)[0]:
            good.add(body[:-4])
    return good


class RandomDraw:
    """A :class:`Draw` from a seeded PRNG (piece sizes for raw inputs, whose bytes are all data)."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def number(self, lo: int, hi: int) -> int:
        return self._r.randint(lo, hi)

    def blob(self, n: int) -> bytes:
        return self._r.randbytes(n)


def check_raw(raw: bytes, max_side: int, d: Draw,
              make_decoder: Callable[[int], FrameDecoder] = FrameDecoder) -> int:
    """Arbitrary bytes: no exception, every delivered frame is a CRC-valid segment of ``raw``."""
    dec = make_decoder(max_side)
    got: list[tuple[int, int, int, bytes]] = []
    feed(d, dec, raw, got)
    if got:
        valid = _valid_bodies(raw)
        for seq, h, w, px in got:
            if h > max_side or w > max_side:
                raise Violation(f"delivered {h}x{w} frame above max_side {max_side}")
            if _HEADER.pack(1, 1, seq, w, h) + px not in valid:
                raise Violation(f"delivered frame seq={seq} {h}x{w} is not a CRC-valid segment of the input")
    return len(got)
