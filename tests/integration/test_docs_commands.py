"""Every shell command shown in README.md, docs/*.md and the tools' --help texts works as written
with the shipped files.

Commands come from fenced blocks tagged ``sh`` (every fenced block must carry a language tag, so a
command cannot hide in an untagged one; output and diagrams are ``text``) and from the indented
example lines of the --help texts. Each simple command (pipelines, ``&&``, ``;`` and ``&`` split) is:

* run for real when that is cheap and has no side effect here (RUN_HERE: check-config, selftest,
  version, --help);
* checked without running otherwise: ``digit-agent run ...`` is validated by ``check-config`` with the
  same config and ``--set`` overrides; ``python -m tools.X ...`` is parsed by the tool's own argument
  parser and stops there (required options, choices, types); ``make T`` is ``make -n T``;
* or, when it needs a Raspberry Pi, systemd as PID 1, a camera or root on the device (NEEDS_DEVICE),
  only checked for the repository files and the script options it names.

A program that is in none of these lists fails the test: a new kind of command must be classified.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_TAGS = {"sh", "bash", "shell", "console"}

# The modules whose --help shows example commands, and whose --help must read as plain text.
HELP_MODULES = ["agent", "tools.demo", "tools.canvas_stream", "tools.frame_sender", "tools.minibroker",
                "tools.ota", "tools.fleet", "tools.soak", "tools.bench"]

# What needs the device and cannot run here, and why.
NEEDS_DEVICE = {
    "sudo": "root on the device (the command after it is checked as well)",
    "systemctl": "systemd as PID 1 with the unit installed",
    "journalctl": "the installed unit's journal",
    "systemd-tmpfiles": "writes /run and /etc on the device",
    "rpicam-vid": "a Raspberry Pi camera",
    "nano": "an editor, interactive",
    "apt-get": "root and the distribution's package index",
    "cp": "copies into /etc on the device",
    "install": "installs into /etc on the device",
    "mkdir": "creates /etc directories on the device",
    "mkfifo": "the FIFO the camera pipeline on the device uses",
    "tools/install.sh": "installs into /opt and /etc and starts the unit (tests/integration/test_install.py "
                        "runs it with --prefix)",
}
# ffmpeg reading /dev/video0 needs the USB camera; ffmpeg itself is checked to be installable only.
DEVICE_ARGS = {"/dev/video0": "a USB camera"}
# Console scripts of the operator extra (pyproject [project.scripts]) and the module each runs.
OPERATOR_COMMANDS = {"digit-agent-ota": "tools.ota", "digit-agent-fleet": "tools.fleet"}
# Read-only or cheap commands that are really run (others are dry-run).
RUN_HERE = {("digit-agent", "check-config"), ("digit-agent", "selftest"), ("digit-agent", "version")}
# Options whose value the command writes (not checked to exist in the repository).
OUTPUT_OPTIONS = {"--out", "-o", "--work", "--state", "--docs"}
# Device paths → the shipped file they are installed from (tools/install.sh).
DEVICE_PATHS = {"/etc/digit-agent/config.toml": "systemd/config.example.toml",
                "/opt/digit-agent/venv/bin/digit-agent": "digit-agent"}

# Stops at the first successful parse_args: the tool's own parser validates the command, nothing runs.
DRY_RUN = """
import argparse, runpy, sys
_parse = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    _parse(self, args, namespace)
    print("parsed", file=sys.stderr)
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_args
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Command:
    where: str  # file:line or "python -m X --help"
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def _fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line of the opening fence, tag, text) of every fenced block."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^ *(`{3,})(\S*)", lines[i])
        if m:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(m.group(1)))
            blocks.append((i + 1, m.group(2), "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def _split(text: str, where: str) -> list[Command]:
    """Simple commands of a shell text: continuation lines joined, comments, redirections and
    control operators removed."""
    out = []
    for n, line in enumerate(text.replace("\\\n", " ").splitlines()):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        words: list[str] = []
        tokens = list(lex)
        k = 0
        while k <= len(tokens):
            tok = tokens[k] if k < len(tokens) else ";"
            if tok in ("|", "||", "&&", ";", "&"):
                if words:
                    out.append(Command(f"{where}+{n}", tuple(words)))
                words = []
            elif tok[0] in "<>":
                k += 1  # and its target
            else:
                words.append(tok)
            k += 1
    return out


def doc_blocks() -> list[list[Command]]:
    """The simple commands of each shell block of the docs."""
    blocks = []
    for doc in DOCS:
        rel = doc.relative_to(REPO)
        for line, tag, text in _fenced_blocks(doc):
            if tag in SHELL_TAGS:
                blocks.append(_split(text, f"{rel}:{line}"))
    return blocks


def doc_commands() -> list[Command]:
    return [c for block in doc_blocks() for c in block]


@functools.cache  # three tests read the same texts
def _help(module: str) -> str:
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"python -m {module} --help: {r.stderr}"
    return r.stdout


def help_blocks() -> list[list[Command]]:
    """The simple commands of each example (indented, with its continuation lines) of the --help texts."""
    blocks = []
    for module in HELP_MODULES:
        text = _help(module)
        for ex in re.findall(r"^ {2,}((?:python -m |digit-agent(?:-ota|-fleet)? )(?:.*\\\n)*.*)$", text,
                             re.MULTILINE):
            blocks.append(_split(ex, f"python -m {module} --help"))
    return blocks


def help_commands() -> list[Command]:
    return [c for block in help_blocks() for c in block]


def _opts(argv: tuple[str, ...]) -> dict[str, str]:
    return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("-")}


def _producer_geometry(argv: tuple[str, ...]) -> dict[str, str] | None:
    """width, height, pixel_format of a raw-video command's output (None: not a video producer)."""
    o = _opts(argv)
    if argv[0] == "rpicam-vid":
        return {"width": o["--width"], "height": o["--height"], "pixel_format": o["--codec"]}
    if argv[0] == "ffmpeg" and "rawvideo" in argv:
        w, h = o["-s"].split("x")
        return {"width": w, "height": h, "pixel_format": {"gray": "gray", "yuv420p": "yuv420"}[o["-pix_fmt"]]}
    if argv[:3] == ("python", "-m", "tools.canvas_stream"):
        fmt = "yuv420" if o.get("--ffmpeg") == "yuv420p" else o.get("--format", "gray")
        return {"width": o.get("--width", "160"), "height": o.get("--height", "120"), "pixel_format": fmt}
    return None


def _daemon_source(argv: tuple[str, ...]) -> dict[str, str]:
    sets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]
    return dict(item[len("source."):].split("=", 1) for item in sets if item.startswith("source."))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGIT_AGENT__")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(argv: list[str], cmd: Command, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env())
    assert r.returncode == 0, f"{cmd}\n  ran as: {shlex.join(argv)}\n  exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r


