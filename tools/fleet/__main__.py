"""python -m tools.fleet status|rollout|simulate — see docs/fleet.md."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional

__all__ = ["main"]


def main(argv: Optional[list[str]] = None) -> int:
    from tools.fleet import rollout, simulate, status

    p = argparse.ArgumentParser(prog="python -m tools.fleet", description=__doc__)
    p.add_argument("--log-level", default="WARNING")
    sub = p.add_subparsers(dest="cmd", required=True)
    status.add_args(sub.add_parser("status", help="live fleet table or JSON snapshot"))
    rollout.add_args(sub.add_parser("rollout", help="staged, resumable rollout of a signed model"))
    simulate.add_args(sub.add_parser("simulate", help="N real agents + one broker + a staged rollout"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runners: dict[str, Callable[[argparse.Namespace], int]] = {
        "status": status.run, "rollout": rollout.run, "simulate": simulate.run}
    return runners[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
