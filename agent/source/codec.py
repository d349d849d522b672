"""Serial frame protocol v1: a pure encoder and a streaming decoder (bytes in, frames out, no I/O).

Wire format (docs/serial-protocol.md is the normative description)::

    COBS( version u8 | pixel_format u8 | seq u32 LE | width u8 | height u8 | pixels | crc32 u32 LE ) 0x00

The decoder works on preallocated buffers only: a bounded accumulator for a frame split across
reads and one scratch buffer for the decoded body. A frame is handed to the sink only after its
CRC and header have been checked, so a corrupt frame is never delivered.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Callable, Optional, Union

import numpy as np

__all__ = [
    "CRC_SIZE",
    "HEADER_SIZE",
    "MAX_SIDE",
    "PIXEL_FORMAT_GRAY8",
    "VERSION",
    "FrameDecoder",
    "FrameSink",
    "cobs_decode",
    "cobs_encode",
    "encode_frame",
    "max_encoded_size",
]

VERSION = 1
PIXEL_FORMAT_GRAY8 = 1
HEADER_SIZE = 8
CRC_SIZE = 4
MAX_SIDE = 255
_SEQ_MOD = 1 << 32
_HEADER = struct.Struct("<BBIBB")
_CRC = struct.Struct("<I")
_ONES = re.compile(rb"\x01+")
_ZEROS = memoryview(bytes(HEADER_SIZE + MAX_SIDE * MAX_SIDE + CRC_SIZE))

#: ``sink(seq, height, width, pixels)``; ``pixels`` is a (height, width) uint8 view into the
#: decoder's scratch buffer, valid only during the call: copy it (e.g. into a ring slot).
FrameSink = Callable[[int, int, int, np.ndarray], None]

BytesLike = Union[bytes, bytearray, memoryview]


def max_encoded_size(max_side: int) -> int:
    """Largest encoded frame (COBS body, without the 0x00 delimiter) for ``max_side``×``max_side``."""
    raw = HEADER_SIZE + max_side * max_side + CRC_SIZE
    return raw + raw // 254 + 1


# -- COBS ---------------------------------------------------------------------------------------
def cobs_encode(data: BytesLike) -> bytes:
    """Consistent Overhead Byte Stuffing; the output contains no 0x00 (delimiter not included)."""
    out = bytearray()
    pieces = bytes(data).split(b"\0")
    last = len(pieces) - 1
    for k, piece in enumerate(pieces):
        start, n = 0, len(piece)
        while n - start >= 254:
            out.append(0xFF)
            out += piece[start:start + 254]
            start += 254
        # A full 254-byte block at the very end needs no closing code (canonical COBS).
        if not (k == last and 0 < start == n):
            out.append(n - start + 1)
            out += piece[start:]
    return bytes(out)


def _cobs_decode_fast(src: memoryview, start: int, end: int, dst: bytearray) -> int:
    """The common case, no 0xFF code: the body is ``src[start+1:end]`` with every later code byte
    replaced by 0x00. One bulk copy, then a walk over the code bytes only (runs of zeros in one
    regex step). Returns the length, -1 if invalid, or -3 to defer to the general decoder."""
    n, off, i = end - start - 1, start + 1, start
    if n < 0:
        return -1  # empty: even an empty body encodes to one code byte
    if n > len(dst):
        return -3
    dst[:n] = src[off:end]
    while i < end:
        code = src[i]
        if code == 0xFF:
            return -3
        if code == 1 and i + 1 < end and src[i + 1] == 1:
            run_of_ones = _ONES.match(src, i, end)
            j = run_of_ones.end() if run_of_ones else i + 1
            lo = max(i - off, 0)  # the first code byte stands for no zero
            dst[lo:j - off] = _ZEROS[:j - off - lo]
            i = j
            continue
        if i > start:
            dst[i - off] = 0
        i += code
    return n if i == end else -1


def _cobs_decode_into(src: memoryview, start: int, end: int, dst: bytearray) -> int:
    """Decode ``src[start:end]`` (no 0x00 inside) into ``dst``; length, -1 if invalid, -2 if too long."""
    n = _cobs_decode_fast(src, start, end, dst)
    return n if n != -3 else _cobs_decode_general(src, start, end, dst)


def _cobs_decode_general(src: memoryview, start: int, end: int, dst: bytearray) -> int:
    """Any valid COBS, block by block; whole runs are copied with one slice assignment each."""
    if start == end:
        return -1  # even an empty body encodes to one code byte
    i, o, cap = start, 0, len(dst)
    while i < end:
        code = src[i]
        if code == 1 and i + 1 < end and src[i + 1] == 1:
            # A run of empty blocks is a run of zeros (image background): one regex scan, one copy.
            run_of_ones = _ONES.match(src, i, end)
            j = run_of_ones.end() if run_of_ones else i + 1
            zeros = j - i - (j == end)
            if o + zeros > cap:
                return -2
            dst[o:o + zeros] = _ZEROS[:zeros]
            o += zeros
            i = j
            continue
        nxt = i + code
        if not i < nxt <= end:  # a block runs past the segment (truncated), or a stray 0x00
            return -1
        run = code - 1
        if run:
            if o + run > cap:
                return -2
            dst[o:o + run] = src[i + 1:nxt]
            o += run
        i = nxt
        if code != 0xFF and i < end:
            if o >= cap:
                return -2
            dst[o] = 0
            o += 1
    return o


def cobs_decode(data: BytesLike) -> bytes:
    """Inverse of :func:`cobs_encode`; raises ``ValueError`` on invalid input."""
    src = bytes(data)
    if 0 in src:
        raise ValueError("COBS data must not contain 0x00")
    dst = bytearray(len(src))
    n = _cobs_decode_into(memoryview(src), 0, len(src), dst)
    if n < 0:
        raise ValueError("invalid COBS data: a block runs past the end")
    return bytes(dst[:n])


# -- frames -------------------------------------------------------------------------------------
def encode_frame(seq: int, pixels: np.ndarray) -> bytes:
    """One frame on the wire: COBS-encoded body followed by the 0x00 delimiter."""
    if not 0 <= seq < _SEQ_MOD:
        raise ValueError(f"seq must be in [0, 2**32), got {seq}")
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D uint8 array, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"width and height must be in [1, {MAX_SIDE}], got {width}x{height}")
    body = bytearray(_HEADER.pack(VERSION, PIXEL_FORMAT_GRAY8, seq, width, height))
    body += np.ascontiguousarray(pixels).tobytes()
    body += _CRC.pack(zlib.crc32(body))
    return cobs_encode(body) + b"\0"


class FrameDecoder:
    """Streaming decoder: ``feed(chunk, sink)`` delivers every complete valid frame to ``sink``.

    Memory is fixed at construction (``max_side`` bounds it). After any corruption it resumes at
    the next 0x00 delimiter. Counters (all cumulative):

    ``frames_ok``; ``crc_errors`` (CRC mismatch); ``malformed`` (invalid COBS, too short, or a bad
    header under a correct CRC); ``oversize`` (longer than ``max_side`` allows); ``resyncs`` (good
    frames that followed rejected data); ``seq_gaps`` (missing sequence numbers); ``seq_resets``
    (sequence went backwards: sender restarted); ``bytes_in``; ``dropped_bytes``.
    """

    def __init__(self, max_side: int = 64) -> None:
        if not 1 <= max_side <= MAX_SIDE:
            raise ValueError(f"max_side must be in [1, {MAX_SIDE}], got {max_side}")
        self.max_side = max_side
        self._enc_max = max_encoded_size(max_side)
        self._acc = bytearray(self._enc_max)  # a frame split across feeds
        self._acc_mv = memoryview(self._acc)
        self._acc_len = 0
        self._skipping = False  # inside an oversize segment: drop bytes until the next 0x00
        self._raw = bytearray(HEADER_SIZE + max_side * max_side + CRC_SIZE)
        self._raw_mv = memoryview(self._raw)
        self._raw_np = np.frombuffer(self._raw, dtype=np.uint8)
        self._view: np.ndarray = self._raw_np[:0].reshape(0, 0)
        self._view_hw = (0, 0)
        self._bad = False  # data was rejected since the last good frame
        self._expect: Optional[int] = None
        self.frames_ok = self.crc_errors = self.malformed = self.oversize = 0
        self.resyncs = self.seq_gaps = self.seq_resets = self.bytes_in = self.dropped_bytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "frames_ok": self.frames_ok, "crc_errors": self.crc_errors, "malformed": self.malformed,
            "oversize": self.oversize, "resyncs": self.resyncs, "seq_gaps": self.seq_gaps,
            "seq_resets": self.seq_resets, "bytes_in": self.bytes_in, "dropped_bytes": self.dropped_bytes,
        }

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened); counters and the expected seq are kept."""
        if self._acc_len or self._skipping:
            self.dropped_bytes += self._acc_len
            self._bad = True
        self._acc_len = 0
        self._skipping = False

    def feed(self, data: BytesLike, sink: FrameSink) -> int:
        """Consume ``data``; call ``sink`` for each valid frame completed in it; return their count."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)  # bytes.find is the fast delimiter search; memoryview has none
        n = len(data)
        self.bytes_in += n
        mv = memoryview(data)
        pos = delivered = 0
        while pos < n:
            z = data.find(0, pos)
            if z < 0:
                self._stash(mv, pos, n)
                break
            if self._skipping:
                self.dropped_bytes += z - pos
                self._skipping = False
            elif self._acc_len:
                if self._stash(mv, pos, z):
                    delivered += self._segment(self._acc_mv, 0, self._acc_len, sink)
                self._acc_len = 0
                self._skipping = False
            elif z - pos > self._enc_max:
                self._reject_oversize(z - pos)
            else:
                delivered += self._segment(mv, pos, z, sink)
            pos = z + 1
        return delivered

    # -- internals ------------------------------------------------------------------------------
    def _stash(self, mv: memoryview, start: int, end: int) -> bool:
        """Append a partial segment to the accumulator; False (and skip mode) when it would overflow."""
        k = end - start
        if self._skipping:
            self.dropped_bytes += k
            return False
        if self._acc_len + k > self._enc_max:
            self._reject_oversize(self._acc_len + k)
            self._acc_len = 0
            self._skipping = True
            return False
        self._acc[self._acc_len:self._acc_len + k] = mv[start:end]
        self._acc_len += k
        return True

    def _reject_oversize(self, nbytes: int) -> None:
        self.oversize += 1
        self.dropped_bytes += nbytes
        self._bad = True

    def _reject(self, nbytes: int) -> int:
        self.dropped_bytes += nbytes
        self._bad = True
        return 0

    def _segment(self, src: memoryview, start: int, end: int, sink: FrameSink) -> int:
        """Validate one delimited segment and deliver it; 1 if delivered, else 0 (and counted)."""
        if start == end:
            return 0  # back-to-back delimiters are idle fill, not an error
        m = _cobs_decode_into(src, start, end, self._raw)
        if m == -2:
            self.oversize += 1
            return self._reject(end - start)
        if m < HEADER_SIZE + 1 + CRC_SIZE:
            self.malformed += 1
            return self._reject(end - start)
        body = m - CRC_SIZE
        if zlib.crc32(self._raw_mv[:body]) != _CRC.unpack_from(self._raw, body)[0]:
            self.crc_errors += 1
            return self._reject(end - start)
        version, fmt, seq, width, height = _HEADER.unpack_from(self._raw, 0)
        if version != VERSION or fmt != PIXEL_FORMAT_GRAY8 or width * height != body - HEADER_SIZE:
            self.malformed += 1
            return self._reject(end - start)
        if width > self.max_side or height > self.max_side:
            self.oversize += 1
            return self._reject(end - start)
        self._track_seq(seq)
        self.frames_ok += 1
        if self._bad:
            self.resyncs += 1
            self._bad = False
        sink(seq, height, width, self._pixels(height, width))
        return 1

    def _track_seq(self, seq: int) -> None:
        if self._expect is not None and seq != self._expect:
            ahead = (seq - self._expect) % _SEQ_MOD
            if ahead < _SEQ_MOD // 2:
                self.seq_gaps += ahead
            else:
                self.seq_resets += 1
        self._expect = (seq + 1) % _SEQ_MOD

    def _pixels(self, height: int, width: int) -> np.ndarray:
        """A (height, width) view of the decoded pixels; cached so a steady stream allocates nothing."""
        if self._view_hw != (height, width):
            self._view = self._raw_np[HEADER_SIZE:HEADER_SIZE + height * width].reshape(height, width)
            self._view_hw = (height, width)
        return self._view
