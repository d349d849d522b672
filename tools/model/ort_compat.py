"""Operator-support check: run the golden set under another onnxruntime version in a throw-away venv.

    python -m tools.model.ort_compat --ort 1.16.3 [--model models/digit.int8.onnx --golden models/golden.npz]

The venv gets only ``onnxruntime==VERSION`` and numpy from the package index pip is configured
with; the repository root is put on PYTHONPATH so the child imports ``agent.preprocess`` (pure
numpy) and feeds the model exactly as the daemon does. Pass = the session loads, runs every golden
image and its predictions agree with this environment's onnxruntime on >= 99 % of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import venv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CompatResult", "check_version", "golden_predictions", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
_MIN_AGREEMENT = 0.99


@dataclass
class CompatResult:
    version: str
    passed: bool
    accuracy: float
    agreement: float
    detail: str


def golden_predictions(model: Path, golden: Path) -> dict[str, object]:
    """Daemon path on the golden set: uint8 -> Preprocessor -> session; micro-batches of 4.

    Imports are local: this also runs inside the throw-away venv (child mode), which has only
    numpy + the onnxruntime under test, and ``agent.preprocess`` from the repository.
    """
    import onnxruntime as ort

    from agent.preprocess import Preprocessor

    with np.load(golden) as g:
        images, labels = g["images"], g["labels"]
    x = np.empty((len(images), 1, 28, 28), np.float32)
    Preprocessor(max_side=28).batch(images, x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["probs"], {"input": x[i : i + 4]})[0].argmax(1) for i in range(0, len(x), 4)])
    return {
        "ort": ort.__version__,
        "numpy": np.__version__,
        "pred": pred.tolist(),
        "acc": float((pred == labels).mean()),
        "labels": labels.tolist(),
    }


def _make_venv(path: Path, version: str) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    py = path / "bin" / "python"
    numpy_spec = "numpy<2" if tuple(int(p) for p in version.split(".")[:2]) < (1, 19) else "numpy"
    cmd = [
        str(py),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        f"onnxruntime=={version}",
        numpy_spec,
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return py


def check_version(version: str, model: Path, golden: Path) -> CompatResult:
    """Create a venv with onnxruntime==version, run the golden set there, compare with this env."""
    reference = golden_predictions(model, golden)
    ref, labels = np.asarray(reference["pred"]), np.asarray(reference["labels"])
    with tempfile.TemporaryDirectory(prefix=f"ort-{version}-") as tmp:
        try:
            py = _make_venv(Path(tmp) / "venv", version)
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            child = [
                str(py),
                "-m",
                "tools.model.ort_compat",
                "--child",
                "--ort",
                version,
                "--model",
                str(model.resolve()),
                "--golden",
                str(golden.resolve()),
            ]
            proc = subprocess.run(child, cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False)
        except subprocess.CalledProcessError as exc:
            return CompatResult(version, False, 0.0, 0.0, f"install failed: {exc.stderr.strip()[-300:]}")
        if proc.returncode != 0:
            return CompatResult(version, False, 0.0, 0.0, f"run failed: {proc.stderr.strip()[-300:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    pred = np.asarray(out["pred"])
    agreement = float((pred == ref).mean())
    acc = float((pred == labels).mean())
    result = CompatResult(version, agreement >= _MIN_AGREEMENT, acc, agreement, f"numpy {out['numpy']}")
    log.info("onnxruntime %s: %s", version, result)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ort", required=True, help="onnxruntime version(s), comma separated")
    p.add_argument("--model", type=Path, default=REPO / "models" / "digit.int8.onnx")
    p.add_argument("--golden", type=Path, default=REPO / "models" / "golden.npz")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # inside the throw-away venv: report raw predictions as JSON
        print(json.dumps(golden_predictions(args.model, args.golden)))
        return 0
    ok = True
    for version in args.ort.split(","):
        r = check_version(version.strip(), args.model, args.golden)
        status = "PASS" if r.passed else "FAIL"
        print(f"onnxruntime {r.version}: {status} acc={r.accuracy:.4f} agreement={r.agreement:.4f} ({r.detail})")
        ok &= r.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
