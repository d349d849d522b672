"""The shipped model artefacts: the card's facts match every variant file, signature, budgets, golden set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config.schema import OtaConfig

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
CARD = MODELS / "digit.card.json"
GOLDEN = MODELS / "golden.npz"
MAX_MACS = 400_000  # the device-class budget: conv multiply-accumulates per frame
MAX_INT8_BYTES = 16 * 1024

pytestmark = pytest.mark.skipif(not CARD.exists(), reason="no shipped model (run `make model`)")


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CARD.read_text())
    return loaded


def _variants(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in card["variants"]}


def test_card_describes_the_default_file(card: dict[str, Any]) -> None:
    blob = (MODELS / card["file"]).read_bytes()
    assert card["sha256"] == hashlib.sha256(blob).hexdigest()
    assert card["size_bytes"] == len(blob)
    assert isinstance(card["version"], int) and card["version"] >= 1
    assert card["family"] == "digit-28x28" == OtaConfig().family  # a device accepts its own shipped model
    assert card["input"] == {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32"}
    assert card["output"] == {"name": "probs", "shape": ["N", 10], "dtype": "float32"}
    assert card["opset"] <= 17
    for key in ("fp32_test", "int8_test", "int8_transformed_test", "agreement", "golden_int8", "golden_fp32"):
        assert 0.0 <= card["accuracy"][key] <= 1.0
    for key in ("seed", "command", "epochs", "minutes"):
        assert key in card["training"]
    assert {"mean", "std", "polarity"} <= set(card["normalisation"])
    assert card["calibration"]["method"] in ("minmax", "entropy", "percentile")
    assert card["quant_format"] in ("QDQ", "QOperator")
    assert card["min_onnxruntime"]


def test_variants_describe_their_files(card: dict[str, Any]) -> None:
    variants = _variants(card)
    assert {"int8", "fp32"} <= set(variants)
    assert len(variants) == len(card["variants"])  # names are unique
    for v in card["variants"]:
        blob = (MODELS / v["file"]).read_bytes()
        assert v["sha256"] == hashlib.sha256(blob).hexdigest(), v["name"]
        assert v["size_bytes"] == len(blob), v["name"]
        for key in ("golden_accuracy", "test_accuracy", "transformed_accuracy"):
            assert 0.0 <= v[key] <= 1.0
    int8, fp32 = variants["int8"], variants["fp32"]
    assert int8["quant_format"] in ("QDQ", "QOperator") and fp32["quant_format"] == "float"
    # Old readers take the top-level file: it is the int8 variant.
    assert (card["file"], card["sha256"], card["size_bytes"]) == (int8["file"], int8["sha256"], int8["size_bytes"])
    assert (int8["test_accuracy"], fp32["test_accuracy"]) == (card["accuracy"]["int8_test"],
                                                              card["accuracy"]["fp32_test"])


def test_budgets(card: dict[str, Any]) -> None:
    variants = _variants(card)
    assert (MODELS / variants["int8"]["file"]).stat().st_size <= MAX_INT8_BYTES
    for v in card["variants"]:
        assert 0 < v["macs"] <= MAX_MACS, v["name"]
        assert 0 <= v["macs_float"] <= v["macs"]
    assert variants["fp32"]["macs_float"] == variants["fp32"]["macs"]
    assert variants["int8"]["macs"] == variants["fp32"]["macs"]  # the same net


def test_card_macs_are_counted_from_the_graphs(card: dict[str, Any]) -> None:
    pytest.importorskip("onnx")
    from tools.bench.graph import conv_macs

    for v in card["variants"]:
        assert conv_macs(MODELS / v["file"]) == {"total": v["macs"], "float": v["macs_float"]}, v["name"]


def test_card_macs_match_the_architecture(card: dict[str, Any]) -> None:
    pytest.importorskip("torch")  # tools.model.net
    from tools.model.net import conv_macs

    assert conv_macs(card["training"]["arch"]) == _variants(card)["fp32"]["macs"]


def test_golden_set_shape() -> None:
    assert GOLDEN.stat().st_size < 300 * 1024
    with np.load(GOLDEN) as g:
        images, labels = g["images"], g["labels"]
    assert images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (len(images),)
    assert 300 <= len(images) <= 500
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("name", ["int8", "fp32"])
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_micro_batches_give_probabilities(card: dict[str, Any], name: str, batch: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(MODELS / _variants(card)[name]["file"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    (probs,) = sess.run(["probs"], {"input": x})
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_card_normalisation_builds_the_preprocessor(card: dict[str, Any]) -> None:
    from agent.preprocess import Preprocessor

    pre = Preprocessor.from_card(card, max_side=40)
    assert (pre.mean, pre.std) == (card["normalisation"]["mean"], card["normalisation"]["std"])


@pytest.mark.parametrize("name", ["int8", "fp32"])
def test_golden_accuracy_matches_card(card: dict[str, Any], name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from agent.preprocess import Preprocessor

    variant = _variants(card)[name]
    with np.load(GOLDEN) as g:
        images, labels = g["images"], g["labels"]
    x = np.empty((len(images), 1, 28, 28), np.float32)
    Preprocessor.from_card(card, max_side=28).batch(images, x)
    sess = ort.InferenceSession(str(MODELS / variant["file"]), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["probs"], {"input": x[i : i + 4]})[0].argmax(1) for i in range(0, len(x), 4)])
    acc = float((pred == labels).mean())
    assert acc == pytest.approx(variant["golden_accuracy"], abs=1e-9)
    assert acc == pytest.approx(card["accuracy"][f"golden_{name}"], abs=1e-9)
