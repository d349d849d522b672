"""Payload encoders: valid JSON, exact round trip, rounding, non-finite values, status texts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.publish.payloads import (
    PROB_DECIMALS,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    STATUS_STOPPED,
    ResultEncoder,
    encode_health,
    encode_status,
)

_KEYS = ["seq", "boot_id", "frame_seq", "digit", "confidence", "probs", "latency_us", "frame_age_us",
         "deadline_missed", "model_version", "ts"]


def _encode(enc: ResultEncoder, probs: object, **kw: object) -> dict[str, object]:
    args = dict(seq=7, frame_seq=123, digit=3, confidence=0.91234567, probs=probs, latency_us=812,
                frame_age_us=1500, deadline_missed=False, model_version=2, ts=1_700_000_000.1234)
    args.update(kw)
    raw = enc.encode(**args)  # type: ignore[arg-type]
    assert isinstance(raw, bytes)
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


def test_result_round_trip_from_numpy_row() -> None:
    probs = np.zeros(10, dtype=np.float32)
    probs[3], probs[8] = 0.91234567, 0.08765433
    doc = _encode(ResultEncoder("b00t"), probs)
    assert list(doc) == _KEYS
    assert doc["seq"] == 7 and doc["boot_id"] == "b00t" and doc["frame_seq"] == 123 and doc["digit"] == 3
    assert doc["confidence"] == 0.9123
    assert doc["probs"] == [0.0, 0.0, 0.0, 0.9123, 0.0, 0.0, 0.0, 0.0, 0.0877, 0.0]
    assert doc["latency_us"] == 812 and doc["frame_age_us"] == 1500
    assert doc["deadline_missed"] is False and doc["model_version"] == 2
    assert doc["ts"] == 1_700_000_000.123


def test_deadline_missed_true_and_list_input() -> None:
    doc = _encode(ResultEncoder("x"), [0.1] * 10, deadline_missed=True)
    assert doc["deadline_missed"] is True and doc["probs"] == [0.1] * 10


def test_boot_id_is_escaped() -> None:
    nasty = 'a"b\\c%d\n'
    doc = _encode(ResultEncoder(nasty), [0.0] * 10)
    assert doc["boot_id"] == nasty


def test_non_finite_values_become_null_not_invalid_json() -> None:
    probs = [0.5, math.nan, 0.25, math.inf, -math.inf, 0.0, 0.0, 0.0, 0.0, 0.0]
    doc = _encode(ResultEncoder("x"), probs, confidence=math.nan)
    assert doc["probs"] == [0.5, None, 0.25, None, None, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert doc["confidence"] is None
    assert list(doc) == _KEYS  # the slow path keeps the same schema


def test_wrong_number_of_probs_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="10 values"):
        ResultEncoder("x").encode(1, 1, 1, 0.5, [0.5] * 9, 1, 1, False, 1, 0.0)


@settings(max_examples=300, deadline=None)
@given(probs=st.lists(st.floats(0.0, 1.0, width=32), min_size=10, max_size=10),
       seq=st.integers(0, 2**63 - 1), lat=st.integers(0, 10**9), ts=st.floats(0, 4e9))
def test_rounding_matches_python_round(probs: list[float], seq: int, lat: int, ts: float) -> None:
    row = np.asarray(probs, dtype=np.float32)
    doc = _encode(ResultEncoder("r"), row, seq=seq, latency_us=lat, confidence=float(row[0]), ts=ts)
    assert doc["seq"] == seq and doc["latency_us"] == lat
    assert doc["probs"] == [round(float(p), PROB_DECIMALS) for p in row]
    assert doc["confidence"] == round(float(row[0]), PROB_DECIMALS)
    assert doc["ts"] == pytest.approx(ts, abs=0.0006)


def test_health_encoder_handles_numpy_and_non_finite() -> None:
    doc = {"temp_c": math.nan, "rss": np.int64(5), "p99": np.float32(1.5), "hist": np.arange(3),
           "nested": {"x": (1, math.inf)}, "ok": True, "none": None}
    out = json.loads(encode_health(doc))
    assert out == {"temp_c": None, "rss": 5, "p99": 1.5, "hist": [0, 1, 2], "nested": {"x": [1, None]},
                   "ok": True, "none": None}


def test_health_encoder_rejects_unserialisable_values() -> None:
    with pytest.raises(TypeError):
        encode_health({"x": object()})


def test_status_payloads() -> None:
    assert encode_status("online") == STATUS_ONLINE == b"online"
    assert encode_status("stopped") == STATUS_STOPPED == b"stopped"
    assert encode_status("offline") == STATUS_OFFLINE == b"offline"
    with pytest.raises(ValueError, match="unknown status"):
        encode_status("dead")
