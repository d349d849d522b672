"""ONNX export of the BN-folded network with Softmax inside the graph."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from tools.model.net import DigitNet, export_module

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "export_onnx", "strip_model"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probs"


def strip_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop doc strings and metadata that only add bytes on the device."""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    del model.metadata_props[:]
    return model


def _export(module: torch.nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        do_constant_folding=True,
    )


def export_onnx(net: DigitNet, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export to ``path``: input float32 [N,1,28,28] named 'input', output softmax [N,10] named 'probs'.

    The batch axis is dynamic so the daemon can run micro-batches (1..4) with one session.
    The TorchScript exporter is used (dynamo=False): it honours ``opset_version`` exactly and
    emits a plain Conv/Relu/MaxPool graph without wrapper functions.
    """
    module = export_module(net)
    dummy = torch.zeros(1, 1, 28, 28)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter is deprecated upstream but is the one that honours opset_version
        # exactly and emits no function wrappers; silence its notices in build logs.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(module, dummy, path, opset)
    model = strip_model(onnx.load(str(path)))

    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    log.info("exported %s (opset %d, %d bytes)", path, opset, path.stat().st_size)
    return path