def _check_repo_paths(cmd: Command) -> None:
    tops = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    outputs = {cmd.argv[i + 1] for i, a in enumerate(cmd.argv[:-1]) if a in OUTPUT_OPTIONS}
    for word in cmd.argv:
        if word in outputs:
            continue  # written by the command: need not exist before
        if "/" in word and word.split("/", 1)[0] in tops and not any(c in word for c in "*?<>"):
            assert (REPO / word).exists(), f"{cmd}: {word} is not in the repository"


def _check(cmd: Command) -> str:
    """Check one simple command; returns how ("ran", "dry-run", "device")."""
    argv = [DEVICE_PATHS.get(w, w) for w in cmd.argv]
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv.pop(0)  # VAR=value prefix
    _check_repo_paths(cmd)
    prog = argv[0]
    if prog == "sudo":
        argv = argv[3:] if argv[1:2] == ["-u"] else argv[1:]
        if argv and argv[0] not in NEEDS_DEVICE:  # what runs under sudo is checked like any command
            _check(Command(cmd.where, tuple(argv)))
        return "device"
    if prog in NEEDS_DEVICE:
        if prog.startswith("tools/"):  # a script of ours: its options must exist
            script = (REPO / prog).read_text()
            for opt in argv[1:]:
                if opt.startswith("-") or opt in ("install", "uninstall"):
                    assert re.search(rf"(^|\s|\(){re.escape(opt)}(\)|\s|$)", script, re.MULTILINE), \
                        f"{cmd}: {prog} has no {opt}"
        return "device"
    if prog == "ffmpeg":
        device = [a for a in argv if a in DEVICE_ARGS]
        assert device, f"{cmd}: an ffmpeg command that needs no device should be run here"
        return "device"
    if prog == "make":
        _run(["make", "-n", *argv[1:]], cmd)
        return "dry-run"
    if prog in OPERATOR_COMMANDS:  # the installed form of python -m tools.ota / tools.fleet
        return _check(Command(cmd.where, ("python", "-m", OPERATOR_COMMANDS[prog], *argv[1:])))
    if prog in ("python", "python3") and argv[1:2] == ["-m"]:
        module, args = argv[2], argv[3:]
        if module == "agent":
            return _check(Command(cmd.where, ("digit-agent", *args)))
        _run([sys.executable, "-c", DRY_RUN, module, *args], cmd)
        return "dry-run"
    if prog == "digit-agent":
        sub = next((a for a in argv[1:] if not a.startswith("-")), "")
        if ("digit-agent", sub) in RUN_HERE:
            _run([sys.executable, "-m", "agent", *argv[1:]], cmd)
            return "ran"
        if sub == "run":  # the daemon: its config and every override, validated as it would load them
            args = list(argv[1:])
            args[args.index("run")] = "check-config"
            _run([sys.executable, "-m", "agent", *args], cmd)
            return "dry-run"
    raise AssertionError(f"{cmd}: unclassified program {prog!r}: run it here, or list it in NEEDS_DEVICE "
                         "with the reason")


