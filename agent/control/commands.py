"""Device commands on ``<prefix>/<id>/cmd``: a pure parser (JSON bytes in, a :class:`Command` out).

Only commands that cannot hurt are accepted unsigned: ``ota_install`` merely (re)starts an update
an operator already signed (Home Assistant's update entity sends it); it never brings a model in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Union

__all__ = ["MAX_COMMAND_BYTES", "Command", "CommandError", "parse_command"]

MAX_COMMAND_BYTES = 1024
_KNOWN = ("ota_install",)


class CommandError(ValueError):
    """The payload is not a command this device accepts; the message says why."""


@dataclass(frozen=True)
class Command:
    name: str
    version: Union[int, str]  # a version number, or "latest"


def parse_command(payload: bytes) -> Command:
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"command is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError("command must be a JSON object")
    name = doc.get("cmd")
    if name not in _KNOWN:
        raise CommandError(f"unknown command {name!r}; known: {', '.join(_KNOWN)}")
    version = doc.get("version", "latest")
    if not (version == "latest" or (isinstance(version, int) and not isinstance(version, bool) and version > 0)):
        raise CommandError(f"version must be 'latest' or a positive integer, got {version!r}")
    unknown = set(doc) - {"cmd", "version"}
    if unknown:
        raise CommandError(f"unknown field(s) {sorted(unknown)}")
    return Command(name, version)
