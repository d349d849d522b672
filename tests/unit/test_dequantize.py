"""tools.model.dequantize: the float twin of an int8 model (QOperator and QDQ) computes the same net."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.inference import LoadedModel, load_golden
from agent.preprocess import Preprocessor
from tools.model.dequantize import dequantize

REPO = Path(__file__).resolve().parents[2]
QOPERATOR = REPO / "models" / "digit.int8.onnx"


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    card = json.loads((REPO / "models" / "digit.card.json").read_text())
    g = load_golden(REPO / "models" / "golden.npz")
    pre = Preprocessor.from_card(card, 64)
    x = np.zeros((len(g.images), 1, 28, 28), np.float32)
    for i, img in enumerate(g.images):
        pre(img, x[i])
    return x, g.labels


def _float_ops(data: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(data).graph.node}


def test_qoperator_twin_is_float_and_agrees(tmp_path: Path) -> None:
    twin = dequantize(QOPERATOR.read_bytes())
    assert not {op for op in _float_ops(twin) if "Quant" in op or op.startswith("QLinear")}
    (tmp_path / "t.onnx").write_bytes(twin)
    x, labels = _inputs()
    a, b = LoadedModel.load(QOPERATOR, 4, {}).predict(x), LoadedModel.load(tmp_path / "t.onnx", 4, {}).predict(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99  # int8 rounding of activations only
    assert (b.argmax(1) == labels).mean() >= 0.97


def test_qdq_twin_gets_its_folded_relus_back(tmp_path: Path) -> None:
    quant = pytest.importorskip("onnxruntime.quantization")
    x, _ = _inputs()
    (tmp_path / "f.onnx").write_bytes(dequantize(QOPERATOR.read_bytes()))

    class Reader(quant.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.it = iter([{"input": x[i:i + 1]} for i in range(64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quant.quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                          quant_format=quant.QuantFormat.QDQ, activation_type=quant.QuantType.QUInt8,
                          weight_type=quant.QuantType.QInt8, per_channel=True)
    twin = dequantize((tmp_path / "q.onnx").read_bytes())
    assert "Relu" in _float_ops(twin) and "DequantizeLinear" not in _float_ops(twin)
    (tmp_path / "t.onnx").write_bytes(twin)
    ref = LoadedModel.load(tmp_path / "f.onnx", 4, {}).predict(x)
    out = LoadedModel.load(tmp_path / "t.onnx", 4, {}).predict(x)
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.99  # only the weights' int8 rounding differs
