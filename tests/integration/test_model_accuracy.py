"""Recompute the shipped model's accuracies (test set, transformed test set), MNIST fetched the way users do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "digit_int8.onnx"
CARD = REPO / "models" / "digit_int8.card.json"


def _int8_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """The shipped model's accuracy on preprocessed inputs ``x`` (N, 1, 28, 28), in batches of 500."""
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["probs"], {"input": x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
    return float((pred == labels).mean())


@pytest.mark.skipif(not MODEL.exists(), reason="no shipped model (run `make model`)")
def test_full_test_set_accuracy_matches_card() -> None:
    from agent.preprocess import Preprocessor
    from tools.model.data import load_mnist  # cache: $DIGIT_AGENT_CACHE or ~/.cache/digit-agent

    card = json.loads(CARD.read_text())
    _, _, images, labels = load_mnist()
    x = np.empty((len(images), 1, 28, 28), np.float32)
    Preprocessor.from_card(card, max_side=28).batch(images, x)
    acc = _int8_accuracy(x, labels)
    assert card["accuracy"]["test_images"] == len(labels) == 10000
    assert abs(acc - card["accuracy"]["int8_test"]) <= 0.0005
    assert acc >= 0.993


@pytest.mark.skipif(not MODEL.exists(), reason="no shipped model (run `make model`)")
def test_transformed_test_accuracy_matches_card() -> None:
    # The robustness target: shifted (±6 px), scaled (0.6-1.4), half inverted digits on a
    # 40x40 canvas, through the daemon's preprocessing — regenerated with the card's seed.
    pytest.importorskip("torch")
    from agent.preprocess import Preprocessor
    from tools.model.augment import preprocess_frames
    from tools.model.data import load_mnist
    from tools.model.evaluate import transformed_test_frames

    card = json.loads(CARD.read_text())
    _, _, images, labels = load_mnist()
    frames = transformed_test_frames(images, card["training"]["seed"] + 101)
    x = preprocess_frames(frames, Preprocessor.from_card(card, max_side=40))
    acc = _int8_accuracy(x, labels)
    # ±0.1 pt: the canvases come from torch's resampling, which may round differently per CPU.
    assert abs(acc - card["accuracy"]["int8_transformed_test"]) <= 0.001
    assert acc >= 0.98


def test_card_meets_the_model_targets() -> None:
    acc = json.loads(CARD.read_text())["accuracy"]
    assert acc["int8_test"] >= 0.994
    assert acc["fp32_test"] - acc["int8_test"] <= 0.001  # fp32 -> int8 drop ≤ 0.1 pt
    assert acc["int8_transformed_test"] >= 0.98
