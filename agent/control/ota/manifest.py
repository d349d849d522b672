"""The OTA manifest codec: envelope bytes in, a verified and validated :class:`Manifest` out. Pure.

Wire format (UTF-8 JSON)::

    {"manifest": "<base64 of the exact manifest bytes>",
     "signatures": [{"keyid": "<16 hex>", "sig": "<base64 Ed25519 signature over those bytes>"}]}

The signature covers the exact manifest bytes, so no canonical JSON is needed: the device verifies
the bytes first and parses them only afterwards. Order of checks (see docs/ota.md): envelope shape →
trusted keys present → a signature by a trusted key verifies → manifest fields → time window.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from cryptography.exceptions import InvalidSignature

from agent.control.ota.keys import KeyRing

__all__ = [
    "FORMAT",
    "Limits",
    "Manifest",
    "ManifestError",
    "Signature",
    "TensorSpec",
    "VariantRef",
    "encode_envelope",
    "max_envelope_bytes",
    "open_envelope",
    "parse_envelope",
    "parse_manifest",
    "verify_signatures",
]

FORMAT = 1
_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYID = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^\d{1,4}(\.\d{1,4}){0,3}$")
_MAX_SIGS = 8
_MAX_CARD = 16 * 1024
_MAX_VERSION = 2**53
_MAX_VARIANTS = 8
_VARIANT = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class ManifestError(ValueError):
    """A manifest or envelope that must be refused; ``str(exc)`` is the reason reported on status."""


@dataclass(frozen=True)
class Limits:
    """Device-side bounds (from ``OtaConfig``) applied while parsing."""

    max_model_bytes: int
    max_chunks: int
    max_chunk_bytes: int
    family: str
    clock_skew_s: float = 300.0


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Optional[int], ...]  # None for a symbolic (batch) dimension
    dtype: str


@dataclass(frozen=True)
class VariantRef:
    """One variant of a multi-variant job: bytes [offset, offset + size) of the transferred file."""

    name: str
    size: int
    sha256: str
    offset: int


@dataclass(frozen=True)
class Manifest:
    job: str
    version: int
    family: str
    min_onnxruntime: str
    opset: int
    input: TensorSpec
    output: TensorSpec
    size: int
    sha256: str
    chunk_size: int
    chunk_sha256: tuple[str, ...]
    min_accuracy: float
    max_p99_ms: float
    created: int
    expires: int
    keyid: str
    card: dict[str, Any] = field(default_factory=dict)
    keys_add: tuple[tuple[str, bytes], ...] = ()  # (keyid, raw 32-byte public key)
    keys_revoke: tuple[str, ...] = ()
    variants: tuple[VariantRef, ...] = ()  # empty: the file is one model (the format before variants)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sha256)

    def chunk_len(self, index: int) -> int:
        """Expected length of chunk ``index`` (the last one may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)


def max_envelope_bytes(max_chunks: int) -> int:
    """Upper bound of an acceptable envelope: 67 bytes per chunk hash, 4/3 for base64, room for the rest."""
    return 64 * 1024 + (max_chunks * 67 + _MAX_CARD) * 4 // 3


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ManifestError(f"malformed envelope: {what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ManifestError(f"malformed envelope: {what} is not valid base64") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"malformed {what}: not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"malformed {what}: expected a JSON object")
    return obj


def parse_envelope(data: bytes, max_bytes: int) -> tuple[bytes, list[Signature]]:
    """Split an envelope into the exact manifest bytes and its signatures (nothing verified yet)."""
    if len(data) > max_bytes:
        raise ManifestError(f"envelope too large: {len(data)} bytes > {max_bytes}")
    env = _json_object(data, "envelope")
    body = _b64(env.get("manifest"), "manifest")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= _MAX_SIGS:
        raise ManifestError(f"malformed envelope: signatures must be a list of 1 to {_MAX_SIGS}")
    out = []
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or not _KEYID.match(s["keyid"]):
            raise ManifestError("malformed envelope: each signature needs a 16-hex-digit keyid")
        out.append(Signature(s["keyid"], _b64(s.get("sig"), "sig")))
    return body, out