def test_every_fenced_block_has_a_language_tag() -> None:
    untagged = [f"{doc.relative_to(REPO)}:{line}" for doc in DOCS for line, tag, _ in _fenced_blocks(doc)
                if not tag]
    assert not untagged, f"tag these blocks (sh for commands, text for output and diagrams): {untagged}"


def test_user_docs_speak_of_the_product_not_of_how_it_was_made() -> None:
    """No tracker references ("issue", "#3") or process words in what users read."""
    pattern = re.compile(r"\bissues?\b|\bCEO\b|(?<![\w.)/&])#\d+\b", re.IGNORECASE)
    hits = [f"{doc.relative_to(REPO)}:{n}: {line.strip()}" for doc in DOCS
            for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


def test_help_texts_are_plain_text() -> None:
    for module in HELP_MODULES:
        assert "``" not in _help(module), f"python -m {module} --help shows reST markup"


@pytest.mark.parametrize("source", ["docs", "help"])
def test_commands_work_as_written(source: str) -> None:
    cmds = doc_commands() if source == "docs" else help_commands()
    assert len(cmds) >= (40 if source == "docs" else 8), [str(c) for c in cmds]  # the extraction works
    how: dict[str, int] = {}
    failures = []
    for cmd in cmds:
        try:
            kind = _check(cmd)
            how[kind] = how.get(kind, 0) + 1
        except AssertionError as exc:
            failures.append(str(exc))
    print(f"{source}: {len(cmds)} commands: {how}")
    assert not failures, "\n\n".join(failures)


def test_camera_pipelines_tell_the_daemon_the_streams_geometry() -> None:
    """A raw stream carries no header: a daemon told another width, height or pixel format than its
    producer writes reads garbage. Every block with a producer and a daemon must agree."""
    checked = 0
    for block in doc_blocks() + help_blocks():
        producers = [g for c in block if (g := _producer_geometry(c.argv))]
        daemons = [c for c in block if "digit-agent" in c.argv[0] and "run" in c.argv]
        for d in daemons if producers else []:
            src = _daemon_source(d.argv)
            assert src.get("type") == "pipe", f"{d}: a video stream needs source.type=pipe"
            for key, value in producers[0].items():
                assert src.get(key) == value, f"{d}: source.{key} must be {value} (the producer's), is {src.get(key)}"
            checked += 1
    assert checked >= 4, checked  # camera.md's and canvas_stream's pipelines were found


def test_readme_and_systemd_doc_tell_one_install_story() -> None:
    """README's Pi steps are docs/systemd.md's, command for command."""
    def steps(path: Path) -> list[tuple[str, ...]]:
        blocks = [text for _, tag, text in _fenced_blocks(path)
                  if tag in SHELL_TAGS and "tools/install.sh --no-start" in text]
        assert len(blocks) == 1, path
        return [c.argv for c in _split(blocks[0], path.name)]

    assert steps(REPO / "README.md") == steps(REPO / "docs" / "systemd.md")
