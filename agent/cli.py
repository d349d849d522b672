"""digit-agent: run, check-config, selftest, config-schema, version.

Exit codes: 0 fine; 1 cannot serve (model, self-test); 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from agent import __version__
from agent.config import Config, ConfigError, load_config

if TYPE_CHECKING:  # the commands import the heavy modules only when they run
    from agent.inference.choice import Choice

__all__ = ["main", "selftest_report"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    # --log-level is accepted before and after the command (``digit-agent run --log-level DEBUG``).
    # The commands' copy (a parent parser) defaults to SUPPRESS: it sets the value only when given,
    # so it never resets one given before the command. Separate actions on purpose: parents share
    # theirs, and a default set on one would leak into the other.
    def log_level(parser: argparse.ArgumentParser, default: str) -> None:
        parser.add_argument("--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                            help="logging level (default INFO)")

    common = argparse.ArgumentParser(add_help=False)
    log_level(common, argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="digit-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    log_level(p, "INFO")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        sp.add_argument("--config", "-c", default="config.toml", help="config file (default: config.toml)")
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key (repeatable); also DIGIT_AGENT__SECTION__KEY=VALUE")
        return sp

    with_config("run", "run the daemon: read frames, infer, publish over MQTT")
    with_config("check-config", "validate a config file; exit 0 if valid, 2 if not")
    with_config("selftest", "load the model, run the golden set, print accuracy and latency")
    sub.add_parser("config-schema", help="print the JSON Schema of config.toml (for editors: Taplo, Even Better TOML)",
                   description="print the JSON Schema of config.toml (for editors: Taplo, Even Better TOML)",
                   parents=[common])
    sub.add_parser("version", help="print the version", description="print the version", parents=[common])
    return p


def _load(args: argparse.Namespace) -> Optional[Config]:
    try:
        return load_config(args.config, args.set)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return None


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from agent.service.logsetup import setup_logging

    setup_logging(args.log_level)
    if args.command == "version":
        print(f"digit-agent {__version__}")
        return EXIT_OK
    if args.command == "config-schema":
        from agent.config.jsonschema import schema_text

        sys.stdout.write(schema_text())
        return EXIT_OK
    cfg = _load(args)
    if cfg is None:
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: valid")
        return EXIT_OK
    if args.command == "selftest":
        return _selftest(cfg)
    return _run(cfg)


def _selftest(cfg: Config) -> int:
    from agent.daemon import StartupError, load_serving_model
    from agent.inference import ModelError

    try:
        model, _, choice = load_serving_model(cfg, Path(cfg.inference.model))
    except (ModelError, StartupError) as exc:
        print(f"selftest FAILED: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(choice.table())
    print("\n".join(selftest_report(model.path.name, model.version, choice, cfg)))
    return EXIT_OK


def selftest_report(name: str, version: int, choice: Choice, cfg: Config) -> list[str]:
    """What ``selftest`` prints under the variant table when it passes: the verdict, the rule it
    applied, and why a p99 over the deadline does not fail it."""
    inf = cfg.inference
    lines = [f"selftest passed: model {name} version {version}, variant {choice.model.variant}",
             f"  the rule: golden accuracy ≥ inference.selftest_min_accuracy ({inf.selftest_min_accuracy * 100:.1f} %) "
             "and finite outputs; latency is reported, not gated"]
    p99 = next((r.p99_us for r in choice.rows if r.served and r.p99_us is not None), None)
    if p99 is not None and p99 / 1000.0 > inf.deadline_ms:
        # Wall time of single runs: on a busy machine it includes the moments this process was not
        # scheduled, so it gates nothing here; the OTA gate measures CPU time, health counts misses.
        lines.append(f"  p99 {p99 / 1000.0:.3f} ms is over inference.deadline_ms ({inf.deadline_ms:g} ms): "
                     "wall time, which on a busy machine includes time the process was not running; a new "
                     "model's latency is gated on CPU time by the OTA gate, and live misses are counted in "
                     "health (inference.deadline_misses)")
    return lines


def _run(cfg: Config) -> int:
    from agent.daemon import Daemon, StartupError
    from agent.inference import ModelError

    # First line at once: start-up (imports, model load, self-test) can take a while on a busy core.
    log.info("digit-agent %s starting with %s", __version__, cfg.source_file or "the defaults")
    try:
        return Daemon(cfg).run()
    except (ModelError, StartupError, ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAIL
