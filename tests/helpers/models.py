"""Tiny ONNX models built with onnx.helper, for tests that need a model of a given behaviour.

``kind``: ``ok`` (a linear classifier that is deliberately bad at digits but well-formed),
``nan`` (outputs NaN), ``wrong_shape`` (input [N,1,32,32]), ``slow`` (a long MatMul chain),
``fixed_batch`` (batch dimension fixed at 1). For a *good* model, use the shipped one in models/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_model", "make_variant_set"]


def make_model(path: Path, kind: str = "ok", opset: int = 17, slow_steps: int = 400) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = 32 if kind == "wrong_shape" else 28
    batch: int | str = 1 if kind == "fixed_batch" else "N"
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, side, side])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((side * side, 10)).astype(np.float32) * 0.01, "w")
    inits = [w]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits0"])]
    last = "logits0"
    if kind == "slow":
        sq = numpy_helper.from_array(np.eye(10, dtype=np.float32), "eye")
        big = numpy_helper.from_array(rng.standard_normal((10, 2048)).astype(np.float32), "up")
        down = numpy_helper.from_array(rng.standard_normal((2048, 10)).astype(np.float32) * 1e-3, "down")
        inits += [sq, big, down]
        for i in range(slow_steps):
            nodes += [helper.make_node("MatMul", [last, "up"], [f"u{i}"]),
                      helper.make_node("MatMul", [f"u{i}", "down"], [f"d{i}"])]
            last = f"d{i}"
    if kind == "nan":
        nan = numpy_helper.from_array(np.full((10,), np.nan, np.float32), "nan")
        inits.append(nan)
        nodes.append(helper.make_node("Add", [last, "nan"], ["logits_nan"]))
        last = "logits_nan"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=1))
    graph = helper.make_graph(nodes, f"test_{kind}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def make_variant_set(directory: Path, extra: dict[str, Path] | None = None) -> Path:
    """A copy of the shipped model set (``models/digit.card.json``: ``int8`` and ``fp32``) in
    ``directory`` with the golden set, plus any ``extra`` {name: onnx file} added as variants.
    Returns the copy's card."""
    import hashlib
    import json
    import shutil

    repo = Path(__file__).resolve().parents[2]
    card = json.loads((repo / "models" / "digit.card.json").read_text())
    directory.mkdir(parents=True, exist_ok=True)
    variants = list(card["variants"])
    for v in variants:
        shutil.copy(repo / "models" / v["file"], directory / v["file"])
    for name, path in (extra or {}).items():
        data = path.read_bytes()
        (directory / f"digit.{name}.onnx").write_bytes(data)
        variants.append({"name": name, "file": f"digit.{name}.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                         "size_bytes": len(data), "quant_format": "float"})
    card["variants"] = variants
    out = directory / "digit.card.json"
    out.write_text(json.dumps(card, indent=1))
    shutil.copy(repo / "models" / "golden.npz", directory / "golden.npz")
    return out
