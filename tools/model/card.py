"""Model card (JSON next to the model) and the golden set used by selftest / the OTA gate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["CARD_FAMILY", "CARD_NAME", "file_sha256", "model_io", "variant_entry", "write_card", "write_golden"]

CARD_FAMILY = "digit-28x28"  # = the default ota.family: devices refuse a card of another family
CARD_NAME = "digit.card.json"  # one card per model version, listing every variant file


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return str(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name)


def model_io(path: Path) -> dict[str, Any]:
    """Opset, op list and input/output signature read back from the saved model itself."""
    model = onnx.load(str(path))
    inp, out = model.graph.input[0], model.graph.output[0]
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    return {
        "opset": opsets.get("ai.onnx", 0),
        "opsets": opsets,
        "ops": sorted({(n.domain or "ai.onnx") + ":" + n.op_type for n in model.graph.node}),
        "input": {"name": inp.name, "shape": _dims(inp), "dtype": _dtype(inp)},
        "output": {"name": out.name, "shape": _dims(out), "dtype": _dtype(out)},
    }


def write_golden(path: Path, images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Seeded random draw of n test images; returns the chosen indices (recorded in the card)."""
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    np.savez_compressed(path, images=images[idx].astype(np.uint8), labels=labels[idx].astype(np.uint8))
    return idx


def variant_entry(name: str, path: Path, quant_format: str, accuracy: dict[str, float],
                  macs: dict[str, int]) -> dict[str, Any]:
    """One ``variants`` row of the card: the file's own facts plus its measured accuracies.

    ``accuracy``: golden / test / transformed (the daemon's input path); ``macs``: conv
    multiply-accumulates in total and the part run in float (the rest runs as int8).
    """
    return {
        "name": name,
        "file": path.name,
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "quant_format": quant_format,
        "golden_accuracy": accuracy["golden"],
        "test_accuracy": accuracy["test"],
        "transformed_accuracy": accuracy["transformed"],
        "macs": macs["total"],
        "macs_float": macs["float"],
    }


def write_card(path: Path, model_path: Path, fields: dict[str, Any],
               variants: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Card = measured ``fields`` + facts read from the model file (hash, size, signature).

    ``model_path`` is the default file (old readers take top-level file/sha256/size_bytes);
    ``variants``, when given, lists every file of this version and must include that one.
    """
    io = model_io(model_path)
    card: dict[str, Any] = {
        "version": 1,
        "family": CARD_FAMILY,
        "file": model_path.name,
        "sha256": file_sha256(model_path),
        "size_bytes": model_path.stat().st_size,
        **io,
        **fields,
    }
    if variants is not None:
        if not any(v["file"] == model_path.name and v["sha256"] == card["sha256"] for v in variants):
            raise ValueError(f"{path}: the default file {model_path.name} is not among the variants")
        card["variants"] = variants
    path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card
