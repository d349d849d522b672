"""tools.progress: a line on a terminal (tqdm's bar when installed), INFO log lines otherwise."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from tools.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_logs_and_prints_nothing(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="progress")
    p = Progress("soak", total=200, unit="frames", stream=out, log_every_s=0.0)
    p.set(50, note="RSS 40.0 MiB")
    p.set(100)
    p.close()
    assert out.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("soak: 50/200 frames (25%), ") and lines[0].endswith(" — RSS 40.0 MiB")
    assert "~" in lines[0] and "s left" in lines[0]
    assert lines[1].startswith("soak: 100/200 frames (50%)")
    assert lines[-1].endswith("(end)")


def test_not_a_terminal_is_silent_between_intervals(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="progress")
    with Progress("x", total=10, stream=io.StringIO(), log_every_s=3600.0) as p:
        for _ in range(10):
            p.update()
    assert p.done == 10
    assert caplog.records == []


def test_terminal_without_tqdm_rewrites_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    out = _Tty()
    with Progress("rollout stage 1/3", total=4, unit="devices settled", stream=out, line_every_s=0.0) as p:
        p.set(1, note="1 committed, 0 failed")
        p.set(4, note="3 committed, 1 failed")
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 3 and text.endswith("\n")
    assert "rollout stage 1/3: 1/4 devices settled (25%)" in text
    assert text.rstrip().split("\r\x1b[K")[-1].startswith("rollout stage 1/3: 4/4 devices settled (100%)")
    assert text.rstrip().endswith("— 3 committed, 1 failed")


def test_terminal_with_tqdm_draws_a_bar() -> None:
    pytest.importorskip("tqdm")
    out = _Tty()
    with Progress("e2e flat out", total=1000, unit="results", stream=out) as p:
        p.set(500)
        p.set(1000)
    assert "e2e flat out" in out.getvalue() and "1.00k/1.00k" in out.getvalue()


def test_unknown_total_counts_without_percent() -> None:
    p = Progress("agents", stream=io.StringIO())
    p.set(7)
    assert p.line().startswith("agents: 7, ") and "%" not in p.line()
