"""Trusted Ed25519 public keys: the root set from ``ota.trusted_keys`` plus signed rotations.

A key id is the first 16 hex digits of sha256 over the raw 32-byte public key, so ids cannot be
forged by naming a file. Key files (``*.pub``) hold PEM (SubjectPublicKeyInfo) or the raw key in
base64. Rotations (``keys_add`` / ``keys_revoke`` in a signed manifest, applied when its update
commits) live in ``<state_dir>/keys.json``; revocation also hides root keys. See docs/ota.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["ROTATION_FILE", "KeyRing", "keyid_of", "load_keyring", "parse_public_key", "raw_public",
           "save_rotation"]

_log = logging.getLogger(__name__)
ROTATION_FILE = "keys.json"
_MAX_KEY_FILE = 4096
_MAX_KEYS = 64


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(data: bytes) -> Ed25519PublicKey:
    """PEM or base64 raw 32 bytes; raises ``ValueError`` with the reason."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"raw key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


class KeyRing(Mapping[str, Ed25519PublicKey]):
    """Immutable keyid → public key map; ``problems`` lists files that were skipped and why."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], problems: tuple[str, ...] = ()) -> None:
        self._keys = dict(keys)
        self.problems = problems

    def __getitem__(self, keyid: str) -> Ed25519PublicKey:
        return self._keys[keyid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def of(cls, *keys: Ed25519PublicKey) -> KeyRing:
        return cls({keyid_of(raw_public(k)): k for k in keys})


def _read_rotation(state_dir: Path) -> tuple[dict[str, str], list[str]]:
    path = state_dir / ROTATION_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return dict(doc.get("added", {})), list(doc.get("revoked", []))
    except FileNotFoundError:
        return {}, []
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        _log.error("ignoring unreadable key rotation file %s: %s", path, exc)
        return {}, []


def load_keyring(trusted_dir: str, state_dir: str = "") -> KeyRing:
    """Root keys from ``trusted_dir`` (missing dir = no keys) plus rotations from ``state_dir``."""
    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[str] = []
    root = Path(trusted_dir)
    files = sorted(root.glob("*.pub"))[:_MAX_KEYS] if trusted_dir and root.is_dir() else []
    for f in files:
        try:
            if f.stat().st_size > _MAX_KEY_FILE:
                raise ValueError("file too large for a public key")
            key = parse_public_key(f.read_bytes())
            keys[keyid_of(raw_public(key))] = key
        except (OSError, ValueError) as exc:
            problems.append(f"{f}: {exc}")
    added, revoked = _read_rotation(Path(state_dir)) if state_dir else ({}, [])
    for kid, b64 in added.items():
        try:
            key = parse_public_key(str(b64).encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            problems.append(f"{ROTATION_FILE}: {kid}: {exc}")
            continue
        keys[keyid_of(raw_public(key))] = key
    for kid in revoked:
        keys.pop(kid, None)
    for p in problems:
        _log.warning("trusted key skipped: %s", p)
    return KeyRing(keys, tuple(problems))


def save_rotation(trusted_dir: str, state_dir: str, add: dict[str, bytes], revoke: tuple[str, ...]) -> list[str]:
    """Merge key additions (keyid → raw key) and revocations into ``keys.json``; returns what changed
    and what was refused, for the status reason. A revocation that would leave no trusted key at all
    is refused (it would brick OTA for good)."""
    from agent.control.ota.store import atomic_write  # store imports nothing from here; avoid a cycle

    added, revoked = _read_rotation(Path(state_dir))
    changes: list[str] = []
    refused: list[str] = []
    for kid, raw in add.items():
        if kid not in added:
            added[kid] = base64.b64encode(raw).decode("ascii")
            changes.append(f"added {kid}")
    new_revoked = [k for k in revoke if k not in revoked]
    if new_revoked:
        keep = set(load_keyring(trusted_dir, "")) | set(added)
        if keep - set(revoked) - set(new_revoked):
            revoked += new_revoked
            changes += [f"revoked {k}" for k in new_revoked]
        else:
            _log.error("key rotation refused: revoking %s would leave no trusted key", new_revoked)
            refused.append(f"refused revoking {', '.join(new_revoked)} (it would leave no trusted key)")
    if changes:
        doc = {"added": added, "revoked": revoked}
        atomic_write(Path(state_dir) / ROTATION_FILE, json.dumps(doc, indent=1).encode("utf-8"))
    return changes + refused