def encode_envelope(manifest_bytes: bytes, signatures: list[Signature]) -> bytes:
    env = {"manifest": base64.b64encode(manifest_bytes).decode("ascii"),
           "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                          for s in signatures]}
    return json.dumps(env, separators=(",", ":")).encode("utf-8")


def verify_signatures(body: bytes, sigs: list[Signature], keys: KeyRing) -> list[str]:
    """Key ids of trusted keys whose signature verifies; raises with the reason if there is none."""
    if not keys:
        raise ManifestError("no trusted key configured: every update is refused")
    good, bad = [], []
    for s in sigs:
        pub = keys.get(s.keyid)
        if pub is None:
            continue
        try:
            pub.verify(s.sig, body)
            good.append(s.keyid)
        except InvalidSignature:
            bad.append(s.keyid)
    if good:
        return good
    if bad:
        raise ManifestError(f"bad signature (key {bad[0]})")
    raise ManifestError(f"unknown key: signed by {', '.join(s.keyid for s in sigs)}, none trusted")


def open_envelope(data: bytes, keys: KeyRing, limits: Limits, now: float) -> Manifest:
    """Everything a device checks before downloading: envelope, signature, fields, time window."""
    body, sigs = parse_envelope(data, max_envelope_bytes(limits.max_chunks))
    signers = verify_signatures(body, sigs, keys)
    m = parse_manifest(body, limits)
    if m.keyid not in signers:
        raise ManifestError(f"manifest names key {m.keyid} but no valid signature by it")
    if now >= m.expires:
        raise ManifestError(f"expired manifest (expired {int(now - m.expires)} s ago)")
    if m.created > now + limits.clock_skew_s:
        raise ManifestError("manifest created in the future (check the device clock)")
    return m


class _Fields:
    """Typed, bounded field access with the dotted path in every error."""

    def __init__(self, obj: dict[str, Any], path: str = "") -> None:
        self._obj, self._path = obj, path

    def _get(self, key: str, kinds: tuple[type, ...], tname: str) -> Any:
        where = f"{self._path}{key}"
        if key not in self._obj:
            raise ManifestError(f"invalid manifest: missing field {where}")
        v = self._obj[key]
        if not isinstance(v, kinds) or isinstance(v, bool) != (bool in kinds):
            raise ManifestError(f"invalid manifest: {where} must be {tname}, got {type(v).__name__}")
        return v

    def integer(self, key: str, lo: int, hi: int) -> int:
        v: int = self._get(key, (int,), "an integer")
        if not lo <= v <= hi:
            raise ManifestError(f"invalid manifest: {self._path}{key}={v} outside [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float, hi: float) -> float:
        v = float(self._get(key, (int, float), "a number"))
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ManifestError(f"invalid manifest: {self._path}{key}={v} outside [{lo}, {hi}]")
        return v

    def text(self, key: str, pattern: re.Pattern[str]) -> str:
        v: str = self._get(key, (str,), "a string")
        if not pattern.match(v):
            raise ManifestError(f"invalid manifest: {self._path}{key}={v[:80]!r} is malformed")
        return v

    def obj(self, key: str) -> _Fields:
        return _Fields(self._get(key, (dict,), "an object"), f"{self._path}{key}.")

    def items(self, key: str, max_len: int, default: Optional[list[Any]] = None) -> list[Any]:
        if default is not None and key not in self._obj:
            return default
        v: list[Any] = self._get(key, (list,), "a list")
        if len(v) > max_len:
            raise ManifestError(f"invalid manifest: {self._path}{key} has {len(v)} items > {max_len}")
        return v


_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_DTYPE = re.compile(r"^(float32|float16|uint8|int8)$")


def _tensor(f: _Fields) -> TensorSpec:
    dims = f.items("shape", 8)
    shape: list[Optional[int]] = []
    for d in dims:
        if d is None or isinstance(d, str):
            shape.append(None)
        elif isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096:
            shape.append(d)
        else:
            raise ManifestError("invalid manifest: tensor dimensions are 1..4096 or a symbolic name/null")
    return TensorSpec(f.text("name", _NAME), tuple(shape), f.text("dtype", _DTYPE))


def _keys_add(items: list[Any]) -> tuple[tuple[str, bytes], ...]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ManifestError("invalid manifest: keys_add items must be objects")
        f = _Fields(item, "keys_add.")
        raw = _b64(f.text("pub", re.compile(r"^[A-Za-z0-9+/=]{40,48}$")), "keys_add.pub")
        if len(raw) != 32:
            raise ManifestError("invalid manifest: keys_add.pub must be a 32-byte Ed25519 key")
        out.append((f.text("keyid", _KEYID), raw))
    return tuple(out)


def _variants(f: _Fields, size: int, limits: Limits) -> tuple[VariantRef, ...]:
    """The variants of one version, stored back to back in the transferred file, in this order."""
    items = f.items("variants", _MAX_VARIANTS)
    if not items:
        raise ManifestError(f"invalid manifest: variants must list 1 to {_MAX_VARIANTS} variants")
    out: list[VariantRef] = []
    offset = 0
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ManifestError(f"invalid manifest: variants[{i}] must be an object")
        v = _Fields(item, f"variants[{i}].")
        name = v.text("name", _VARIANT)
        if any(r.name == name for r in out):
            raise ManifestError(f"invalid manifest: variants[{i}].name {name!r} appears twice")
        n = v.integer("size", 1, limits.max_model_bytes)
        out.append(VariantRef(name, n, v.text("sha256", _HEX64), offset))
        offset += n
    if offset != size:
        raise ManifestError(f"invalid manifest: the variants add up to {offset} bytes, file.size is {size}")
    return tuple(out)


def parse_manifest(body: bytes, limits: Limits) -> Manifest:
    """Validate the (already verified) manifest bytes against the schema and the device's limits."""
    f = _Fields(_json_object(body, "manifest"))
    if f.integer("format", 0, 1 << 30) != FORMAT:
        raise ManifestError(f"unsupported manifest format (this device reads format {FORMAT})")
    family = f.text("family", _JOB)
    if family != limits.family:
        raise ManifestError(f"incompatible model family {family!r} (device accepts {limits.family!r})")
    req, file, chunks, gate = f.obj("requires"), f.obj("file"), f.obj("chunks"), f.obj("gate")
    size = file.integer("size", 1, limits.max_model_bytes)
    chunk_size = chunks.integer("size", 256, limits.max_chunk_bytes)
    hashes = chunks.items("sha256", limits.max_chunks)
    if len(hashes) != math.ceil(size / chunk_size):
        raise ManifestError(f"invalid manifest: {len(hashes)} chunk hashes for {size} bytes "
                            f"in chunks of {chunk_size}")
    if not all(isinstance(h, str) and _HEX64.match(h) for h in hashes):
        raise ManifestError("invalid manifest: chunk hashes must be 64 lowercase hex digits")
    card = f.obj("card")._obj if "card" in f._obj else {}
    if len(json.dumps(card)) > _MAX_CARD:
        raise ManifestError("invalid manifest: card too large")
    if "family" in card and card["family"] != family:
        raise ManifestError(f"invalid manifest: card family {card['family']!r} differs from the manifest's "
                            f"{family!r}")
    revoke = f.items("keys_revoke", 16, [])
    if not all(isinstance(k, str) and _KEYID.match(k) for k in revoke):
        raise ManifestError("invalid manifest: keys_revoke items must be key ids")
    variants = _variants(f, size, limits) if "variants" in f._obj else ()
    created, expires = f.integer("created", 0, _MAX_VERSION), f.integer("expires", 0, _MAX_VERSION)
    if expires <= created:
        raise ManifestError("invalid manifest: expires must be after created")
    return Manifest(
        job=f.text("job", _JOB), version=f.integer("version", 1, _MAX_VERSION), family=family,
        min_onnxruntime=req.text("onnxruntime", _VERSION), opset=req.integer("opset", 1, 100),
        input=_tensor(req.obj("input")), output=_tensor(req.obj("output")),
        size=size, sha256=file.text("sha256", _HEX64), chunk_size=chunk_size, chunk_sha256=tuple(hashes),
        min_accuracy=gate.number("min_accuracy", 0.0, 1.0),
        max_p99_ms=gate.number("max_p99_ms", 0.001, 60_000.0),
        created=created, expires=expires, keyid=f.text("keyid", _KEYID), card=card,
        keys_add=_keys_add(f.items("keys_add", 4, [])), keys_revoke=tuple(revoke), variants=variants)
