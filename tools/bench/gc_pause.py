"""How long CPython's full collection holds the GIL with the daemon's modules loaded, before and
after ``gc.freeze()`` (which the daemon calls once it is built: agent/daemon.py).

    python -m tools.bench.gc_pause               # prints one line; docs/benchmarks.md quotes it
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

__all__ = ["main"]


def _full_collections_ms(n: int = 7) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    import agent.daemon  # noqa: F401  (what the daemon imports: onnxruntime, numpy, paho, …)

    objects = len(gc.get_objects())
    before = _full_collections_ms()
    gc.freeze()
    after = _full_collections_ms()
    print(f"{objects} tracked objects; full collection: median {statistics.median(before):.2f} ms, "
          f"max {max(before):.2f} ms; frozen: median {statistics.median(after) * 1e3:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
