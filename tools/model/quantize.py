"""Static int8 quantization with onnxruntime.quantization (pre-process, calibration, variants)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from tools.model.export import INPUT_NAME, strip_model

__all__ = ["METHODS", "ArrayReader", "QuantVariant", "float_nodes", "preprocess_for_quant", "quantize"]

log = logging.getLogger(__name__)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class QuantVariant:
    """One quantization recipe: calibration method, graph format and activation signedness."""

    method: str = "minmax"
    fmt: str = "qoperator"  # "qdq" or "qoperator"
    activations: str = "u8"  # "u8" (U8S8) or "s8" (S8S8); weights are always per-channel int8
    # 7-bit weights: avoids the int16 saturation of x86 AVX2 U8S8 kernels (vpmaddubsw) at some precision cost
    reduce_range: bool = False
    # First conv left in float: with one input channel its int8 kernel is mostly layout work (an
    # im2col of depth 9) and costs more than the fp32 conv; the graph quantizes after it instead.
    float_first: bool = False

    @property
    def tag(self) -> str:
        return (f"{self.method}-{self.fmt}-{self.activations}s8" + ("-r7" if self.reduce_range else "")
                + ("-f1" if self.float_first else ""))

    @classmethod
    def from_tag(cls, tag: str) -> QuantVariant:
        """Inverse of :attr:`tag` (``percentile-qoperator-u8s8-r7-f1``); ValueError when malformed."""
        parts = tag.split("-")
        if len(parts) < 3 or parts[1] not in ("qdq", "qoperator") or parts[2] not in ("u8s8", "s8s8") \
                or not set(parts[3:]) <= {"r7", "f1"} or parts[0] not in METHODS:
            raise ValueError(f"not a quantization recipe tag: {tag!r}")
        return cls(parts[0], parts[1], parts[2][:2], "r7" in parts[3:], "f1" in parts[3:])


class ArrayReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds normalised (N,1,28,28) calibration images in small batches."""

    def __init__(self, images: np.ndarray, batch: int = 50) -> None:
        self._images = images.astype(np.float32, copy=False)
        self._batch = batch
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._images):
            return None
        chunk = self._images[self._pos : self._pos + self._batch]
        self._pos += self._batch
        return {INPUT_NAME: chunk}

    def rewind(self) -> None:
        self._pos = 0


def preprocess_for_quant(fp32: Path, out: Path) -> Path:
    """ORT's recommended pre-processing: graph optimisation (drops Identity etc.) + shape inference."""
    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=False)
    return out


def float_nodes(model_path: Path, variant: QuantVariant) -> list[str]:
    """Nodes the recipe keeps in float: every Softmax (the device needs float probabilities and a u8
    softmax loses resolution), and the first Conv for ``float_first``."""
    nodes = onnx.load(str(model_path)).graph.node
    first_conv = [n.name for n in nodes if n.op_type == "Conv"][:1] if variant.float_first else []
    return [n.name for n in nodes if n.op_type == "Softmax"] + first_conv


def quantize(prepped: Path, out: Path, calib: np.ndarray, variant: QuantVariant, exclude: Sequence[str] = ()) -> Path:
    """Static per-channel int8 quantization of ``prepped`` into ``out`` for one recipe."""
    act = QuantType.QUInt8 if variant.activations == "u8" else QuantType.QInt8
    fmt = QuantFormat.QDQ if variant.fmt == "qdq" else QuantFormat.QOperator
    extra: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        quantize_static(
            str(prepped),
            str(Path(tmp) / "q.onnx"),
            ArrayReader(calib),
            quant_format=fmt,
            per_channel=True,
            reduce_range=variant.reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[variant.method],
            nodes_to_exclude=[*float_nodes(prepped, variant), *exclude],
            extra_options=extra,
        )
        model = strip_model(onnx.load(str(Path(tmp) / "q.onnx")))
    onnx.save(model, str(out))
    log.info("quantized %s -> %s (%d bytes)", variant.tag, out, out.stat().st_size)
    return out
