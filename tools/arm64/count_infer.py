"""N batch-1 inferences of one model through the daemon's own session and run path, nothing else.

    python -m tools.arm64.count_infer MODEL GOLDEN N

Run under an instruction counter (the QEMU plugin on arm64, callgrind on x86-64) once with N = 0 and
once with a large N: the difference divided by N is the instructions of one inference as the daemon
makes it (preprocessed frame in the bound input, ``LoadedModel.run(1)``), start-up and loading netted
out. Prints the predicted digit so a broken run cannot pass for a fast one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from agent.inference import LoadedModel, load_golden
from agent.inference.variants import card_for_file
from agent.preprocess import Preprocessor

__all__ = ["main"]


def main(argv: list[str]) -> int:
    model_path, golden_path, n = argv[0], argv[1], int(argv[2])
    model = LoadedModel.load(model_path, batch_max=1, card=card_for_file(Path(model_path)) or None)
    golden = load_golden(golden_path)
    x, y = model.buffers(1)
    Preprocessor.from_card(model.card)(golden.images[0], x[0])
    for _ in range(n):
        model.run(1)
    print(f"runs {n} digit {int(np.argmax(y[0])) if n else -1} label {int(golden.labels[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
