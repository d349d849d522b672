"""A model version as a set of variants: the same trained net as int8, fp32, ... files.

The card (``<name>.card.json``) lists them::

    {"version": 3, ..., "file": "digit.int8.onnx", "sha256": "...",      # old readers: the int8 file
     "variants": [{"name": "int8", "file": "digit.int8.onnx", "sha256": "...", "size_bytes": 9876,
                   "quant_format": "QOperator", "golden_accuracy": 1.0, ...},
                  {"name": "fp32", "file": "digit.fp32.onnx", "sha256": "...", "quant_format": "float"}]}

``inference.model`` may name such a card, an older card without ``variants`` (one variant: its
``file``) or a bare ``.onnx`` file (one variant; its card beside it, as before). Which variant
serves is decided by :mod:`agent.inference.choice`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from agent.inference.model import ModelError, read_card

__all__ = ["MAX_VARIANTS", "ModelSet", "Variant", "card_for_file", "find", "read_model_set", "variant_card",
           "variant_name"]

MAX_VARIANTS = 8
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    sha256: str  # as the card declares it; "" when the card gives none (a bare .onnx)
    card: dict[str, Any]  # the set's card with this variant's entry merged in (what LoadedModel keeps)


@dataclass(frozen=True)
class ModelSet:
    source: Path  # what was configured (a card or an .onnx)
    card: dict[str, Any]  # the set's card (normalisation, version, ...)
    variants: tuple[Variant, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def version(self) -> int:
        return int(self.card.get("version", 0))


def variant_name(card: dict[str, Any], path: Path) -> str:
    """The name of a single-file model: from its card's quantisation format, else its file stem."""
    fmt = str(card.get("quant_format", ""))
    if fmt in ("QOperator", "QDQ"):
        return "int8"
    if fmt in ("float", "fp32"):
        return "fp32"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:32]
    return stem or "model"


def variant_card(card: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The card one variant serves with: the set's fields, then the variant's own."""
    out = {k: v for k, v in card.items() if k != "variants"}
    out.update(entry)
    out["variant"] = entry["name"]
    return out


def _entries(card: dict[str, Any], where: Path) -> list[dict[str, Any]]:
    raw = card.get("variants")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_VARIANTS:
        raise ModelError(f"{where}: variants must be a list of 1 to {MAX_VARIANTS} entries")
    seen: set[str] = set()
    for i, e in enumerate(raw):
        key = f"variants[{i}]"
        if not isinstance(e, dict):
            raise ModelError(f"{where}: {key} must be an object")
        name, file, sha = e.get("name"), e.get("file"), e.get("sha256", "")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ModelError(f"{where}: {key}.name must match {_NAME.pattern}, got {name!r}")
        if name in seen:
            raise ModelError(f"{where}: {key}.name {name!r} appears twice")
        seen.add(name)
        if not isinstance(file, str) or not file or PurePosixPath(file).is_absolute() or ".." in \
                PurePosixPath(file).parts:
            raise ModelError(f"{where}: {key}.file must be a relative path inside the card's directory, "
                             f"got {file!r}")
        if not isinstance(sha, str) or (sha and not _HEX64.match(sha)):
            raise ModelError(f"{where}: {key}.sha256 must be 64 lowercase hex digits")
    return raw


def read_model_set(path: Path | str, card_path: str = "") -> ModelSet:
    """The variants behind ``inference.model`` (see the module docstring); raises :class:`ModelError`."""
    p = Path(path)
    if p.suffix == ".json":
        card = read_card(p, str(p))
        if not card:
            raise ModelError(f"{p}: model card not found")
        if "variants" not in card:  # an older card: one file
            file = card.get("file")
            if not isinstance(file, str) or not file:
                raise ModelError(f"{p}: model card has neither variants nor file")
            entries = [{"name": variant_name(card, Path(file)), "file": file, "sha256": card.get("sha256", "")}]
        else:
            entries = _entries(card, p)
        variants = tuple(Variant(e["name"], p.parent / e["file"], str(e.get("sha256", "")), variant_card(card, e))
                         for e in entries)
        return ModelSet(p, card, variants)
    card = read_card(p, card_path)
    one: dict[str, Any] = {"name": variant_name(card, p), "file": p.name}
    return ModelSet(p, card, (Variant(one["name"], p, "", variant_card(card, one)),))


def card_for_file(path: Path) -> dict[str, Any]:
    """The card one model file serves with: ``<stem>.card.json`` beside it, else its entry in a model-set
    card of the same directory that lists it (``digit.fp32.onnx`` in ``digit.card.json``), else ``{}``."""
    beside = read_card(path)
    if beside:
        return beside
    for card in sorted(path.parent.glob("*.card.json")):
        try:
            v = next((v for v in read_model_set(card).variants if v.path.resolve() == path.resolve()), None)
        except ModelError:
            continue
        if v is not None:
            return v.card
    return {}


def find(models: ModelSet, name: str) -> Optional[Variant]:
    return next((v for v in models.variants if v.name == name), None)
