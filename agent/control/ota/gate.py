"""The validation gate: everything a downloaded model must pass before it may serve.

Runs on the OTA worker thread with a one-thread ONNX Runtime session, so the inference thread keeps
serving the old model meanwhile. The model it returns is loaded, bound and warmed up, so the swap
itself costs the inference thread one pointer exchange.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

from agent.control.ota.keys import KeyRing
from agent.control.ota.manifest import Manifest, ManifestError, TensorSpec, parse_envelope, verify_signatures
from agent.control.ota.store import file_sha256
from agent.inference import GoldenResult, GoldenSet, LoadedModel, evaluate_golden
from agent.inference.choice import AUTO, Choice, NoVariant, Refused
from agent.inference.serving import Judge, choose_variant, timing_frame
from agent.inference.variants import ModelSet, Variant, variant_card, variant_name
from agent.preprocess import Preprocessor

__all__ = ["GateError", "GatePolicy", "GateResult", "split_variants", "validate", "verify_file"]

_log = logging.getLogger(__name__)
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)",
              "int8": "tensor(int8)"}


class GateError(Exception):
    """The model must not serve; ``str(exc)`` is the reason reported on the status topic."""


@dataclass(frozen=True)
class GatePolicy:
    """The device's side of the gate (from the config and the model serving now)."""

    floor_accuracy: float  # ota.min_accuracy
    deadline_ms: float  # inference.deadline_ms
    batch_max: int  # what the inference loop will hand the new model
    golden: GoldenSet
    pre: Preprocessor  # the pipeline's preprocessing: the new model is judged on what it will see
    normalisation: Optional[object] = None  # the serving card's; the pipeline cannot change it live
    pin: str = AUTO  # inference.variant
    time_s: float = 1.0  # inference.variant_time_s
    state_dir: str = ""  # where the variant choice is cached ("" = not cached)


@dataclass(frozen=True)
class GateResult:
    model: LoadedModel  # the variant chosen to serve
    golden: GoldenResult  # its golden-set result
    choice: Choice  # every variant's verdict and timing
    files: dict[str, Path]  # a multi-variant job's files, by variant name ({} for one file)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])


def _check_io(model: LoadedModel, m: Manifest) -> None:
    """The graph must be what the signed manifest announced (names, shapes, dtypes)."""
    for spec, meta in ((m.input, model.session.get_inputs()[0]), (m.output, model.session.get_outputs()[0])):
        actual = tuple(d if isinstance(d, int) else None for d in meta.shape)
        if (spec.name, spec.shape, _ORT_TYPES.get(spec.dtype)) != (meta.name, actual, meta.type):
            raise GateError(f"model I/O differs from the manifest: {meta.name} {list(meta.shape)} {meta.type}"
                            f" vs announced {_describe(spec)}")


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name} {list(spec.shape)} {spec.dtype}"


def verify_file(path: Path, m: Manifest, envelope: bytes, keys: KeyRing) -> None:
    """The "verifying" step: whole-file size + sha256, the signature again, the runtime version."""
    if path.stat().st_size != m.size or file_sha256(path) != m.sha256:
        raise GateError("sha256 mismatch: the assembled file is not the signed model")
    try:  # again: the trusted keys may have changed (revocation) since the download began
        body, sigs = parse_envelope(envelope, len(envelope))
        verify_signatures(body, sigs, keys)
    except ManifestError as exc:
        raise GateError(str(exc)) from None
    if _version_tuple(ort.__version__) < _version_tuple(m.min_onnxruntime):
        raise GateError(f"needs onnxruntime >= {m.min_onnxruntime}, device has {ort.__version__}")


def split_variants(path: Path, m: Manifest) -> dict[str, Path]:
    """A multi-variant download cut into one file per variant beside it (each checked against its
    sha256 in the signed manifest); ``{}`` for a one-file job. Call :func:`verify_file` first."""
    out: dict[str, Path] = {}
    if not m.variants:
        return out
    with open(path, "rb") as f:
        for v in m.variants:
            f.seek(v.offset)
            data = f.read(v.size)
            if len(data) != v.size or hashlib.sha256(data).hexdigest() != v.sha256:
                raise GateError(f"variant {v.name}: sha256 mismatch (the manifest's variant list does not "
                                f"describe its file)")
            dest = path.with_name(f"{path.stem}.v-{v.name}.onnx")
            dest.write_bytes(data)
            out[v.name] = dest
    return out


