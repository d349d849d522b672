"""Recompute every shipped variant's accuracies (test set, transformed test set), MNIST fetched the way users do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
CARD = MODELS / "digit.card.json"
VARIANTS = ("int8", "fp32")

pytestmark = pytest.mark.skipif(not CARD.exists(), reason="no shipped model (run `make model`)")


def _card() -> dict[str, Any]:
    card: dict[str, Any] = json.loads(CARD.read_text())
    return card


def _variant(card: dict[str, Any], name: str) -> dict[str, Any]:
    (v,) = [v for v in card["variants"] if v["name"] == name]
    return v


def _accuracy(model: Path, x: np.ndarray, labels: np.ndarray) -> float:
    """The model's accuracy on preprocessed inputs ``x`` (N, 1, 28, 28), in batches of 500."""
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["probs"], {"input": x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
    return float((pred == labels).mean())


@pytest.mark.parametrize("name", VARIANTS)
def test_full_test_set_accuracy_matches_card(name: str) -> None:
    from agent.preprocess import Preprocessor
    from tools.model.data import load_mnist  # cache: $DIGIT_AGENT_CACHE or ~/.cache/digit-agent

    card = _card()
    variant = _variant(card, name)
    _, _, images, labels = load_mnist()
    x = np.empty((len(images), 1, 28, 28), np.float32)
    Preprocessor.from_card(card, max_side=28).batch(images, x)
    acc = _accuracy(MODELS / variant["file"], x, labels)
    assert card["accuracy"]["test_images"] == len(labels) == 10000
    assert abs(acc - variant["test_accuracy"]) <= 0.0005
    assert acc >= 0.993  # regression floor; the 99.4 % goal is test_variant_meets_the_accuracy_goal


@pytest.mark.parametrize("name", VARIANTS)
def test_transformed_test_accuracy_matches_card(name: str) -> None:
    # The robustness target: shifted (±6 px), scaled (0.6-1.4), half inverted digits on a 40x40
    # canvas, through the daemon's preprocessing — regenerated with the card's seed.
    pytest.importorskip("torch")
    from agent.preprocess import Preprocessor
    from tools.model.augment import preprocess_frames
    from tools.model.data import load_mnist
    from tools.model.evaluate import transformed_test_frames

    card = _card()
    variant = _variant(card, name)
    _, _, images, labels = load_mnist()
    frames = transformed_test_frames(images, card["training"]["seed"] + 101)
    x = preprocess_frames(frames, Preprocessor.from_card(card, max_side=40))
    acc = _accuracy(MODELS / variant["file"], x, labels)
    # ±0.1 pt: the canvases come from torch's resampling, which may round differently per CPU.
    assert abs(acc - variant["transformed_accuracy"]) <= 0.001
    assert acc >= 0.98


# The goal is 99.4 % on the full test set in every variant. Model version 3's int8 file reaches
# 99.38 % (2 images short; fp32 99.42 %): the miss is recorded here and in docs/model-report.md, not
# hidden by a lower threshold. strict: a rebuilt model that meets the goal must drop this mark.
_INT8_MISS = pytest.mark.xfail(strict=True, reason="int8 variant of model version 3: 99.38 % < 99.4 %")


@pytest.mark.parametrize("name", [pytest.param("int8", marks=_INT8_MISS), "fp32"])
def test_variant_meets_the_accuracy_goal(name: str) -> None:
    variant = _variant(_card(), name)
    assert variant["test_accuracy"] >= 0.994


def test_card_meets_the_model_targets() -> None:
    card = _card()
    acc = card["accuracy"]
    for name in VARIANTS:
        assert _variant(card, name)["transformed_accuracy"] >= 0.98, name
    assert acc["fp32_test"] - acc["int8_test"] <= 0.001  # fp32 -> int8 drop ≤ 0.1 pt
