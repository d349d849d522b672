"""Property-based fuzzing in CI (hypothesis), with the same oracles as the atheris targets in tools/fuzz/.

The long coverage-guided runs are ``make fuzz``; these keep every oracle exercised on each commit,
and the oracle tests below prove the oracles can fail (a decoder that delivers a tampered frame, or
loses frames, is caught).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, parse_config
from agent.source.codec import FrameDecoder, FrameSink, encode_frame
from tools.fuzz import ota_model as om
from tools.fuzz.codec_model import RandomDraw, Violation, check_corrupted, check_raw
from tools.fuzz.config_model import _ATOMS, check_text, toml_from

_FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class HypDraw:
    """The oracles' ``Draw`` over hypothesis' ``data`` (shrinks like any strategy). After ``budget``
    draws (e.g. piece sizes of a long stream) it continues from a PRNG seeded by one more draw: a
    hypothesis draw costs ~100 µs, and the structure that matters is chosen first."""

    def __init__(self, data: st.DataObject, budget: int = 1 << 30) -> None:
        self._d = data
        self._left = budget
        self._rest: RandomDraw | None = None

    def _spent(self) -> RandomDraw | None:
        self._left -= 1
        if self._left < 0 and self._rest is None:
            self._rest = RandomDraw(self._d.draw(st.integers(0, 2**32 - 1)))
        return self._rest

    def number(self, lo: int, hi: int) -> int:
        rest = self._spent()
        return rest.number(lo, hi) if rest else int(self._d.draw(st.integers(lo, hi)))

    def blob(self, n: int) -> bytes:
        rest = self._spent()
        return rest.blob(n) if rest else bytes(self._d.draw(st.binary(max_size=n)))


# -- serial codec ---------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_codec_corrupted_streams_deliver_only_sent_frames(data: st.DataObject) -> None:
    check_corrupted(HypDraw(data, budget=60))


@_FAST
@given(st.binary(max_size=2048), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_codec_raw_bytes_deliver_only_crc_valid_segments(raw: bytes, side: int, seed: int) -> None:
    check_raw(raw, side, RandomDraw(seed))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=64))
def test_codec_valid_frames_embedded_in_noise_are_found(seq: int, noise: bytes) -> None:
    frame = encode_frame(seq, np.full((5, 7), 9, np.uint8))
    got = check_raw(noise + b"\0" + frame + noise, 8, RandomDraw(seq))
    assert got == 1


class _TamperingDecoder(FrameDecoder):
    """Delivers every frame with one pixel changed: what a decoder without a CRC check could do."""

    def feed(self, data: Any, sink: FrameSink) -> int:
        def tamper(seq: int, h: int, w: int, px: np.ndarray) -> None:
            bad = px.copy()
            bad[0, 0] ^= 1
            sink(seq, h, w, bad)
        return super().feed(data, tamper)


class _LosingDecoder(FrameDecoder):
    def feed(self, data: Any, sink: FrameSink) -> int:
        return super().feed(data, lambda *a: None)


@pytest.mark.parametrize("decoder", [_TamperingDecoder, _LosingDecoder])
def test_codec_oracle_catches_a_broken_decoder(decoder: type[FrameDecoder]) -> None:
    caught = 0
    for seed in range(50):
        try:
            check_corrupted(RandomDraw(seed), make_decoder=decoder)
        except Violation:
            caught += 1
    assert caught >= 25, f"the oracle caught only {caught}/50 broken runs"
    with pytest.raises(Violation):
        check_raw(encode_frame(1, np.ones((2, 2), np.uint8)), 8, RandomDraw(0), make_decoder=_TamperingDecoder)


# -- config loader --------------------------------------------------------------------------------
_KNOWN: tuple[str, ...] = ()  # fixed: NaN, control characters and trailing newlines are refused


class _KnownFree(HypDraw):
    def number(self, lo: int, hi: int) -> int:
        if (lo, hi) == (0, len(_ATOMS) + 1):
            return int(self._d.draw(st.sampled_from([i for i in range(hi + 1)
                                                     if i >= len(_ATOMS) or _ATOMS[i] not in _KNOWN])))
        return super().number(lo, hi)

    def blob(self, n: int) -> bytes:
        return bytes(self._d.draw(st.binary(max_size=n).filter(lambda b: b"\0" not in b and b"\n" not in b)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_config_structured_inputs_refused_cleanly_or_within_limits(data: st.DataObject) -> None:
    text, overrides = toml_from(_KnownFree(data))
    check_text(text, overrides)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_config_raw_text_refused_cleanly_or_within_limits(text: str) -> None:
    check_text(text, [])


def test_config_refuses_nan() -> None:
    with pytest.raises(ConfigError):
        parse_config("[inference]\ndeadline_ms = nan\n")


def test_config_refuses_newline_in_device_id() -> None:
    with pytest.raises(ConfigError):
        parse_config('[device]\nid = "dev1\\n"\n')


def test_config_refuses_nul_in_strings() -> None:
    with pytest.raises(ConfigError):
        parse_config('[mqtt]\nhost = "broker\\u0000"\n')


# -- OTA parsers (payloads of the topics a device subscribes to) -------------------------------------
_DOC = om.valid_manifest_doc()
_PATHS = [["format"], ["job"], ["version"], ["family"], ["keyid"], ["requires", "opset"],
          ["requires", "input", "shape"], ["file", "size"], ["chunks", "size"], ["chunks", "sha256"],
          ["gate", "min_accuracy"], ["gate", "max_p99_ms"], ["created"], ["expires"], ["card"],
          ["keys_add"], ["keys_revoke"]]
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=10)


def test_valid_signed_manifest_is_accepted() -> None:
    """The positive twin: without it a parser refusing everything would pass every fuzz test."""
    assert om.check_signed_manifest(json.dumps(_DOC).encode())
    assert om.check_envelope_bytes(om.signed(json.dumps(_DOC).encode()))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_PATHS), _JSON | st.just(...))
def test_ota_signed_manifest_with_one_bad_field(path: list[str], value: Any) -> None:
    accepted = om.check_signed_manifest(om.mutate_doc(_DOC, path, value))
    if accepted and value is ...:
        assert path[-1] in ("card", "keys_add", "keys_revoke"), f"manifest accepted without {path}"


@_FAST
@given(st.binary(max_size=600))
def test_ota_raw_envelope_bytes(data: bytes) -> None:
    om.check_envelope_bytes(data)


@_FAST
@given(st.binary(max_size=80), st.integers(0, 64), st.integers(0, 300))
def test_ota_chunk_request_bitmap_and_key_bytes(data: bytes, limit: int, count: int) -> None:
    om.check_chunk_bytes(b"OTC1" + data, limit)
    om.check_chunk_bytes(data, limit)
    om.check_request_bytes(data, count)
    om.check_bitmap(data, count)
    om.check_key_bytes(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 1 << 20), st.integers(256, 8192))
def test_ota_manifest_sizes_consistent(size: int, chunk: int) -> None:
    doc = om.valid_manifest_doc(size, chunk)
    n = math.ceil(size / chunk)
    assert om.check_signed_manifest(json.dumps(doc).encode()) == (n <= om.LIMITS.max_chunks)
