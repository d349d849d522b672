"""Operator side: Ed25519 key files, and packaging + signing a model into an OTA envelope.

Private keys are PKCS#8 PEM files written with mode 0600; loading one that group or others can read
is refused (as ssh does), and none of them belongs in the repository.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.control.ota.keys import keyid_of, raw_public
from agent.control.ota.manifest import FORMAT, Signature, encode_envelope

__all__ = ["PackageSpec", "Payload", "build_manifest", "bundle", "generate_key", "load_payload", "load_private_key",
           "model_io", "sign"]

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8"}


def generate_key(private_path: Path) -> tuple[str, Path]:
    """Write a new private key (0600, refusing to overwrite) and ``<name>.pub``; returns (keyid, pub path)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key()
    pub_path = private_path.with_suffix(".pub")
    pub_path.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return keyid_of(raw_public(pub)), pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path}: private key is readable by others (mode {oct(mode & 0o777)}); "
                              f"chmod 600 it")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def model_io(model: bytes) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(input spec, output spec, highest default-domain opset) read from the model itself."""
    import onnxruntime as ort  # here, not at import: keygen/push/watch do not need it

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    specs = []
    for t in (sess.get_inputs()[0], sess.get_outputs()[0]):
        shape = [d if isinstance(d, int) else None for d in t.shape]
        specs.append({"name": t.name, "shape": shape, "dtype": _ORT_DTYPES.get(t.type, "float32")})
    return specs[0], specs[1], _opset(model)


def _opset(model: bytes) -> int:
    try:
        import onnx
    except ImportError:  # onnx is optional on the operator's machine
        return 13
    m = onnx.load_from_string(model)
    return max([int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")] or [13])


@dataclass
class PackageSpec:
    job: str
    version: int
    family: str = "digit-28x28"
    chunk_size: int = 16 * 1024
    min_accuracy: float = 0.98
    max_p99_ms: float = 5.0
    ttl_s: int = 7 * 86400
    min_onnxruntime: str = "1.17"
    card: dict[str, Any] = field(default_factory=dict)
    keys_add: list[dict[str, str]] = field(default_factory=list)
    keys_revoke: list[str] = field(default_factory=list)
    created: Optional[int] = None
    overrides: dict[str, Any] = field(default_factory=dict)  # tests: replace any top-level field
    variants: list[tuple[str, bytes]] = field(default_factory=list)  # (name, model bytes); empty = one file


def bundle(variants: list[tuple[str, bytes]]) -> bytes:
    """What a multi-variant job transfers: the variants' bytes back to back, in the manifest's order."""
    return b"".join(data for _, data in variants)


@dataclass
class Payload:
    """What ``--model`` names: one ``.onnx`` file, or a model card whose ``variants`` list the files."""

    data: bytes  # the bytes transferred (one model, or the variants' bundle)
    variants: list[tuple[str, bytes]]  # empty for one file
    card: dict[str, Any]


def load_payload(path: Path) -> Payload:
    """Read ``--model``: a card (``.json``) with ``variants`` (files beside it, sha256-checked) or an ONNX file."""
    if path.suffix != ".json":
        return Payload(path.read_bytes(), [], {})
    card = json.loads(path.read_text(encoding="utf-8"))
    entries = card.get("variants") if isinstance(card, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a model card given as --model must list its variants")
    variants = []
    for i, e in enumerate(entries):
        data = (path.parent / str(e.get("file"))).read_bytes()
        if e.get("sha256") and hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise ValueError(f"{path}: variants[{i}] ({e.get('name')}): {e.get('file')} does not match its sha256")
        variants.append((str(e.get("name")), data))
    return Payload(bundle(variants), variants, card)


def build_manifest(model: bytes, spec: PackageSpec, keyid: str) -> bytes:
    """The exact manifest bytes that get signed."""
    inp: dict[str, Any] = {}
    out: dict[str, Any] = {}
    opset = 0
    if spec.variants and model != bundle(spec.variants):
        raise ValueError("model must be bundle(spec.variants) for a multi-variant job")
    if spec.card.get("family", spec.family) != spec.family:  # the device refuses such a manifest
        raise ValueError(f"the model card's family {spec.card['family']!r} differs from --family {spec.family!r}")
    if "requires" not in spec.overrides:  # (tests replace it for a model onnxruntime cannot open)
        inp, out, opset = model_io(spec.variants[0][1] if spec.variants else model)
    created = int(time.time()) if spec.created is None else spec.created
    chunks = [hashlib.sha256(model[i:i + spec.chunk_size]).hexdigest()
              for i in range(0, len(model), spec.chunk_size)]
    assert len(chunks) == math.ceil(len(model) / spec.chunk_size)
    doc: dict[str, Any] = {
        "format": FORMAT, "job": spec.job, "version": spec.version, "family": spec.family,
        "requires": {"onnxruntime": spec.min_onnxruntime, "opset": opset, "input": inp, "output": out},
        "file": {"size": len(model), "sha256": hashlib.sha256(model).hexdigest()},
        "chunks": {"size": spec.chunk_size, "sha256": chunks},
        "gate": {"min_accuracy": spec.min_accuracy, "max_p99_ms": spec.max_p99_ms},
        "created": created, "expires": created + spec.ttl_s, "keyid": keyid,
        "card": {**spec.card, "version": spec.version},
    }
    if spec.variants:
        doc["variants"] = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                           for n, d in spec.variants]
    if spec.keys_add:
        doc["keys_add"] = spec.keys_add
    if spec.keys_revoke:
        doc["keys_revoke"] = spec.keys_revoke
    doc.update(spec.overrides)
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def sign(manifest: bytes, keys: list[Ed25519PrivateKey]) -> bytes:
    """Envelope with one detached signature per key, over the exact manifest bytes."""
    sigs = [Signature(keyid_of(raw_public(k.public_key())), k.sign(manifest)) for k in keys]
    return encode_envelope(manifest, sigs)
