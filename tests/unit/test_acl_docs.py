"""docs/home-assistant.md's ACL for the Mosquitto add-on grants devices exactly what the shipped
deploy/mosquitto/acl does (the same `pattern` lines), so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _patterns(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if re.match(r"^\s*pattern\s", line)]


def test_add_on_acl_has_the_shipped_device_patterns() -> None:
    shipped = _patterns((REPO / "deploy" / "mosquitto" / "acl").read_text())
    documented = _patterns((REPO / "docs" / "home-assistant.md").read_text())
    assert shipped and documented == shipped
    assert "pattern write homeassistant/+/%u/#" in shipped  # both discovery layouts under the node = id
