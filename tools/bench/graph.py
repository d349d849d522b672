"""Static size figures of an ONNX model: file bytes, weight bytes and peak activation bytes.

Activation sizes are taken from the graph's tensors at batch 1. Shape inference does not know the
contrib int8 ops (QLinearConv, ...) of a quantized graph, so the sizes come from one real run that
exposes every intermediate tensor as an output; the peak is the largest sum of tensors alive at
once when the nodes run in graph order (a tensor dies after its last consumer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["conv_macs", "graph_sizes"]


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(int(numpy_helper.to_array(t).nbytes) for t in model.graph.initializer)


def _tensor_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """nbytes of every node output (and the graph input) for one normalised-zero input, batch 1."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for name in node.output:
            if name and name not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.zeros((1, 1, 28, 28), np.float32)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {inp.name: x})
    sizes = {n: int(np.asarray(v).nbytes) for n, v in zip(names, outs)}
    sizes[inp.name] = int(x.nbytes)
    return sizes


def _peak_live(model: onnx.ModelProto, sizes: dict[str, int]) -> int:
    nodes = list(model.graph.node)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = i
    outputs = {o.name for o in model.graph.output}
    live = {i.name: sizes.get(i.name, 0) for i in model.graph.input}
    peak = sum(live.values())
    for i, node in enumerate(nodes):
        for name in node.output:
            if name:
                live[name] = sizes.get(name, 0)
        peak = max(peak, sum(live.values()))  # inputs and outputs of this node coexist
        for name in list(live):
            if last_use.get(name, -1) <= i and name not in outputs:
                del live[name]
    return peak


def _conv_macs(model: onnx.ModelProto, sizes: dict[str, int]) -> dict[str, int]:
    """Multiply-accumulates of the Conv/QLinearConv nodes at batch 1 (output elements x kernel
    volume): ``total`` and the ``float`` part (Conv nodes; the rest runs as int8)."""
    weights = {t.name: t for t in model.graph.initializer}
    macs = {"total": 0, "float": 0}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "QLinearConv"):
            continue
        w = weights.get(node.input[1] if node.op_type == "Conv" else node.input[3])
        if w is None:
            continue
        elem = 4 if node.op_type == "Conv" else 1  # f32 vs 8-bit outputs
        n = sizes.get(node.output[0], 0) // elem * int(np.prod(w.dims[1:]))
        macs["total"] += n
        macs["float"] += n if node.op_type == "Conv" else 0
    return macs


def conv_macs(path: Path) -> dict[str, int]:
    """Conv multiply-accumulates of the model file at batch 1: ``total`` and its ``float`` part."""
    model = onnx.load(str(path))
    return _conv_macs(model, _tensor_bytes(model))


def graph_sizes(path: Path) -> dict[str, Any]:
    """``file_bytes``, ``weight_bytes``, ``peak_activation_bytes``, ``largest_tensor_bytes``, ``macs``,
    ``nodes``, ``ops``."""
    model = onnx.load(str(path))
    sizes = _tensor_bytes(model)
    inits = {t.name for t in model.graph.initializer}
    act = {k: v for k, v in sizes.items() if k not in inits}
    return {
        "file_bytes": path.stat().st_size,
        "weight_bytes": _weight_bytes(model),
        "peak_activation_bytes": _peak_live(model, act),
        "largest_tensor_bytes": max(act.values()) if act else 0,
        "macs": _conv_macs(model, sizes)["total"],
        "nodes": len(model.graph.node),
        "ops": sorted({n.op_type for n in model.graph.node}),
    }
