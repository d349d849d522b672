"""Benchmarks: the model accuracy/latency/memory frontier and the daemon's end-to-end figures.

    python -m tools.bench            # full (trains and caches the frontier models; ~30 min)
    python -m tools.bench --quick    # smoke run (shipped model only, short daemon runs; <= 3 min)
"""

__all__: list[str] = []
