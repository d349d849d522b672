"""Logging for the entry point: journald-friendly under systemd, timestamped otherwise.

When stderr *is* the journal stream (``$JOURNAL_STREAM`` names its device:inode, see
systemd.exec(5)) every line gets a ``<N>`` syslog priority prefix and no timestamp of our own
(journald stamps each entry). Every line of a multi-line record (tracebacks) carries the prefix,
so a traceback stays at error priority instead of becoming a run of info lines.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Optional, TextIO

__all__ = ["JournalFormatter", "setup_logging", "stderr_is_journal", "syslog_priority"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JOURNAL_FORMAT = "%(name)s: %(message)s"
_OURS = "_digit_agent_handler"  # marks the handler we installed, so a second call replaces it


def syslog_priority(levelno: int) -> int:
    """syslog priority for a logging level: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, DEBUG 7."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message``, with the prefix repeated on every line of the record."""

    def __init__(self) -> None:
        super().__init__(_JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def stderr_is_journal(stream: Optional[TextIO] = None, environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        # No real file descriptor (captured stream) or a malformed variable: not the journal.
        return False


def setup_logging(level: str) -> None:
    """Configure the root logger once for the process; calling again replaces our handler.

    Raises ValueError for an unknown level name."""
    name = level.strip().upper()
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(_LEVELS).lower()}")
    handler = logging.StreamHandler(sys.stderr)
    formatter = JournalFormatter() if stderr_is_journal() else logging.Formatter(_PLAIN_FORMAT)
    handler.setFormatter(formatter)
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(name)
    logging.captureWarnings(True)