def _model_set(path: Path, m: Manifest, files: dict[str, Path], card: dict[str, Any]) -> ModelSet:
    if not files:
        one: dict[str, Any] = {"name": variant_name(card, path), "file": path.name}
        return ModelSet(path, card, (Variant(one["name"], path, m.sha256, variant_card(card, one)),))
    meta = {e.get("name"): e for e in card.get("variants", []) if isinstance(e, dict)}
    variants = []
    for v in m.variants:
        entry: dict[str, Any] = {**meta.get(v.name, {}), "name": v.name, "file": files[v.name].name, "sha256": v.sha256,
                 "size_bytes": v.size}
        variants.append(Variant(v.name, files[v.name], v.sha256, variant_card(card, entry)))
    return ModelSet(path, card, tuple(variants))


def _judge(m: Manifest, policy: GatePolicy, results: dict[int, GoldenResult]) -> Judge:
    def judge(model: LoadedModel) -> GoldenResult:
        try:
            result = _check(model, m, policy)
        except GateError as exc:
            raise Refused(str(exc)) from None
        results[id(model)] = result
        return result
    return judge


def validate(path: Path, m: Manifest, policy: GatePolicy, card: Optional[dict[str, Any]] = None,
             stop: Optional[threading.Event] = None) -> GateResult:
    """The "validating" step for every variant (ORT load, I/O signature, finite outputs, accuracy, p99
    latency), then the choice among those that pass: the fastest on this CPU, or the pinned one.
    Call :func:`verify_file` first."""
    card = dict(card or m.card)
    files = split_variants(path, m)
    models = _model_set(path, m, files, card)
    results: dict[int, GoldenResult] = {}
    try:
        choice = choose_variant(models, _judge(m, policy, results), timing_frame(policy.golden, policy.pre),
                                policy.batch_max, policy.pin, policy.time_s, policy.state_dir,
                                version=m.version, stop=stop)
    except NoVariant as exc:
        if len(models.variants) == 1 and exc.reasons:  # one file: its own reason, as before variants
            raise GateError(next(iter(exc.reasons.values()))) from None
        raise GateError(str(exc)) from None
    return GateResult(choice.model, results[id(choice.model)], choice, files)


def _check(model: LoadedModel, m: Manifest, policy: GatePolicy) -> GoldenResult:
    _check_io(model, m)
    norm = model.card.get("normalisation")
    if policy.normalisation is not None and norm is not None and norm != policy.normalisation:
        raise GateError(f"model card normalisation {norm} differs from the pipeline's {policy.normalisation}")
    if model.batch_max < policy.batch_max:
        raise GateError(f"model has a fixed batch of {model.batch_max}; the pipeline runs up to "
                        f"{policy.batch_max}")
    result = evaluate_golden(model, policy.golden, policy.pre)
    if not result.finite:
        raise GateError("non-finite outputs (NaN/Inf) on the golden set")
    need = max(m.min_accuracy, policy.floor_accuracy)
    if result.accuracy < need:
        raise GateError(f"golden accuracy {result.accuracy * 100:.2f} % below the required {need * 100:.2f} %")
    limit_ms = min(m.max_p99_ms, policy.deadline_ms)
    if result.p99_us / 1000.0 > limit_ms:
        # Wall time also counts the moments this (niced) thread was preempted by the inference thread
        # and everything else; the model's own cost is the CPU time of the thread running it.
        cpu_ms = _cpu_p99_us(model, policy) / 1000.0
        if cpu_ms > limit_ms:
            raise GateError(f"p99 latency {cpu_ms:.3f} ms (CPU; {result.p99_us / 1000.0:.3f} ms wall) over "
                            f"the limit {limit_ms:.3f} ms")
        _log.warning("OTA gate: wall p99 %.3f ms over %.3f ms but CPU p99 %.3f ms within: the device is "
                     "loaded, not the model slow; the test window will judge it live",
                     result.p99_us / 1000.0, limit_ms, cpu_ms)
    return result


def _cpu_p99_us(model: LoadedModel, policy: GatePolicy) -> float:
    """p99 of single-sample runs in thread CPU time (one intra-op thread: ORT computes on this one)."""
    x, _ = model.buffers(1)
    times = np.empty(len(policy.golden.images), dtype=np.float64)
    for k, img in enumerate(policy.golden.images):
        policy.pre(img, x[0])
        t0 = time.thread_time_ns()
        model.run(1)
        times[k] = (time.thread_time_ns() - t0) / 1000.0
    return float(np.percentile(times, 99))
