"""setup_logging: journald priority prefixes when stderr is the journal stream, timestamps otherwise.

A real child process writes to a real file whose device:inode is (or is not) named in JOURNAL_STREAM,
exactly as systemd would set it up.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from agent.service.logsetup import JournalFormatter, setup_logging, stderr_is_journal, syslog_priority

REPO = Path(__file__).resolve().parents[2]
_CHILD = """
import logging, sys
from agent.service.logsetup import setup_logging
setup_logging(sys.argv[1])
setup_logging(sys.argv[1])  # twice: still one handler
log = logging.getLogger("agent.test")
log.debug("dbg")
log.info("hello")
log.warning("careful")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
"""


def _run_child(tmp_path: Path, level: str, journal: Optional[str]) -> list[str]:
    out = tmp_path / "stderr.log"
    with out.open("wb") as f:
        st = os.fstat(f.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal == "match":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        subprocess.run([sys.executable, "-c", _CHILD, level], stderr=f, env=env, cwd=REPO,
                       check=True, timeout=60)
    return out.read_text().splitlines()


def test_journal_stream_gets_priority_prefixes_on_every_line(tmp_path: Path) -> None:
    lines = _run_child(tmp_path, "info", "match")
    assert lines[0] == "<6>agent.test: hello"
    assert lines[1] == "<4>agent.test: careful"
    assert lines[2] == "<3>agent.test: failed"
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines[2:]), lines  # the traceback stays at error
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"
    assert not any("dbg" in line for line in lines)


@pytest.mark.parametrize("journal", [None, "1:2", "garbage"])
def test_otherwise_plain_lines_with_time(tmp_path: Path, journal: Optional[str]) -> None:
    """No JOURNAL_STREAM, or one naming another file (stderr redirected by hand): plain format."""
    lines = _run_child(tmp_path, "DEBUG", journal)
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.match(stamp + r"DEBUG   agent\.test: dbg$", lines[0]), lines[0]
    assert re.match(stamp + r"INFO    agent\.test: hello$", lines[1]), lines[1]
    assert not any(line.startswith("<") for line in lines)
    assert len([line for line in lines if "hello" in line]) == 1  # one handler after two calls


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud")


def test_priorities_and_formatter() -> None:
    assert [syslog_priority(n) for n in (5, 10, 20, 30, 40, 50, 60)] == [7, 7, 6, 4, 3, 2, 2]
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", None, None)
    assert JournalFormatter().format(rec) == "<3>x: a\n<3>b"


def test_stream_without_descriptor_is_not_the_journal() -> None:
    import io

    assert not stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
