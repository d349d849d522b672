"""The validation gate with real ONNX Runtime sessions on tiny models built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.control.ota.gate import GateError, GatePolicy, validate, verify_file
from agent.control.ota.keys import KeyRing, keyid_of, raw_public
from agent.control.ota.manifest import Limits, Manifest, parse_envelope, parse_manifest
from agent.inference import GoldenSet
from agent.preprocess import Preprocessor
from tests.helpers.ota import golden_set, model_bytes
from tests.helpers.ota_device import CARD
from tools.ota.package import PackageSpec, build_manifest, sign

KEY = Ed25519PrivateKey.generate()
LIMITS = Limits(8 << 20, 4096, 64 << 10, "digit-28x28")


def _policy(**kw: Any) -> GatePolicy:
    base: dict[str, Any] = {"floor_accuracy": 0.9, "deadline_ms": 20.0, "batch_max": 4,
                            "golden": GoldenSet(*golden_set()), "pre": Preprocessor(max_side=28),
                            "normalisation": CARD["normalisation"]}
    base.update(kw)
    return GatePolicy(**base)


def _package(tmp: Path, data: bytes, **spec: Any) -> tuple[Path, Manifest, bytes]:
    s = PackageSpec(job="j", version=2, card=CARD, min_accuracy=0.5, max_p99_ms=50.0)
    for k, v in spec.items():
        setattr(s, k, v)
    env = sign(build_manifest(data, s, keyid_of(raw_public(KEY.public_key()))), [KEY])
    path = tmp / "m.onnx"
    path.write_bytes(data)
    return path, parse_manifest(parse_envelope(env, 1 << 24)[0], LIMITS), env


def test_good_model_passes_loaded_and_versioned(tmp_path: Path) -> None:
    path, m, env = _package(tmp_path, model_bytes("good", tag=4))
    verify_file(path, m, env, KeyRing.of(KEY.public_key()))
    result = validate(path, m, _policy())
    assert result.model.version == 2 and result.golden.accuracy == 1.0 and result.golden.finite
    _, y = result.model.buffers(4)  # bound for every micro-batch size: ready to swap in
    result.model.run(4)
    assert y.shape == (4, 10)


def test_verify_file_catches_size_hash_keys_and_runtime(tmp_path: Path) -> None:
    path, m, env = _package(tmp_path, model_bytes("good", tag=4))
    ring = KeyRing.of(KEY.public_key())
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(GateError, match="sha256 mismatch"):
        verify_file(path, m, env, ring)
    path, m, env = _package(tmp_path, model_bytes("good", tag=4))
    with pytest.raises(GateError, match="no trusted key"):
        verify_file(path, m, env, KeyRing({}))  # e.g. the key was revoked during the download
    path, m, env = _package(tmp_path, model_bytes("good", tag=4), min_onnxruntime="99.0")
    with pytest.raises(GateError, match=r"needs onnxruntime >= 99\.0"):
        verify_file(path, m, env, ring)


@pytest.mark.parametrize("policy, spec, reason", [
    ({"deadline_ms": 0.2}, {}, "over the limit 0.200 ms"),  # device deadline tighter than the manifest
    ({}, {"max_p99_ms": 0.2}, "over the limit 0.200 ms"),  # manifest tighter than the device
])
def test_latency_limit_is_the_tighter_one(tmp_path: Path, policy: dict[str, Any], spec: dict[str, Any],
                                          reason: str) -> None:
    path, m, _ = _package(tmp_path, model_bytes("slow", tag=4, slow_layers=20), **spec)
    with pytest.raises(GateError, match=reason):
        validate(path, m, _policy(**policy))


def test_device_floor_beats_a_lax_manifest(tmp_path: Path) -> None:
    path, m, _ = _package(tmp_path, model_bytes("inaccurate", tag=4), min_accuracy=0.0)
    with pytest.raises(GateError, match=r"below the required 90\.00 %"):
        validate(path, m, _policy())


def test_io_must_match_the_manifest_and_the_pipeline(tmp_path: Path) -> None:
    data = model_bytes("good", tag=4)
    path, m, _ = _package(tmp_path, data, overrides={"requires": {
        "onnxruntime": "1.17", "opset": 13, "input": {"name": "x", "shape": [None, 1, 28, 28], "dtype": "float32"},
        "output": {"name": "probs", "shape": [None, 10], "dtype": "float32"}}})
    with pytest.raises(GateError, match="differs from the manifest"):
        validate(path, m, _policy())
    path, m, _ = _package(tmp_path, data, card={"normalisation": {"mean": 0.5, "std": 0.5}})
    with pytest.raises(GateError, match="normalisation"):
        validate(path, m, _policy())


def _package_set(tmp: Path, variants: list[tuple[str, bytes]], **spec: Any) -> tuple[Path, Manifest, bytes]:
    from tools.ota.package import bundle
    return _package(tmp, bundle(variants), variants=variants, **spec)


def test_multi_variant_job_serves_a_passing_variant_never_a_refused_one(tmp_path: Path) -> None:
    path, m, env = _package_set(tmp_path, [("int8", model_bytes("good", tag=4)),
                                           ("bad", model_bytes("inaccurate", tag=4)),
                                           ("fp32", model_bytes("good", tag=5))])
    assert [v.name for v in m.variants] == ["int8", "bad", "fp32"] and m.size == path.stat().st_size
    verify_file(path, m, env, KeyRing.of(KEY.public_key()))
    result = validate(path, m, _policy(time_s=0.01, state_dir=str(tmp_path / "state")))
    rows = {r.name: r for r in result.choice.rows}
    assert result.model.variant in ("int8", "fp32") and result.choice.how == "fastest"
    assert rows["bad"].verdict.startswith("refused: golden accuracy") and not rows["bad"].served
    assert set(result.files) == {"int8", "bad", "fp32"}
    assert result.files["fp32"].read_bytes() == model_bytes("good", tag=5)
    assert result.model.version == 2
    assert (tmp_path / "state" / "variant-choice.json").exists()  # the next start will not re-measure
    pinned = validate(path, m, _policy(pin="fp32"))
    assert (pinned.model.variant, pinned.choice.how) == ("fp32", "pinned")
    with pytest.raises(GateError, match=r"inference\.variant = 'int4': the model has no such variant"):
        validate(path, m, _policy(pin="int4"))


def test_multi_variant_job_with_no_passing_variant_is_rejected(tmp_path: Path) -> None:
    path, m, _ = _package_set(tmp_path, [("a", model_bytes("inaccurate", tag=1)), ("b", model_bytes("nan", tag=1))])
    with pytest.raises(GateError, match=r"no variant passes: a refused: golden accuracy .*; b refused: non-finite"):
        validate(path, m, _policy())


def test_variant_list_not_describing_the_file_is_rejected(tmp_path: Path) -> None:
    import hashlib
    a, b = model_bytes("good", tag=1), model_bytes("good", tag=2)
    wrong = [{"name": "a", "size": len(a), "sha256": hashlib.sha256(b).hexdigest()},
             {"name": "b", "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}]
    path, m, env = _package_set(tmp_path, [("a", a), ("b", b)], overrides={"variants": wrong})
    verify_file(path, m, env, KeyRing.of(KEY.public_key()))  # the whole file is what was signed
    with pytest.raises(GateError, match="variant a: sha256 mismatch"):
        validate(path, m, _policy())
