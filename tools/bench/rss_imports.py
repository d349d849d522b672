"""Where the daemon's resident memory comes from: peak RSS after each import, then one session.

    python -m tools.bench.rss_imports            # prints one line; docs/benchmarks.md quotes it
"""

from __future__ import annotations

import importlib
import resource
import sys
from pathlib import Path

__all__ = ["main"]

_STEPS = (("numpy", ("numpy",)), ("onnxruntime", ("onnxruntime",)),
          ("paho/psutil", ("paho.mqtt.client", "psutil")),
          ("cryptography", ("cryptography.hazmat.primitives.asymmetric.ed25519",)),
          ("agent", ("agent.daemon",)))


def _mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    out = [f"python {_mb():.1f}"]
    for name, modules in _STEPS:
        for m in modules:
            importlib.import_module(m)
        out.append(f"+{name} {_mb():.1f}")
    import onnxruntime as ort

    model = Path(__file__).resolve().parents[2] / "models" / "digit.int8.onnx"
    _session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out.append(f"+session {_mb():.1f}")
    print("peak RSS, MB: " + ", ".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
