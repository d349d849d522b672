"""The shipped model artefacts: card facts match the file, signature, size budget, golden set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config.schema import OtaConfig

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "digit_int8.onnx"
CARD = REPO / "models" / "digit_int8.card.json"
GOLDEN = REPO / "models" / "golden.npz"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="no shipped model (run `make model`)")


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CARD.read_text())
    return loaded


def test_card_describes_the_file(card: dict[str, Any]) -> None:
    blob = MODEL.read_bytes()
    assert card["sha256"] == hashlib.sha256(blob).hexdigest()
    assert card["size_bytes"] == len(blob)
    assert isinstance(card["version"], int) and card["version"] >= 1
    assert card["family"] == "digit-28x28" == OtaConfig().family  # a device accepts its own shipped model
    assert card["input"] == {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32"}
    assert card["output"] == {"name": "probs", "shape": ["N", 10], "dtype": "float32"}
    assert card["opset"] <= 17
    for key in ("fp32_test", "int8_test", "int8_transformed_test", "agreement"):
        assert 0.0 <= card["accuracy"][key] <= 1.0
    for key in ("seed", "command", "epochs", "minutes"):
        assert key in card["training"]
    assert {"mean", "std", "polarity"} <= set(card["normalisation"])
    assert card["calibration"]["method"] in ("minmax", "entropy", "percentile")
    assert card["quant_format"] in ("QDQ", "QOperator")
    assert card["min_onnxruntime"]


def test_size_budget() -> None:
    assert MODEL.stat().st_size <= 16 * 1024


def test_golden_set_shape() -> None:
    assert GOLDEN.stat().st_size < 300 * 1024
    with np.load(GOLDEN) as g:
        images, labels = g["images"], g["labels"]
    assert images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (len(images),)
    assert 300 <= len(images) <= 500
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_micro_batches_give_probabilities(batch: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    (probs,) = sess.run(["probs"], {"input": x})
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_card_normalisation_builds_the_preprocessor(card: dict[str, Any]) -> None:
    from agent.preprocess import Preprocessor

    pre = Preprocessor.from_card(card, max_side=40)
    assert (pre.mean, pre.std) == (card["normalisation"]["mean"], card["normalisation"]["std"])


def test_golden_accuracy_matches_card(card: dict[str, Any]) -> None:
    ort = pytest.importorskip("onnxruntime")
    from agent.preprocess import Preprocessor

    with np.load(GOLDEN) as g:
        images, labels = g["images"], g["labels"]
    x = np.empty((len(images), 1, 28, 28), np.float32)
    Preprocessor.from_card(card, max_side=28).batch(images, x)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["probs"], {"input": x[i : i + 4]})[0].argmax(1) for i in range(0, len(x), 4)])
    assert float((pred == labels).mean()) == pytest.approx(card["accuracy"]["golden_int8"], abs=1e-9)
