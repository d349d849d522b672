"""Per-layer quantization sensitivity: qdq_loss_debug SQNR and one-layer-at-a-time accuracy."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import qdq_loss_debug as qdbg

from tools.model.evaluate import predict_onnx, session
from tools.model.quantize import ArrayReader, QuantVariant, quantize

__all__ = ["layer_sqnr", "one_layer_at_a_time"]

log = logging.getLogger(__name__)


def layer_sqnr(fp32: Path, qdq: Path, x: np.ndarray) -> dict[str, float]:
    """SQNR (dB) of every activation of the QDQ model vs the float model on inputs ``x``."""
    with tempfile.TemporaryDirectory() as tmp:
        aug_f, aug_q = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        qdbg.modify_model_output_intermediate_tensors(str(fp32), str(aug_f))
        qdbg.modify_model_output_intermediate_tensors(str(qdq), str(aug_q))
        fa = qdbg.collect_activations(str(aug_f), ArrayReader(x))
        qa = qdbg.collect_activations(str(aug_q), ArrayReader(x))
    match = qdbg.create_activation_matching(qa, fa)
    errors = qdbg.compute_activation_error(match)
    return {name: float(e.get("xmodel_err", float("nan"))) for name, e in errors.items()}


def one_layer_at_a_time(
    prepped: Path, calib: np.ndarray, variant: QuantVariant, x_val: np.ndarray, y_val: np.ndarray
) -> list[dict[str, object]]:
    """Quantize each quantizable node alone; report validation accuracy and agreement with fp32."""
    model = onnx.load(str(prepped))
    ref = predict_onnx(session(prepped), x_val)
    nodes = [(n.name, n.op_type) for n in model.graph.node if n.op_type in ("Conv", "MaxPool", "GlobalAveragePool")]
    names = [n for n, _ in nodes]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, op in nodes:
            out = Path(tmp) / "one.onnx"
            quantize(prepped, out, calib, variant, exclude=[n for n in names if n != name])
            pred = predict_onnx(session(out), x_val)
            rows.append(
                {
                    "node": name,
                    "op": op,
                    "val_acc": float((pred == y_val).mean()),
                    "agreement": float((pred == ref).mean()),
                }
            )
            log.info("sensitivity %s: %s", name, rows[-1])
    return rows
