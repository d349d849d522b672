"""Recompute the shipped model's accuracy on the full MNIST test set, fetched the way users do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "digit_int8.onnx"
CARD = REPO / "models" / "digit_int8.card.json"


@pytest.mark.skipif(not MODEL.exists(), reason="no shipped model (run `make model`)")
def test_full_test_set_accuracy_matches_card() -> None:
    ort = pytest.importorskip("onnxruntime")
    from agent.preprocess import Preprocessor
    from tools.model.data import load_mnist  # cache: $DIGIT_AGENT_CACHE or ~/.cache/digit-agent

    card = json.loads(CARD.read_text())
    _, _, images, labels = load_mnist()
    x = np.empty((len(images), 1, 28, 28), np.float32)
    Preprocessor.from_card(card, max_side=28).batch(images, x)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["probs"], {"input": x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
    acc = float((pred == labels).mean())
    assert card["accuracy"]["test_images"] == len(labels) == 10000
    assert abs(acc - card["accuracy"]["int8_test"]) <= 0.0005
    assert acc >= 0.993
