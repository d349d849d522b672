"""End-to-end model pipeline on a small subset: train -> export -> quantize -> validate -> artefacts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # CI installs the `train` extra, so this runs there


@pytest.mark.slow
def test_pipeline_end_to_end_small(tmp_path: Path) -> None:
    import onnxruntime as ort

    from tools.model.build import main

    out = tmp_path / "models"
    search = tmp_path / "search.jsonl"  # an architecture comparison, as tools.model.search writes it
    search.write_text(json.dumps({"arch": "cand-x", "conv_macs": 1, "params": 2, "epochs": 3, "fp32_val_acc": 0.5,
                                  "int8_val_acc": 0.5, "agreement_val": 1.0, "int8_size_bytes": 4,
                                  "train_minutes": 0.1, "recipe": "minmax-qdq-u8s8"}) + "\n")
    t0 = time.monotonic()
    rc = main(
        [
            "--out", str(out), "--work", str(tmp_path / "work"),
            "--epochs", "10", "--max-steps", "200", "--train-subset", "6000", "--test-subset", "1000",
            "--methods", "minmax", "--recipes", "qoperator:u8:r7,qoperator:u8:r7:f1", "--calib-images", "1000",
            "--latency-runs", "100", "--golden", "300", "--no-sensitivity", "--threads", "1",
            "--docs", str(tmp_path / "docs"), "--search-results", str(search),
        ]
    )  # fmt: skip
    print(f"pipeline smoke run: {time.monotonic() - t0:.0f} s")  # a figure, not a verdict
    assert rc == 0
    card = json.loads((out / "digit.card.json").read_text())
    model = out / "digit.int8.onnx"
    assert card["file"] == model.name and card["size_bytes"] == model.stat().st_size <= 16 * 1024
    variants = {v["name"]: v for v in card["variants"]}
    assert [v["name"] for v in card["variants"]] == ["int8", "fp32"]
    assert variants["int8"]["sha256"] == card["sha256"] and variants["fp32"]["file"] == "digit.fp32.onnx"
    assert variants["fp32"]["size_bytes"] == (out / "digit.fp32.onnx").stat().st_size
    assert variants["int8"]["macs"] == variants["fp32"]["macs"] > 0
    assert card["calibration"]["images"] == 1000
    with np.load(out / "golden.npz") as g:
        assert g["images"].shape == (300, 28, 28)
    x = np.zeros((4, 1, 28, 28), np.float32)
    for v in card["variants"]:
        sess = ort.InferenceSession(str(out / v["file"]), providers=["CPUExecutionProvider"])
        (probs,) = sess.run(["probs"], {"input": x})
        assert probs.shape == (4, 10)
    # A few hundred steps already learn digits; through the daemon's preprocessing too.
    assert card["accuracy"]["int8_test"] > 0.8 and variants["fp32"]["test_accuracy"] > 0.8
    assert card["accuracy"]["agreement"] > 0.9
    assert (tmp_path / "work" / "digit_fp32.onnx").exists()
    # Both recipes were compared; the shipped one was measured for latency on validation inputs.
    both = {"minmax-qoperator-u8s8-r7", "minmax-qoperator-u8s8-r7-f1"}
    assert both <= set(card["latency_us"]) and card["quant_recipe"] in both
    assert card["version"] == 1  # no earlier card in --out
    # The report names both variants with their MACs, the searched candidates and each conv's kernel.
    report = (tmp_path / "docs" / "model-report.md").read_text()
    for v in card["variants"]:
        assert f"| {v['name']} | {v['file']} | {v['size_bytes']} |" in report
    assert "| cand-x | 1 |" in report and "symmetric indirect conv" in report
    assert (tmp_path / "docs" / "model-training.png").stat().st_size > 0
