"""digit-agent-fleet status | rollout | retire | simulate — see docs/fleet.md.

(pip install "digit-agent[operator]"; from a checkout python -m tools.fleet is the same command.)
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional

from ..clihelp import HelpFormatter, prog

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand's ``run`` is its ``func`` default."""
    from . import retire, rollout, simulate, status

    p = argparse.ArgumentParser(prog=prog("tools.fleet"), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--log-level", default="WARNING", help="log level (DEBUG, INFO, WARNING, ERROR)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    commands = {
        "status": (status, "live fleet table or JSON snapshot"),
        "rollout": (rollout, "staged, resumable rollout of a signed model"),
        "retire": (retire, "remove a decommissioned device's retained messages and Home Assistant entities"),
        "simulate": (simulate, "N real agents + one broker + a staged rollout (needs a source checkout)"),
    }
    for name, (module, help_) in commands.items():
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        module.add_args(sp)
        sp.set_defaults(func=module.run)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.func
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
