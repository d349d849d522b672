"""tools/arm64/replay_check.verify: what the arm64 replay accepts as right answers."""

from __future__ import annotations

import numpy as np

from tools.arm64.replay_check import verify

LABELS = np.array([3, 1, 4, 1, 5])
HOST = np.array([[3, 1, 4, 7, 5], [3, 1, 4, 1, 5]])  # variant 0 gets frame 3 wrong (says 7)


def _results(digits: list[int], start: int = 0) -> list[dict[str, int]]:
    return [{"frame_seq": start + i, "digit": d} for i, d in enumerate(digits)]


def test_every_label_right_passes_across_the_loop() -> None:
    assert verify(_results([3, 1, 4, 1, 5, 3, 1]), 7, LABELS, HOST) == []


def test_the_hosts_own_wrong_answer_is_accepted_another_is_not() -> None:
    assert verify(_results([3, 1, 4, 7, 5]), 5, LABELS, HOST) == []
    problems = verify(_results([3, 1, 4, 2, 5]), 5, LABELS, HOST)
    assert any("frame_seq 3: digit 2" in p for p in problems) and "1 of 5 results wrong" in problems


def test_missing_and_duplicate_results_fail() -> None:
    assert "4 results for 5 frames" in verify(_results([3, 1, 4, 1]), 5, LABELS, HOST)
    dup = [*_results([3, 1, 4, 1]), {"frame_seq": 0, "digit": 3}]
    assert "duplicate frame_seq values" in verify(dup, 5, LABELS, HOST)
