"""OTA test material built here, not downloaded: a synthetic golden set, tiny ONNX models, keys.

The golden set is ten fixed block patterns (jittered, noisy) so it goes through the real preprocessor;
the "good" model is a nearest-centroid classifier over those preprocessed digits (100 % here), and
the broken variants (NaN, wrong shape, slow, inaccurate, garbage) are built with ``onnx.helper``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from onnx import TensorProto, helper, numpy_helper

from agent.control.ota.keys import keyid_of, raw_public
from agent.preprocess import Preprocessor
from tools.ota.package import PackageSpec, build_manifest, sign

__all__ = ["CARD", "disk_full", "envelope", "golden_set", "model_bytes", "no_space", "write_golden", "write_pub"]

CARD = {"normalisation": {"mean": 0.1307, "std": 0.3081}}


def envelope(key: Ed25519PrivateKey, model: bytes, version: int, job: str = "",
             keys: Optional[list[Ed25519PrivateKey]] = None, **spec: Any) -> bytes:
    """A signed OTA envelope for ``model`` (job ``job-v<version>`` unless named; ``spec`` overrides
    :class:`PackageSpec` fields), by ``key`` or by ``keys``."""
    s = PackageSpec(job=job or f"job-v{version}", version=version, card=CARD, chunk_size=4096,
                    min_accuracy=0.9, max_p99_ms=20.0)
    for k, v in spec.items():
        setattr(s, k, v)
    return sign(build_manifest(model, s, keyid_of(raw_public(key.public_key()))), keys or [key])


def no_space() -> OSError:
    """The error a full disk gives (SIMULATED: no real filesystem fills up in the tests)."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def disk_full(write_all: Callable[[int, bytes], None],
              when: Callable[[bytes], bool] = lambda data: True) -> Callable[[int, bytes], None]:
    """A stand-in for the store's ``_write_all`` that fails like a full disk when ``when(data)``."""
    def full(fd: int, data: bytes) -> None:
        if when(data):
            raise no_space()
        write_all(fd, data)
    return full

_PATTERNS = np.random.default_rng(2024).random((10, 5, 4)) < 0.5
_PATTERNS[:, [0, 0, -1, -1], [0, -1, 0, -1]] = True  # corners always on: the bounding box is the grid


def _glyph(digit: int, rng: np.random.Generator) -> np.ndarray:
    """A 5x4 grid of 4x3-pixel blocks, one fixed random pattern per class, placed with jitter."""
    img = np.zeros((28, 28), dtype=np.float32)
    top, left = 4 + rng.integers(-2, 3), 8 + rng.integers(-2, 3)
    block = np.kron(_PATTERNS[digit], np.ones((4, 3))) * 230.0
    img[top:top + 20, left:left + 12] = block
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def golden_set(per_class: int = 5, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = np.stack([_glyph(int(d), rng) for d in labels])
    return images, labels


def write_golden(path: Path, per_class: int = 5) -> Path:
    images, labels = golden_set(per_class)
    np.savez(path, images=images, labels=labels)
    return path


def _centroids() -> tuple[np.ndarray, np.ndarray]:
    images, labels = golden_set(per_class=8, seed=1)
    pre = Preprocessor(max_side=28)
    feats = np.zeros((len(images), 1, 28, 28), dtype=np.float32)
    for i, img in enumerate(images):
        pre(img, feats[i])
    flat = feats.reshape(len(images), -1)
    c = np.stack([flat[labels == d].mean(axis=0) for d in range(10)]).astype(np.float32)
    return c.T.copy(), (-0.5 * (c * c).sum(axis=1)).astype(np.float32)


def model_bytes(kind: str = "good", tag: int = 0, out_classes: int = 10, slow_layers: int = 60,
                opset: int = 13) -> bytes:
    """``good`` | ``inaccurate`` | ``nan`` | ``wrong_shape`` | ``slow`` | ``slow_on_blank`` | ``garbage``;
    ``tag`` makes otherwise identical models differ byte-wise (different versions of the same weights).
    ``slow_on_blank`` is good and fast on digits (it passes the gate) but spins a Loop on blank
    frames: the failure only the test window after activation can catch."""
    if kind == "garbage":
        return b"this is not an onnx model" * 40
    w, b = _centroids()
    if kind == "inaccurate":
        w = np.roll(w, 3, axis=1)  # every class answers for another one
    if kind == "wrong_shape":
        w, b = w[:, :out_classes], b[:out_classes]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.array([0.01], np.float32), "T")]
    x = "flat"
    if kind == "slow":
        inits.append(numpy_helper.from_array(np.eye(784, dtype=np.float32), "I"))
        for k in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [x, "I"], [f"s{k}"]))
            x = f"s{k}"
    nodes += [helper.make_node("MatMul", [x, "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["lg"]),
              helper.make_node("Mul", ["lg", "T"], ["lt"]),
              helper.make_node("Softmax", ["lt"], ["sm"], axis=1)]
    if kind == "slow_on_blank":
        _add_blank_spin(nodes, inits)
    if kind == "nan":
        inits.append(numpy_helper.from_array(np.array([np.nan], np.float32), "N"))
        nodes.append(helper.make_node("Mul", ["sm", "N"], ["probs"]))
    else:
        nodes.append(helper.make_node("Identity", ["sm"], ["probs"]))
    graph = helper.make_graph(
        nodes, f"digit-{kind}-{tag}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", out_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              doc_string=f"test model {kind} {tag}")
    model.ir_version = 8
    return model.SerializeToString()


def _add_blank_spin(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], spins: int = 3000) -> None:
    """``sm`` becomes ``sm + 0 * loop(...)``, where the loop runs ``spins`` 128x128 MatMuls if the
    frame is blank (mean below -0.4 after normalisation) and none otherwise."""
    rng = np.random.default_rng(3)
    inits += [numpy_helper.from_array((rng.standard_normal((128, 128)) * 0.05).astype(np.float32), "SpinW"),
              numpy_helper.from_array(np.ones((1, 128), np.float32), "Spin0"),
              numpy_helper.from_array(np.array(-0.4, np.float32), "Blank"),
              numpy_helper.from_array(np.array(spins, np.int64), "Spins"),
              numpy_helper.from_array(np.array(True), "True"),
              numpy_helper.from_array(np.array(0.0, np.float32), "Zero")]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "SpinW"], ["s_mm"]), helper.make_node("Tanh", ["s_mm"], ["s_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 128])])
    nodes += [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Less", ["mean", "Blank"], ["blank"]),
        helper.make_node("Cast", ["blank"], ["blank_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["blank_i", "Spins"], ["trips"]),
        helper.make_node("Loop", ["trips", "True", "Spin0"], ["spun"], body=body),
        helper.make_node("ReduceSum", ["spun"], ["spun_sum"], keepdims=0),
        helper.make_node("Mul", ["spun_sum", "Zero"], ["nothing"]),
        helper.make_node("Add", ["sm0", "nothing"], ["sm"]),
    ]
    for n in nodes:  # the softmax now feeds the Add above
        if n.op_type == "Softmax":
            n.output[0] = "sm0"


def write_pub(directory: Path, key: Ed25519PrivateKey, name: Optional[str] = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pub = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    path = directory / f"{name or 'k' + str(len(list(directory.glob('*.pub'))))}.pub"
    path.write_bytes(pub)
    return path

