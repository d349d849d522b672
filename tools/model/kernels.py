"""Which onnxruntime (MLAS) CPU kernel each conv of a net lands on, per instruction set.

The rules are transcribed from onnxruntime's source (microsoft/onnxruntime, read for this model):

* fp32 ``Conv`` -> ``NchwcConv`` (``onnxruntime/core/optimizer/nchwc_transformer.cc``,
  ``NchwcTransformerImpl::TransformConv``; only at ``ORT_ENABLE_ALL``, which the daemon uses).
  Block size B = ``MlasNchwcGetBlockSize()`` (``onnxruntime/core/mlas/lib/platform.cpp``): 8 with
  AVX2, 16 with AVX-512F; on ARM64 16 only in builds with ``MLAS_USE_ARM_NEON_NCHWC``, otherwise 1
  (no NCHWc). For an ungrouped conv: ``C_in < B`` reads the NCHW input directly; otherwise
  ``C_in % B != 0`` leaves the node as plain ``Conv`` (im2col + SGEMM). ``C_out`` is rounded up to a
  multiple of B, so other counts compute padding channels.
* int8 ``QLinearConv`` symmetric "indirect" conv (``onnxruntime/core/providers/cpu/quantization/
  qlinearconv.cc`` -> ``MlasConvSymPackWSize`` in ``onnxruntime/core/mlas/lib/convsym.cpp``): weight
  zero points all 0 and a constant scalar input zero point, then per dispatch
  AVX2 / AVX-VNNI: ``C_in % 4 == 0``, ``C_out % 8 == 0``, ``C_out >= 16``;
  AVX-512 core / VNNI: ``C_in % 4``, ``C_out % 4``, ``C_out >= 16``;
  ARM64: kernel size > 1 and ``C_in >= 64`` ("shallow indirect conv runs slower"), then NEON
  ``C_in % 8``, ``C_out % 8``, ``C_out >= 8``; dot-product ``C_in % 4``, ``C_out % 16``, ``C_out >= 16``.
  Anything else runs im2col + the QGEMM kernels (u8s8 ``vpmaddubsw``/VNNI on x86, ``udot``/NEON on ARM).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NCHWC_BLOCK", "SYM_RULES", "fp32_path", "int8_path", "kernel_table"]

# MlasNchwcGetBlockSize() per target (ARM64: builds with MLAS_USE_ARM_NEON_NCHWC only).
NCHWC_BLOCK = {"AVX2": 8, "AVX-512": 16, "ARM64": 16}

# (C_in alignment, C_out alignment, minimum C_out, minimum C_in) of MlasConvSym per dispatch.
SYM_RULES: dict[str, tuple[int, int, int, int]] = {
    "AVX2": (4, 8, 16, 0),
    "AVX-512": (4, 4, 16, 0),
    "ARM64 dot": (4, 16, 16, 64),
}


def fp32_path(c_in: int, c_out: int, block: int) -> str:
    """The fp32 kernel for an ungrouped conv on a target with NCHWc block ``block``."""
    if c_in >= block and c_in % block:
        return "im2col+SGEMM (C_in not a multiple of the NCHWc block)"
    pad = -c_out % block
    src = "NCHW input" if c_in < block else "NCHWc"
    return f"NchwcConv ({src})" + (f", {pad} padding channels" if pad else "")


def int8_path(c_in: int, c_out: int, kernel: int, target: str) -> str:
    """The int8 kernel for an ungrouped QLinearConv with symmetric per-channel weights."""
    a_in, a_out, min_out, min_in = SYM_RULES[target]
    if target.startswith("ARM64") and (kernel * kernel <= 1 or c_in < min_in):
        return "im2col+QGEMM (ARM64 needs C_in >= 64 and k > 1)"
    if c_in % a_in or c_out % a_out or c_out < min_out:
        return f"im2col+QGEMM (needs C_in%{a_in}, C_out%{a_out}, C_out>={min_out})"
    return "symmetric indirect conv"


def kernel_table(layers: list[dict[str, int]], float_first: bool) -> list[dict[str, Any]]:
    """One row per conv: shape, MACs and the kernel it takes per target (fp32 and int8 variants)."""
    rows = []
    for i, layer in enumerate(layers):
        c_in, c_out, k = layer["c_in"], layer["c_out"], layer["kernel"]
        row: dict[str, Any] = {
            "conv": f"{c_in}->{c_out} {k}x{k}/{layer['stride']}", "out": f"{layer['out_side']}^2",
            "macs": layer["macs"],
            "fp32 AVX2": fp32_path(c_in, c_out, NCHWC_BLOCK["AVX2"]),
            "fp32 AVX-512": fp32_path(c_in, c_out, NCHWC_BLOCK["AVX-512"]),
        }
        for target in SYM_RULES:
            row[f"int8 {target}"] = ("float (recipe keeps it fp32)" if float_first and i == 0
                                     else int8_path(c_in, c_out, k, target))
        rows.append(row)
    return rows
