"""Preprocessor + shipped model: a digit anywhere in a larger canvas, any polarity, any background
level and size, is classified like the centred original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.preprocess import Preprocessor

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "digit.int8.onnx"
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="no shipped model (run `make model`)")


@pytest.fixture(scope="module")
def setup() -> tuple[object, Preprocessor, np.ndarray, np.ndarray]:
    card = json.loads((REPO / "models" / "digit.card.json").read_text())
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    pre = Preprocessor.from_card(card, max_side=96)
    with np.load(REPO / "models" / "golden.npz") as g:
        images = g["images"]
    x = np.empty((len(images), 1, 28, 28), np.float32)
    pre.batch(images, x)
    ref = sess.run(["probs"], {"input": x})[0].argmax(1)
    return sess, pre, images, ref


def _frame(digit: np.ndarray, k: int, side: int, top: int, left: int, bg: int, inverted: bool) -> np.ndarray:
    big = np.kron(digit, np.ones((k, k), np.float32))
    canvas = np.zeros((side, side), np.float32)
    canvas[top : top + big.shape[0], left : left + big.shape[1]] = big
    frame = np.round(bg + canvas * (255 - bg) / 255).astype(np.uint8)
    return (255 - frame) if inverted else frame


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([1, 2, 3]),
    extra=st.integers(0, 12),
    pos=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    bg=st.sampled_from([0, 40, 100]),
    inverted=st.booleans(),
)
def test_same_prediction_as_centred(
    setup: tuple[object, Preprocessor, np.ndarray, np.ndarray],
    k: int,
    extra: int,
    pos: tuple[float, float],
    bg: int,
    inverted: bool,
) -> None:
    sess, pre, images, ref = setup
    side = 28 * k + extra
    top, left = int(pos[0] * extra), int(pos[1] * extra)
    x = np.empty((len(images), 1, 28, 28), np.float32)
    for i, img in enumerate(images):
        pre(_frame(img.astype(np.float32), k, side, top, left, bg, inverted), x[i])
    pred = sess.run(["probs"], {"input": x})[0].argmax(1)  # type: ignore[attr-defined]
    assert float((pred == ref).mean()) >= 0.98
