"""Shared argparse set-up for the operator's commands: every option's help shows its default.

The commands run both installed (``digit-agent-ota``, ``digit-agent-fleet``) and from a checkout
(``python -m tools.ota``); :func:`prog` names them the way they were started.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["HelpFormatter", "prog"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to each option's help; module docstrings keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # "(default: )" says nothing for an empty string or a switch that is off.
        if action.default in ("", None, False) or (isinstance(action.default, list) and not action.default):
            return text
        return super()._get_help_string(action) or text


def prog(module: str) -> str:
    """``python -m tools.ota`` when run as a module, else the console script's name."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"python -m {module}" if name in ("", "__main__.py", "-c") else name
