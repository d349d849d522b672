"""The float twin of a QOperator int8 model: the same net with its dequantised weights.

    python -m tools.model.dequantize models/digit.int8.onnx --out build/digit.fp32.onnx

Why: on a CPU without int8 dot-product instructions the float graph of the same trained net can be
faster than its int8 file, and the device picks per CPU (agent.inference.variants). This turns an
existing int8 file into that twin without the training run that produced it.

Rewrites: ``QLinearConv`` → ``Conv`` with weights ``(w - w_zp) * w_scale`` and bias
``b * x_scale * w_scale``, followed by ``Relu`` when the quantised output clamps at zero (output
zero-point = the type's minimum, which is how the quantiser folds a ReLU); ``QuantizeLinear`` /
``DequantizeLinear`` → ``Identity`` (``Relu`` for a ``QuantizeLinear`` whose zero-point is the type's
minimum: it clamps at zero); ``com.microsoft:QLinearGlobalAveragePool`` →
``GlobalAveragePool``; a QDQ graph's constant (weight) ``DequantizeLinear`` is folded into a float
constant. Other nodes are kept (they work on either type). The twin differs from the
int8 file only by the int8 rounding of activations, so they agree on nearly every frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["dequantize", "main"]

_QMIN = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128}


def dequantize(model_bytes: bytes) -> bytes:
    """The float twin of a QOperator model (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    new_inits: dict[str, np.ndarray] = {}
    nodes: list[Any] = []

    def arr(name: str) -> np.ndarray:
        if name not in inits:
            raise ValueError(f"quantisation parameter {name!r} is not a constant; cannot dequantise")
        return inits[name]

    for n in g.node:
        ins, outs = list(n.input), list(n.output)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ("", "ai.onnx"):
            if ins[0] in inits:  # a constant dequantised in the graph (QDQ weights): fold it
                q = inits[ins[0]].astype(np.float32)
                scale, zp = arr(ins[1]), arr(ins[2]) if len(ins) > 2 and ins[2] else np.zeros((), np.int8)
                if scale.size > 1:  # per-channel along ``axis`` (default 1)
                    axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
                    shape = [1] * q.ndim
                    shape[axis] = -1
                    scale, zp = scale.reshape(shape), zp.reshape(shape)
                new_inits[outs[0]] = ((q - zp) * scale).astype(np.float32)
                continue
            # An activation quantised with zero-point = the type's minimum is clamped at 0: that is
            # how the quantiser folds a ReLU (QDQ), so the float graph needs the ReLU back.
            zp_in = inits.get(ins[2]) if n.op_type == "QuantizeLinear" and len(ins) > 2 and ins[2] else None
            clamps = zp_in is not None and int(zp_in.reshape(-1)[0]) == _QMIN.get(zp_in.dtype)
            nodes.append(helper.make_node("Relu" if clamps else "Identity", [ins[0]], outs, name=n.name))
        elif n.op_type == "QLinearConv":
            x_scale, w, w_scale, w_zp = arr(ins[1]), arr(ins[3]), arr(ins[4]), arr(ins[5])
            y_zp = arr(ins[7])
            wshape = (-1,) + (1,) * (w.ndim - 1)
            wf = (w.astype(np.float32) - np.reshape(w_zp, wshape if w_zp.size > 1 else ())) \
                * np.reshape(w_scale, wshape if w_scale.size > 1 else ())
            conv_in = [ins[0], f"{n.name or outs[0]}_wf"]
            new_inits[conv_in[1]] = wf.astype(np.float32)
            if len(ins) > 8 and ins[8]:
                bias = arr(ins[8]).astype(np.float64) * float(x_scale) * np.reshape(w_scale, (-1,))
                conv_in.append(f"{n.name or outs[0]}_bf")
                new_inits[conv_in[2]] = bias.astype(np.float32)
            relu = int(y_zp.reshape(-1)[0]) == _QMIN.get(y_zp.dtype)
            conv_out = f"{outs[0]}_pre" if relu else outs[0]
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            nodes.append(helper.make_node("Conv", conv_in, [conv_out], name=n.name, **attrs))
            if relu:
                nodes.append(helper.make_node("Relu", [conv_out], outs))
        elif n.op_type == "QLinearGlobalAveragePool":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("channels_last"):
                raise ValueError("channels_last QLinearGlobalAveragePool is not supported")
            nodes.append(helper.make_node("GlobalAveragePool", [ins[0]], outs, name=n.name))
        elif n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger"):
            raise ValueError(f"cannot dequantise {n.op_type} (node {n.name!r}); add a rule for it")
        else:
            nodes.append(n)
    used = {i for node in nodes for i in node.input}
    keep = [t for t in g.initializer if t.name in used and t.name not in new_inits]
    keep += [numpy_helper.from_array(a, name) for name, a in new_inits.items() if name in used]
    graph = helper.make_graph(nodes, g.name + "_fp32", list(g.input), list(g.output), keep)
    opsets = [o for o in m.opset_import if o.domain in ("", "ai.onnx")]
    out = helper.make_model(graph, opset_imports=opsets, producer_name="tools.model.dequantize")
    out.ir_version = m.ir_version
    onnx.checker.check_model(out)
    return bytes(out.SerializeToString())


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.model.dequantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="QOperator int8 ONNX file")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.write_bytes(dequantize(a.model.read_bytes()))
    print(f"{a.out}: float twin of {a.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
